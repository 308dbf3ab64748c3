"""Joint image+mask augmentation for training (torchvision v2), and the training dataset.

Kept apart from sis.data so that reading frames does not import torchvision: the app's
server runs exported graphs and never trains in-process (fine-tunes run in a worker).
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from sis.data import PHOTOMETRIC
from sis.data.dataset import Frames
from sis.data.shifts import white_balanced


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


def build_photometric(level: str = "none") -> v2.Transform | None:
    """What another camera, its settings and the light change, applied to the image alone (never to
    the mask or a teacher's probabilities), each op with its own chance: colour jitter, gamma, a
    white-balance cast, blur, sensor noise, JPEG. None for level 'none'. Random parameters from
    torchvision's ops, not the shift benchmark's fixed corruptions (sis.data.shifts)."""
    if level == "none":
        return None
    if level not in PHOTOMETRIC:
        raise ValueError(f"unknown photometric augmentation '{level}'; choose {', '.join(PHOTOMETRIC)}")
    if level == "camera-half":
        return v2.RandomApply([build_photometric("camera")], p=0.5)
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.7, hue=0.04)], p=0.8),
        v2.RandomApply([_Gamma((0.5, 2.5))], p=0.3),
        v2.RandomApply([_WhiteBalance(0.4)], p=0.5),
        v2.RandomApply([v2.GaussianBlur(9, sigma=(0.1, 3.0))], p=0.3),
        v2.RandomApply([_Noise((2.0, 20.0))], p=0.3),
        v2.RandomApply([v2.JPEG((8, 60))], p=0.3),
    ])


class _Gamma(v2.Transform):
    """x ** g on a uint8 image, g log-uniform in ``gammas``."""

    def __init__(self, gammas: tuple[float, float]):
        super().__init__()
        self.lo, self.hi = (float(torch.tensor(g).log()) for g in gammas)

    def transform(self, inpt, params):
        g = float(torch.empty(1).uniform_(self.lo, self.hi).exp())
        return v2.functional.adjust_gamma(inpt, g)


class _WhiteBalance(v2.Transform):
    """Per-channel gains within 1 +- ``k`` (a camera's colour cast), the mean brightness kept."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def transform(self, inpt, params):
        gains = 1 + torch.empty(3, 1, 1).uniform_(-self.k, self.k)
        return _from_unit(white_balanced(_to_unit(inpt), gains), inpt)


class _Noise(v2.Transform):
    """Sensor noise: shot noise (growing with the signal) plus read noise, sigma in 8-bit levels."""

    def __init__(self, sigmas: tuple[float, float]):
        super().__init__()
        self.sigmas = sigmas

    def transform(self, inpt, params):
        x = _to_unit(inpt)
        sigma = float(torch.empty(1).uniform_(*self.sigmas)) / 255.0
        noise = torch.randn_like(x) * (1.5 * sigma * x.clamp_min(0).sqrt() + 0.5 * sigma)
        return _from_unit(x + noise, inpt)


def _to_unit(img: torch.Tensor) -> torch.Tensor:
    return img.float() / 255.0


def _from_unit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = (x * 255.0).round().clamp(0, 255).to(torch.uint8)
    return tv_tensors.wrap(out, like=like) if isinstance(like, tv_tensors.TVTensor) else out


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
    """Frames + a joint transform (+ a photometric one on the image alone) -> (image (3,h,w) uint8,
    mask (h,w) int64), and with ``soft``
    (a teacher's [(C,H,W)] probabilities, sis.training.distill) a third item: those probabilities, float32,
    through the same crop, rescale (bilinear) and flips; a crop's padding gets all zeros."""

    def __init__(self, frames: Frames, transform: v2.Transform | None = None,
                 soft: list[torch.Tensor] | None = None, photometric: v2.Transform | None = None):
        self.frames, self.transform, self.soft, self.photometric = frames, transform, soft, photometric

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i):
        items = [tv_tensors.Image(self.frames.images[i]), tv_tensors.Mask(self.frames.masks[i])]
        if self.soft is not None:  # an image to v2: resized bilinear, padded with 0
            soft = self.soft[i].float()
            if soft.shape[-2:] != items[1].shape[-2:]:  # kept smaller (teacher_scale): back to the frame's size
                soft = torch.nn.functional.interpolate(soft[None], size=tuple(items[1].shape[-2:]), mode="bilinear",
                                                       align_corners=False)[0]
            items.append(tv_tensors.Image(soft))
        if self.transform is not None:
            items = self.transform(*items)
        if self.photometric is not None:  # the image alone: labels and soft targets are of the clean frame
            items = [self.photometric(items[0]), *items[1:]]
        image, mask, *soft = (t.as_subclass(torch.Tensor) for t in items)
        return image, mask.long(), *soft  # masks are held as uint8, widened per item for the loss
