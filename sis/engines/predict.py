"""The one path from an image to its answer: resize to the work size, an engine's logits,
probabilities, labels and confidence at the image's own size. numpy and Pillow only."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from sis.data.images import resize_maps, resize_rgb, scaled_size
from sis.data.input_range import InputRange, bring_inside, frame_stats, outside, soft_scale


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Class probabilities from logits along ``axis`` (stable: the max is subtracted first)."""
    e = np.exp(logits - logits.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


@dataclass
class Prediction:
    labels: np.ndarray      # (H, W) uint8 class ids at the original size
    confidence: np.ndarray  # (H, W) float32 max softmax probability
    ms: float               # resize + engine + softmax + resize back, milliseconds (a graph build excluded)
    work_size: tuple[int, int]
    moved: tuple[str, ...] = ()  # what lay outside the model's input range, and was moved inside it
    given_size: tuple[int, int] | None = None  # the size the model was given (a soft photo's is smaller); None: work_size


WORK_RULES = ("pixels", "short", "native")
WORK_RULE = "pixels"  # the rule every caller uses: it measured best on the shift benchmark's aspect crops (docs/robustness.md)
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


def in_range(images: np.ndarray, rng: InputRange | None, moved: list | None = None) -> np.ndarray:
    """(N, 3, h, w) uint8 images, each brought inside ``rng`` (``data.input_range``; None: as they are);
    ``moved``, where given, gets each image's words for what lay outside (empty: nothing)."""
    if rng is None:
        return images
    out = []
    for im in images:
        x, what = bring_inside(im.transpose(1, 2, 0), rng)
        out.append(x.transpose(2, 0, 1))
        if moved is not None:
            moved.append(what)
    return np.ascontiguousarray(np.stack(out))


def engine_range(engine) -> InputRange | None:
    """The input range ``engine`` applies (an accurate mode's: its first member's that has one)."""
    return next((r for m in getattr(engine, "members", [engine]) if (r := getattr(m, "input_range", None))), None)


def calibrated(engine, images: np.ndarray, moved: list | None = None) -> np.ndarray:
    """``engine``'s (N, C, h, w) float32 logits of ``images`` brought inside its input range, divided by
    its temperature (both its card's; none and 1 where it has none): the one place both are applied, so
    every picture the studio segments and every probability it shows go through them alike. ``moved``:
    as ``in_range``'s."""
    return tempered(engine, in_range(images, getattr(engine, "input_range", None), moved))


def tempered(engine, images: np.ndarray) -> np.ndarray:
    """``engine``'s logits divided by its temperature, of images already inside its input range (an
    accurate mode moves a photo once at its work size, where the range was measured, then rescales it)."""
    return np.asarray(engine(images), np.float32) / getattr(engine, "temperature", 1.0)


class WorkLogits(NamedTuple):
    logits: np.ndarray        # (C, h, w) calibrated
    seen: np.ndarray          # (h, w, 3) uint8: the image at its work size, before the input range
    moved: tuple[str, ...]    # what about it lay outside the model's input range (``data.input_range.outside``)


def given_size(x: np.ndarray, rng: InputRange | None) -> tuple[int, int]:
    """The size the model is given an (h, w, 3) uint8 image at its work size: its own, smaller for a frame
    softer than ``rng`` (``data.input_range.soft_scale``)."""
    return scaled_size(x.shape[:2], soft_scale(x, rng))


def given_frame(x: np.ndarray, rng: InputRange | None) -> np.ndarray:
    """The (h, w, 3) uint8 frame the model is given for an image ``x`` at its work size: ``x`` itself, or
    made smaller from it when it is softer than ``rng`` (``given_size``). Every caller makes it here, from
    the work-size frame, so a photo, a clip's frame, eval and adaptation give the model the same pixels."""
    return resize_rgb(x, given_size(x, rng))


def work_logits(engine, rgb: np.ndarray, size: tuple[int, int] | None = None,
                rule: str | None = None, given: np.ndarray | None = None) -> WorkLogits:
    """Calibrated logits of an (H, W, 3) uint8 image at its work size (or ``size``), the image at that size
    and what was moved to bring it inside the input range: the image -> logits step every caller takes.
    A frame softer than the range is given to the model smaller (``given_frame``), its logits resized back;
    ``given``: that frame where the caller has made it already (``predict``, to build its graph first)."""
    size = size or work_size(*rgb.shape[:2], tuple(engine.cfg.base_size), rule)
    x = resize_rgb(rgb, size)
    rng = engine_range(engine)
    small = given_frame(x, rng) if given is None else given
    moved: list = []
    if small.shape[:2] == tuple(size):
        logits = calibrated(engine, np.ascontiguousarray(small.transpose(2, 0, 1))[None], moved)[0]
    else:
        logits = resize_maps(calibrated(engine, np.ascontiguousarray(small.transpose(2, 0, 1))[None]), size)[0]
    if not moved:  # an accurate mode's members move it themselves: read it once more for the words
        moved = [outside(frame_stats(x), rng) if rng is not None else ()]
    return WorkLogits(logits, x, moved[0])


def predict(engine, image: Image.Image | np.ndarray, rule: str | None = None) -> Prediction:
    """Segment one RGB image with an ``engines`` engine: resized (aspect kept) to its ``work_size``,
    logits, argmax and confidence, mapped back to the image's size. numpy and Pillow only."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.uint8)
    h, w = arr.shape[:2]
    wh, ww = work_size(h, w, tuple(engine.cfg.base_size), rule)
    t0 = time.perf_counter()
    x = resize_rgb(arr, (wh, ww))
    given = given_frame(x, engine_range(engine))
    t1 = time.perf_counter()
    engine.prepare(given.shape[:2])  # a new size builds its graph once: not the model's time
    build = time.perf_counter() - t1
    work = work_logits(engine, x, (wh, ww), given=given)
    labels, conf = labels_and_confidence(work.logits)
    if (wh, ww) != (h, w):
        labels = np.asarray(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
        conf = np.asarray(Image.fromarray(conf, "F").resize((w, h), Image.BILINEAR))
    ms = (time.perf_counter() - t0 - build) * 1000
    return Prediction(labels, conf, ms, (wh, ww), work.moved, given.shape[:2])
