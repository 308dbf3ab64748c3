"""Training: a run from its settings to a model folder.

    config       TrainConfig, the command line that repeats it, Progress, TrainResult
    data         the frames a run trains on (train, validation, replay, a teacher's targets) and its batches
    loop         train(): setup, then epochs of steps, validation and checkpoints
    finish       the run's end: the start averaged back in, calibration, the folder and its card, carried graphs
    checkpoints  save and resume exactly
    distill      a teacher's probabilities as soft targets
"""
