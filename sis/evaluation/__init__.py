"""Measuring a model: its figures on labelled frames, its confidence, and what a fine-tune changed.

    evaluate      a model on a split through the app's work size: confusion matrix -> metrics
    calibrate     the softmax temperature and the unfamiliar-photo line
    robustness    the shift benchmark: CamVid val under synthetic shifts, and the warning's rates
    before_after  what a fine-tune gained on the user's frames and lost elsewhere, kept beside the model
"""
