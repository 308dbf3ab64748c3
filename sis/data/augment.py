"""Joint image+mask augmentation for training (torchvision v2), and the training dataset.

Kept apart from sis.data so that reading frames does not import torchvision: the app's
server runs exported graphs and never trains in-process (fine-tunes run in a worker).
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sis.data.dataset import Frames


def build_augment(flips: str = "hv", crop: tuple[int, int] | None = None,
                  scale: tuple[float, float] = (1.0, 1.0), fill_label: int = 255) -> v2.Transform:
    """Joint image+mask augmentation (torchvision v2 keeps them aligned).

    flips: "" | "h" | "v" | "hv" (the SIS-CNN paper uses both); scale: random
    resize factor range; crop: (h, w) random crop, padded with label ``fill_label``.
    """
    ops: list[v2.Transform] = []
    if scale != (1.0, 1.0):
        ops.append(_RandomScale(scale))
    if crop is not None:
        ops.append(v2.RandomCrop(crop, pad_if_needed=True,
                                 fill={tv_tensors.Image: 0, tv_tensors.Mask: fill_label}))
    if "h" in flips:
        ops.append(v2.RandomHorizontalFlip())
    if "v" in flips:
        ops.append(v2.RandomVerticalFlip())
    return v2.Compose(ops) if ops else v2.Identity()


class _RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale`` (nearest for masks, via v2)."""

    def __init__(self, scale: tuple[float, float]):
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        f = float(torch.empty(1).uniform_(*self.scale))
        return {"size": [max(1, round(h * f)), max(1, round(w * f))]}

    def transform(self, inpt, params):
        return v2.functional.resize(inpt, params["size"], antialias=True)


class SegDataset(torch.utils.data.Dataset):
    """Frames + a joint transform -> (image (3,h,w) uint8, mask (h,w) int64), and with ``soft``
    (a teacher's [(C,H,W)] probabilities, sis.training.distill) a third item: those probabilities, float32,
    through the same crop, rescale (bilinear) and flips; a crop's padding gets all zeros."""

    def __init__(self, frames: Frames, transform: v2.Transform | None = None,
                 soft: list[torch.Tensor] | None = None):
        self.frames, self.transform, self.soft = frames, transform, soft

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        items = [tv_tensors.Image(self.frames.images[i]), tv_tensors.Mask(self.frames.masks[i])]
        if self.soft is not None:  # an image to v2: resized bilinear, padded with 0
            items.append(tv_tensors.Image(self.soft[i].float()))
        if self.transform is not None:
            items = self.transform(*items)
        return tuple(t.as_subclass(torch.Tensor) for t in items)
