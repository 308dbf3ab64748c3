"""Data: datasets in the SegNet layout, the images users give, augmentation, user datasets, download.

    dataset   SegNet-layout folders decoded once: frames, splits, class weights, dataset zips
    images    any image a user gives, checked and converted to RGB
    augment   joint image + mask augmentation for training (torchvision)
    userdata  datasets built from corrected masks
    download  CamVid from the SegNet tutorial's public copy
"""
