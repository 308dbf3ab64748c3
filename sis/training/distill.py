"""Knowledge distillation: a teacher's class probabilities as soft targets for a student.

The teacher (one model or an ensemble, with or without test-time augmentation: the accurate
mode's engine) labels every training frame once, as the app segments it, before the loop. Its
probabilities then ride through the same crop, rescale and flips as the image (a bilinear
resize keeps them a distribution), so a teacher costs one pass over the data, not one per step.
The loss is pixel-wise: the labels' cross-entropy plus the KL divergence to the teacher at a
temperature (Hinton et al. 2015; Liu et al., Structured Knowledge Distillation, CVPR 2019).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from sis.data.dataset import Frames
from sis.engines.predict import as_batch, at_work_size, softmax, tempered


def check_scale(scale: float) -> None:
    """The one bound on ``teacher_scale``, checked by ``train`` before the teacher's pass and here."""
    if not 0.1 <= scale <= 1:
        raise ValueError(f"the teacher's answers are kept at a scale within 0.1 and 1, not {scale}")


def teacher_targets(frames: Frames, teacher: str, tta: str = "none", device: str = "cpu",
                    log: Callable[[str], None] = print, scale: float = 1.0) -> list[torch.Tensor]:
    """The teacher's class probabilities for every frame: [(C,H,W) float16], on the CPU.

    ``teacher``: a registry name or model folder, or several joined by commas (an ensemble,
    averaged); ``tta``: none | flip | ms. Each model runs on the engine the policy gives it on ``device``, on
    each frame at its work size (``engines.predict.at_work_size``), and its probabilities, uncalibrated, come
    back at the frame's size; the teacher must predict the frames' classes, in the same order. ``scale`` < 1 keeps
    each answer at that share of the frame's height and width (area-averaged: still a distribution);
    ``SegDataset`` scales it back up to the frame."""
    from sis import engines, zoo
    check_scale(scale)
    folders = [zoo.resolve(t.strip()) for t in teacher.split(",") if t.strip()]
    if not folders:
        raise ValueError("the teacher names no model")
    # uncalibrated (temperature 1): the distillation temperature is the one softness knob, as in Hinton et al.
    engine = engines.load_accurate(folders, engines.TTA.from_mode(tta), device=device, log=log, temperature=1.0)
    names = list(engine.cfg.class_set.names)
    if names != list(frames.classes.names):
        raise ValueError(f"the teacher predicts {', '.join(names)}; the training data has "
                         f"{', '.join(frames.classes.names)}")
    probs = engine.probabilities if isinstance(engine, engines.AccurateEngine) else None
    base = engine.cfg.base_size
    out = []
    for img in frames.images:
        # the frame at its work size, as the app segments it
        x = as_batch(at_work_size(img.permute(1, 2, 0).numpy(), base))
        p = torch.from_numpy(np.ascontiguousarray(probs(x) if probs is not None else softmax(tempered(engine, x))))
        h, w = img.shape[-2:]
        kept = max(1, round(h * scale)), max(1, round(w * scale))
        if kept[0] < p.shape[-2]:  # area-averaged and bilinear resizes both keep a distribution
            p = F.interpolate(p.float(), size=kept, mode="area")
        elif p.shape[-2:] != kept:
            p = F.interpolate(p.float(), size=kept, mode="bilinear", align_corners=False)
        out.append(p[0].to(torch.float16))
    log(f"teacher {', '.join(Path(f).name for f in folders)} ({engine.name}) labelled {len(out)} frames")
    return out


def labels_as_targets(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A mask's labels as soft targets: (…,H,W) -> (…,C,H,W) one-hot, all zeros on void (any label outside
    the classes), so that beside a teacher's answers the divergence from them is the labels' cross-entropy."""
    known = (mask >= 0) & (mask < num_classes)
    hot = F.one_hot(torch.where(known, mask, 0), num_classes).movedim(-1, -3).float()
    return hot * known.unsqueeze(-3)


def distill_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-pixel KL(teacher || student) at ``temperature``, times T² (so its gradient keeps
    its size across temperatures).

    logits: (N,C,H,W) the student's; soft: (N,C,H,W) the teacher's probabilities. Pixels whose
    soft targets sum to less than one half (the zero padding of a crop or stride) do not count."""
    soft = soft.float()
    keep = soft.sum(1) > 0.5
    if not keep.any():
        return logits.sum() * 0.0
    t = torch.log_softmax(torch.log(soft.clamp_min(1e-8)) / temperature, 1)
    s = torch.log_softmax(logits.float() / temperature, 1)
    kl = (t.exp() * (t - s)).sum(1)
    return kl[keep].mean() * temperature ** 2


def combined_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None, ignore: int,
                  weights: torch.Tensor | None, alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * cross-entropy on the labels + alpha * distill_loss; the labels alone without ``soft``."""
    ce = F.cross_entropy(logits.float(), labels, ignore_index=ignore, weight=weights)
    if soft is None or alpha == 0:
        return ce
    return (1 - alpha) * ce + alpha * distill_loss(logits, soft, temperature)
