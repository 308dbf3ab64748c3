"""The studio around the models: what it offers, the jobs it runs, correcting masks, uncertainty.

    catalog      shipped models, fine-tuned runs, samples, the default model
    jobs         fine-tunes, benchmarks and clips in their own spawned processes
    correct      a predicted mask corrected by hand
    uncertainty  where a model is unsure, per pixel and per image
    ui/          the only code that imports Streamlit
"""
