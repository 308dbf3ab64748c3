"""The studio around the models: what it offers, the jobs it runs, correcting masks, uncertainty.

    catalog      shipped models, fine-tuned runs, samples, the default model
    jobs         the manager: caps, progress, Stop, typed snapshots for the pages
    workers      what runs in a job's process: fine-tunes, benchmarks, clips, adaptations
    correct      a predicted mask corrected by hand
    uncertainty  where a model is unsure, per pixel and per image
    ui/          the only code that imports Streamlit
"""
