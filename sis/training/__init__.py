"""Training and measuring: the loop, its config and checkpoints, evaluation, distillation, the
before/after of a fine-tune, and the step benchmarks.

    config       TrainConfig, the command line that repeats it, Progress
    loop         train(): setup, loop, finish
    checkpoints  save and resume exactly
    evaluate     a model on a split: confusion matrix -> metrics
    distill      a teacher's probabilities as soft targets
    adapt        what a fine-tune gained on the user's frames and lost elsewhere
    bench        inference and training steps timed
"""
