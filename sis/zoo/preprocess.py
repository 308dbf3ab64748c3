"""The one preprocessing contract between images and a PyTorch model.

uint8 (N,3,H,W) -> normalised with the config's mean/std -> zero-padded bottom/right to the
model's stride -> (channels_last) -> model -> logits cropped back to (H, W). Inference (the
torch engines), evaluation, training and the benchmark all go through ``model_input``;
the exported ONNX graphs hold the same steps inside (``engines.export``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sis.zoo.registry import ModelConfig
from sis.zoo.runtime import autocast


def normalize(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(N,3,H,W) uint8 or float in [0,1] -> float normalized with the config's mean/std."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pad_to_stride(x: torch.Tensor, stride: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) on the bottom/right to multiples of ``stride``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def model_input(images: torch.Tensor, cfg: ModelConfig, channels_last: bool = True
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N,3,H,W) uint8 -> the padded, normalised float input and the (H, W) to crop back to."""
    x, size = pad_to_stride(normalize(images, cfg), cfg.input_stride)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, size


def forward_logits(model: torch.nn.Module, cfg: ModelConfig, images: torch.Tensor,
                   amp: bool = True, channels_last: bool = True) -> torch.Tensor:
    """(N,3,H,W) uint8 on the model's device -> (N,C,H,W) float32 logits, any H, W.

    ``channels_last=False`` feeds plain NCHW (a model whose weights are NCHW then runs as
    plain smp does: the benchmarks' eager fp32 reference)."""
    x, (h, w) = model_input(images, cfg, channels_last)
    with autocast(images.device, amp):
        out = model(x)
    return out[..., :h, :w].float()
