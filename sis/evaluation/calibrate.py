"""Calibration: a temperature that makes a model's confidence mean what it says (Guo et al., ICML 2017),
and the confidence below which a photo looks unlike the frames the model learned.

Fitted on CamVid val through the model's engine here, on pixels sampled evenly from every frame at
its work size: the temperature T minimises the negative log-likelihood of softmax(logits / T); the
argmax, and so every mIoU, is unchanged. numpy only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sis import metrics
from sis.engines.predict import softmax, work_logits

PIXELS_PER_FRAME = 4000
LOW_PERCENTILE = 5  # a photo whose mean confidence is below this percentile of val's frames is flagged


@dataclass(frozen=True)
class Calibration:
    temperature: float
    ece_before: float        # on the sampled val pixels, at T = 1
    ece_after: float         # at the fitted T
    nll_before: float
    nll_after: float
    low_confidence: float    # the low_percentile-th percentile of val frames' mean confidence, at T
    low_percentile: float
    frames: int
    pixels: int
    engine: str

    def to_dict(self) -> dict:
        return asdict(self)


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits / t
    z = z - z.max(1, keepdims=True)
    logp = z[np.arange(len(labels)), labels] - np.log(np.exp(z).sum(1))
    return float(-logp.mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, lo: float = 0.25, hi: float = 8.0,
                    steps: int = 60) -> float:
    """The T in [lo, hi] minimising the NLL of (N, C) logits against (N,) labels: golden-section
    search on log T (the NLL is convex in 1/T)."""
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = _nll(logits, labels, math.exp(c)), _nll(logits, labels, math.exp(d))
    for _ in range(steps):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = _nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = _nll(logits, labels, math.exp(d))
    return math.exp((a + b) / 2)


def calibrate(engine, frames, seed: int = 0, pixels_per_frame: int = PIXELS_PER_FRAME) -> Calibration:
    """Fit the temperature of ``engine`` on ``frames`` ([(name, rgb, label)], e.g. CamVid val), from its
    logits as ``engines.predict.work_logits`` gives them (an engine whose temperature is not 1 gets the
    factor on top of its own)."""
    classes = engine.cfg.class_set
    void = classes.void if classes.void is not None else 255
    rng = np.random.default_rng(seed)
    sampled_logits, sampled_labels, frame_logits = [], [], []
    for _, rgb, label in frames:
        logits = work_logits(engine, rgb).logits
        c, h, w = logits.shape
        lab = label if label.shape == (h, w) else np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))
        flat_l, flat_y = logits.reshape(c, -1).T, lab.reshape(-1)
        valid = np.flatnonzero((flat_y != void) & (flat_y < classes.num_classes))
        pick = rng.choice(valid, min(pixels_per_frame, len(valid)), replace=False) if len(valid) else valid
        sampled_logits.append(flat_l[pick])
        sampled_labels.append(flat_y[pick].astype(np.int64))
        frame_logits.append(flat_l[rng.choice(len(flat_l), min(pixels_per_frame, len(flat_l)), replace=False)])
    logits, labels = np.concatenate(sampled_logits), np.concatenate(sampled_labels)
    t = fit_temperature(logits, labels)

    def ece(temp: float) -> float:
        p = softmax(logits / temp, axis=1)
        return metrics.expected_calibration_error(metrics.calibration_bins(p.max(1), p.argmax(1) == labels))
    mean_conf = [float(softmax(f / t, axis=1).max(1).mean()) for f in frame_logits]
    return Calibration(temperature=t, ece_before=ece(1.0), ece_after=ece(t), nll_before=_nll(logits, labels, 1.0),
                       nll_after=_nll(logits, labels, t),
                       low_confidence=float(np.percentile(mean_conf, LOW_PERCENTILE)), low_percentile=LOW_PERCENTILE,
                       frames=len(frames), pixels=len(labels), engine=engine.name)
