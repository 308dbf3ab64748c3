"""Data: datasets in the SegNet layout, the images users give, augmentation, user datasets, download.

    dataset   SegNet-layout folders decoded once: frames, splits, class weights, dataset zips
    images    any image a user gives, checked and converted to RGB
    augment   joint image + mask augmentation for training (torchvision)
    shifts    the shift benchmark's camera and scene shifts
    userdata  datasets built from corrected masks
    download  CamVid from the SegNet tutorial's public copy
"""

# the photometric augmentation levels a training run may ask for (built in augment, torch-free here for the
# CLI's flags): none, the paper's; camera, docs/robustness.md; camera-half, camera on half the frames and the
# rest clean (a model whose clean frames suffer from the full share keeps more of them)
PHOTOMETRIC = ("none", "camera", "camera-half")
