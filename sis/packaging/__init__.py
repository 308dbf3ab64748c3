"""A model made here (fine-tuned or adapted) made servable like the one it started from.

    carry  its start's graph templates filled from its own weights, its fp32 and int8 graphs checked
           against eager fp32 on its own frames, and the start's engine timings kept for those that pass
"""
