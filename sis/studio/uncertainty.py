"""Where is the model unsure? Per-pixel entropy and confidence, per-image scores, and a ranking of
photos or clip frames so that a user corrects the ones the model is least sure of. numpy only.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from sis.engines.predict import softmax, work_logits

UNSURE_BELOW = 0.5  # a pixel whose top class has less than this probability counts as unsure


def entropy(prob: np.ndarray) -> np.ndarray:
    """(C, H, W) class probabilities -> (H, W) entropy normalised to 0 (certain) .. 1 (uniform)."""
    p = np.clip(prob, 1e-12, 1.0)
    return -(p * np.log(p)).sum(0) / np.log(prob.shape[0])


@dataclass
class Uncertainty:
    """One image's scores: the higher ``mean_entropy``, the less sure the model."""
    name: str
    mean_entropy: float
    unsure_share: float                 # share of pixels whose top class is below UNSURE_BELOW
    confidence: np.ndarray = field(repr=False)  # (h, w) float32 top-class probability, at the work size
    image: np.ndarray | None = field(default=None, repr=False)  # (H, W, 3) uint8, kept for the top few
    index: int | None = None            # frame index in a clip


def score(prob: np.ndarray, name: str = "", unsure_below: float = UNSURE_BELOW) -> Uncertainty:
    """Scores of one (C, H, W) probability map."""
    conf = prob.max(0).astype(np.float32)
    return Uncertainty(name, float(entropy(prob).mean()), float((conf < unsure_below).mean()), conf)


def probabilities(engine, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((C, h, w) class probabilities, (h, w, 3) the image) at the model's working size."""
    logits, work = work_logits(engine, rgb)
    return softmax(logits, axis=0), work


def rank(engine, images: Iterable[tuple[str, np.ndarray]], top: int | None = None,
         progress: Callable[[int], None] | None = None) -> list[Uncertainty]:
    """Score every (name, (H, W, 3) uint8) on ``engine``; the ``top`` least sure first (all if None),
    each keeping its image. Only the top few images stay in memory."""
    heap: list[tuple[float, int, Uncertainty]] = []
    for i, (name, rgb) in enumerate(images):
        u = score(probabilities(engine, rgb)[0], name)
        u.image = rgb
        heapq.heappush(heap, (u.mean_entropy, i, u))
        if top is not None and len(heap) > top:
            heapq.heappop(heap)  # the surest goes
        if progress:
            progress(i + 1)
    return [u for _, _, u in sorted(heap, key=lambda t: (-t[0], t[1]))]


def rank_clip(engine, clip: Path, stride: int = 15, top: int = 5, max_seconds: float | None = None,
              progress: Callable[[int], None] | None = None) -> list[Uncertainty]:
    """The ``top`` least sure of every ``stride``-th frame of a clip, each with its frame index."""
    from sis.video.clips import iter_frames, probe
    from sis.video.segment import MAX_SECONDS, frame_cap
    frames = iter_frames(clip, stride, frame_cap(probe(clip), max_seconds or MAX_SECONDS))
    picked = rank(engine, ((f"frame {i}", rgb) for i, rgb in frames), top, progress)
    for u in picked:
        u.index = int(u.name.split()[-1])
    return picked
