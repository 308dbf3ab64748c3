"""Test-time adaptation (``sis adapt``, the Adapt buttons): a model fitted to a user's street from frames
without labels.

    unlabeled  read the photos or a clip's frames, re-estimate BatchNorm's statistics, fit its scales and
               shifts to surer predictions, and save the adapted model with its start's graphs carried
"""
