"""Evaluation of a model on a dataset split: confusion matrix -> metrics."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sis import metrics
from sis.data.dataset import Frames
from sis.engines.predict import batch_at_work_size
from sis.zoo.preprocess import forward_logits
from sis.zoo.registry import ModelConfig


def frame_logits(model: torch.nn.Module | None, cfg: ModelConfig, imgs: torch.Tensor, device: torch.device,
                 amp: bool = True, engine: Callable[[np.ndarray], np.ndarray] | None = None,
                 rule: str | None = None) -> torch.Tensor:
    """(N, C, H, W) logits of (N, 3, H, W) uint8 frames of one size, each segmented at its work size as the
    app does (``engines.predict.batch_at_work_size``) and resized back (bilinear) to the frames' own size."""
    h, w = imgs.shape[-2:]
    x = batch_at_work_size(imgs.cpu().numpy(), cfg.base_size, rule)
    logits = torch.from_numpy(engine(x)).to(device) if engine else \
        forward_logits(model, cfg, torch.from_numpy(x).to(device), amp)
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
    return logits


@torch.inference_mode()
def evaluate(model: torch.nn.Module, cfg: ModelConfig, frames: Frames, device: torch.device,
             amp: bool = True, batch_size: int = 4,
             progress: Callable[[int, int], None] | None = None,
             engine: Callable[[np.ndarray], np.ndarray] | None = None, rule: str | None = None) -> dict:
    """Evaluation at each frame's own resolution: miou, pixel_acc, mean_class_acc, per_class_iou, loss.

    Each frame is segmented at its work size (``engines.predict.work_size`` by ``rule``, default the app's:
    CamVid's 360x480 frames at their own size) and its logits resized back (bilinear) to score every
    labelled pixel. Frames of the same size are batched together; void pixels are ignored.
    ``engine`` (an ``engines`` engine: uint8 images -> logits, numpy) replaces the model's forward;
    ``model`` may then be None.
    """
    classes = frames.classes
    c = classes.num_classes
    ignore = classes.void if classes.void is not None else -100
    cm = np.zeros((c, c), np.int64)
    loss_sum, n_pix = 0.0, 0
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    i = 0
    while i < len(frames):
        j = i + 1
        while j < len(frames) and j - i < batch_size and frames.images[j].shape == frames.images[i].shape:
            j += 1
        imgs = torch.stack(frames.images[i:j]).to(device)
        masks = torch.stack(frames.masks[i:j]).to(device).long()
        logits = frame_logits(model, cfg, imgs, device, amp, engine, rule)
        valid = (masks != ignore) & (masks < c)
        tgt = torch.where(valid, masks, torch.full_like(masks, ignore if ignore >= 0 else -100))
        loss_sum += float(F.cross_entropy(logits, tgt, ignore_index=ignore if ignore >= 0 else -100,
                                          reduction="sum"))
        n_pix += int(valid.sum())
        cm += metrics.confusion_matrix(logits.argmax(1), masks, c, ignore_index=classes.void)
        i = j
        if progress:
            progress(i, len(frames))
    if model is not None:
        model.train(was_training)
    out = metrics.summarize(cm, classes.names)
    out["loss"] = loss_sum / max(n_pix, 1)
    out["frames"] = len(frames)
    return out


def evaluate_folder(folder: Path, frames: Frames) -> dict:
    """The fp32 figures of the saved model in ``folder`` on ``frames``, on the CPU: what
    `python -m sis eval --split val` prints for it (the shipped figures and the seed spread use it)."""
    from sis.zoo.models import load_model
    model, cfg = load_model(Path(folder))
    return evaluate(model, cfg, frames, torch.device("cpu"), amp=False)
