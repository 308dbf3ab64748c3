"""The one path from an image to its answer: resize to the work size, an engine's logits,
probabilities, labels and confidence at the image's own size. numpy and Pillow only."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from sis.data.images import resize_images, resize_rgb


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Class probabilities from logits along ``axis`` (stable: the max is subtracted first)."""
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@dataclass
class Prediction:
    labels: np.ndarray      # (H, W) uint8 class ids at the original size
    confidence: np.ndarray  # (H, W) float32 max softmax probability
    ms: float               # resize + engine + softmax + resize back, milliseconds (a graph build excluded)
    work_size: tuple[int, int]  # the size the model was given


WORK_RULES = ("pixels", "short", "native")
WORK_RULE = "pixels"  # the rule every caller uses: best on real frames of a wider camera (docs/real_streets.md)
MAX_LONG_X = 3        # the "short" rule caps the long side at this many times the base's long side


def work_size(h: int, w: int, base: tuple[int, int], rule: str | None = None) -> tuple[int, int]:
    """The size (h, w) an image is segmented at, its aspect kept. ``pixels``: the pixel count of
    ``base``; ``short``: the short side at the base's short side; ``native``: as ``short`` but never
    enlarged. ``short`` and ``native`` keep the long side within MAX_LONG_X times the base's long side."""
    rule = rule or WORK_RULE
    if rule == "pixels":
        f = (base[0] * base[1] / (h * w)) ** 0.5
    elif rule in ("short", "native"):
        f = min(min(base) / min(h, w), MAX_LONG_X * max(base) / max(h, w))
        f = min(f, 1.0) if rule == "native" else f
    else:
        raise ValueError(f"unknown work-size rule '{rule}'; choose {' or '.join(WORK_RULES)}")
    return max(1, round(h * f)), max(1, round(w * f))


def labels_and_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) logits -> (H, W) uint8 argmax and (H, W) float32 max softmax probability."""
    top = logits.max(0)
    # the top class's softmax is 1 / sum(exp(l - l_top)): no (C, H, W) probability array is kept
    conf = 1.0 / np.exp(logits - top).sum(0)
    return logits.argmax(0).astype(np.uint8), conf.astype(np.float32)


def tempered(engine, images: np.ndarray) -> np.ndarray:
    """``engine``'s (N, C, h, w) float32 logits of (N, 3, h, w) uint8 ``images``, divided by its temperature (its
    card's; 1 where it has none): the one place it is applied, so every probability the studio shows is alike."""
    return np.asarray(engine(images), np.float32) / engine.temperature


class WorkLogits(NamedTuple):
    logits: np.ndarray        # (C, h, w) calibrated
    seen: np.ndarray          # (h, w, 3) uint8: the image at its work size, as the model was given it


def at_work_size(rgb: np.ndarray, base: tuple[int, int], rule: str | None = None) -> np.ndarray:
    """The (h, w, 3) frame at the size a model of base size ``base`` segments it at (``work_size``)."""
    return resize_rgb(rgb, work_size(*rgb.shape[:2], tuple(base), rule))


def batch_at_work_size(images: np.ndarray, base: tuple[int, int], rule: str | None = None) -> np.ndarray:
    """(N, 3, H, W) uint8 frames of one size at their work size: ``at_work_size`` for a batch (evaluation)."""
    return resize_images(images, work_size(*images.shape[-2:], tuple(base), rule))


def as_batch(rgb: np.ndarray) -> np.ndarray:
    """An (h, w, 3) uint8 frame as the (1, 3, h, w) batch an engine or a model takes."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]


def work_logits(engine, rgb: np.ndarray, size: tuple[int, int] | None = None, rule: str | None = None) -> WorkLogits:
    """Calibrated logits of an (H, W, 3) uint8 image at its work size (or ``size``) and the image at that size:
    the image -> logits step every caller takes."""
    size = size or work_size(*rgb.shape[:2], tuple(engine.cfg.base_size), rule)
    x = resize_rgb(rgb, size)
    return WorkLogits(tempered(engine, as_batch(x))[0], x)


def predict(engine, image: Image.Image | np.ndarray, rule: str | None = None) -> Prediction:
    """Segment one RGB image with an ``engines`` engine: resized (aspect kept) to its ``work_size``,
    logits, argmax and confidence, mapped back to the image's size. numpy and Pillow only."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.uint8)
    h, w = arr.shape[:2]
    wh, ww = work_size(h, w, tuple(engine.cfg.base_size), rule)
    t0 = time.perf_counter()
    engine.prepare((wh, ww))  # a new size builds its graph once: not the model's time
    build = time.perf_counter() - t0
    work = work_logits(engine, arr, (wh, ww))
    labels, conf = labels_and_confidence(work.logits)
    if (wh, ww) != (h, w):
        labels = np.asarray(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
        conf = np.asarray(Image.fromarray(conf, "F").resize((w, h), Image.BILINEAR))
    ms = (time.perf_counter() - t0 - build) * 1000
    return Prediction(labels, conf, ms, (wh, ww))
