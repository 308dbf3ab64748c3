"""Evaluation of a model on a dataset split: confusion matrix -> metrics."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import metrics
from .data import Frames
from .runtime import autocast
from .zoo import ModelConfig, normalize


def pad_to_stride(x: torch.Tensor, stride: int, value: float = 0.0) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (..., H, W) on the bottom/right to multiples of ``stride``; returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), value=value)
    return x, (h, w)


def forward_logits(model: torch.nn.Module, cfg: ModelConfig, images: torch.Tensor,
                   amp: bool = True, channels_last: bool = True) -> torch.Tensor:
    """(N,3,H,W) uint8 on the model's device -> (N,C,H,W) float32 logits, any H, W.

    ``channels_last=False`` feeds plain NCHW (a model whose weights are NCHW then runs as
    plain smp does: the benchmarks' eager fp32 reference)."""
    device = images.device
    x, (h, w) = pad_to_stride(normalize(images, cfg), cfg.input_stride)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        out = model(x)
    return out[..., :h, :w].float()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, cfg: ModelConfig, frames: Frames, device: torch.device,
             amp: bool = True, batch_size: int = 4,
             progress: Callable[[int, int], None] | None = None,
             logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Full-resolution evaluation: miou, pixel_acc, mean_class_acc, per_class_iou, loss.

    Frames of the same size are batched together; void pixels are ignored.
    ``logits_fn`` (uint8 images -> logits, e.g. a backends.Runner) replaces the model's forward.
    """
    classes = frames.classes
    c = classes.num_classes
    ignore = classes.void if classes.void is not None else -100
    cm = torch.zeros(c, c, dtype=torch.int64)
    loss_sum, n_pix = 0.0, 0
    was_training = model.training
    model.eval()
    i = 0
    while i < len(frames):
        j = i + 1
        while j < len(frames) and j - i < batch_size and frames.images[j].shape == frames.images[i].shape:
            j += 1
        imgs = torch.stack(frames.images[i:j]).to(device)
        masks = torch.stack(frames.masks[i:j]).to(device)
        logits = logits_fn(imgs).to(device) if logits_fn else forward_logits(model, cfg, imgs, amp)
        valid = (masks != ignore) & (masks < c)
        tgt = torch.where(valid, masks, torch.full_like(masks, ignore if ignore >= 0 else -100))
        loss_sum += float(F.cross_entropy(logits, tgt, ignore_index=ignore if ignore >= 0 else -100,
                                          reduction="sum"))
        n_pix += int(valid.sum())
        cm += metrics.confusion_matrix(logits.argmax(1), masks, c, ignore_index=classes.void)
        i = j
        if progress:
            progress(i, len(frames))
    model.train(was_training)
    out = metrics.summarize(cm, classes.names)
    out["loss"] = loss_sum / max(n_pix, 1)
    out["frames"] = len(frames)
    return out
