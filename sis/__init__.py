"""SIS Studio: street-scene semantic segmentation (VGG/ResNet x U-Net/PSPNet) on CamVid."""
__version__ = "0.1.0"
