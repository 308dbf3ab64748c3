"""The range of colour cast, contrast, brightness and sharpness a model's training frames span, and a
photo brought back inside it before the model sees it.

A model trained on one city's camera has never seen a frame warmer, cooler, flatter, darker, brighter or
softer than its training set; outside that range it fails confidently (docs/robustness.md). A photo whose
frame statistics fall outside the range is moved to the nearest edge by global steps a camera itself
applies: per-channel gains (white balance), a stretch about the mean (contrast), one gain (exposure), an
unsharp mask (sharpening). A photo inside the range is returned unchanged, so the frames the model knows
are scored as before. Sharpness is per pixel, so it is taken at the size the model sees a frame (its
work size; training frames as they are stored). The range is fitted on the training frames (their minimum and maximum: what was never seen) and
kept in the model's card: training fits it at the end of every run (replayed frames included, a
fine-tune's joined to its starting model's, so a model fine-tuned on a user's street takes that street
in), ``sis calibrate --input-range`` for a model trained before. numpy and Pillow only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np
from PIL import Image, ImageFilter

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class FrameStats:
    """One frame's global statistics, in [0, 1] units."""
    luminance: float      # mean luma
    contrast: float       # luma's standard deviation over its mean (a darker frame keeps its contrast)
    red_green: float      # mean red over mean green (a warm cast raises it)
    blue_green: float     # mean blue over mean green (a cool cast raises it)
    sharpness: float = 0.0  # mean |Laplacian| of luma over its standard deviation (a blurred frame lowers it)


@dataclass(frozen=True)
class InputRange:
    """[low, high] of each statistic over the training frames."""
    luminance: tuple[float, float]
    contrast: tuple[float, float]
    red_green: tuple[float, float]
    blue_green: tuple[float, float]
    frames: int = 0
    source: str = ""
    sharpness: tuple[float, float] | None = None  # None: a card fitted before sharpness was measured

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputRange | None":
        """The card's ``input_range`` section, or None where it has none or it is unreadable."""
        if not isinstance(d, dict):
            return None
        try:
            sharp = d.get("sharpness")
            return cls(*(tuple(float(v) for v in d[k]) for k in ("luminance", "contrast", "red_green", "blue_green")),
                       frames=int(d.get("frames", 0)), source=str(d.get("source", "")),
                       sharpness=tuple(float(v) for v in sharp) if sharp is not None else None)
        except (KeyError, TypeError, ValueError):
            return None


def _laplacian(y: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of a (H, W) plane, on its interior."""
    return 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]


def _sharpness(y: np.ndarray) -> float:
    """NaN where there is nothing to measure (a frame under 3 px, or flat): never too soft, never fitted."""
    sd = float(y.std())
    if min(y.shape) < 3 or sd < 1e-3:
        return float("nan")
    return float(np.abs(_laplacian(y)).mean()) / sd


def _ratio(channel: float, green: float) -> float:
    """A channel's mean over green's; 1 (neutral) where either is all but empty: no gain can balance it."""
    return channel / green if channel > 0.5 / 255 and green > 0.5 / 255 else 1.0


def frame_stats(rgb: np.ndarray) -> FrameStats:
    """(H, W, 3) uint8 or [0, 1] float -> its FrameStats."""
    x = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    m = x.reshape(-1, 3).mean(0)
    y = x @ LUMA
    mu = float(y.mean())
    return FrameStats(mu, float(y.std()) / max(mu, 1e-4), _ratio(float(m[0]), float(m[1])),
                      _ratio(float(m[2]), float(m[1])), _sharpness(y))


def fit_input_range(frames: Iterable[np.ndarray], source: str = "") -> InputRange:
    """The range the (H, W, 3) uint8 ``frames`` span: each statistic's minimum and maximum."""
    s = np.array([[f.luminance, f.contrast, f.red_green, f.blue_green, f.sharpness] for f in map(frame_stats, frames)])
    if not len(s):
        raise ValueError("an input range needs at least one frame")
    lo, hi = s[:, :4].min(0), s[:, :4].max(0)
    sharp = s[:, 4][~np.isnan(s[:, 4])]
    return InputRange(*((float(a), float(b)) for a, b in zip(lo, hi)), frames=len(s), source=source,
                      sharpness=(float(sharp.min()), float(sharp.max())) if len(sharp) else None)


def union(a: InputRange, b: InputRange | None) -> InputRange:
    """The range spanning both: a fine-tune has seen what its starting model saw, and its own frames."""
    if b is None:
        return a
    span = [(min(x[0], y[0]), max(x[1], y[1])) for x, y in
            zip((a.luminance, a.contrast, a.red_green, a.blue_green), (b.luminance, b.contrast, b.red_green, b.blue_green))]
    sharp = (a.sharpness if b.sharpness is None else b.sharpness if a.sharpness is None else
             (min(a.sharpness[0], b.sharpness[0]), max(a.sharpness[1], b.sharpness[1])))
    return InputRange(*span, frames=a.frames + b.frames, source=f"{a.source} and {b.source}", sharpness=sharp)


def outside(stats: FrameStats, rng: InputRange) -> tuple[str, ...]:
    """What about a frame lies outside the range, in words (empty: nothing)."""
    out = []
    if stats.red_green > rng.red_green[1] or stats.blue_green < rng.blue_green[0]:
        out.append("a warm colour cast")
    elif stats.red_green < rng.red_green[0] or stats.blue_green > rng.blue_green[1]:
        out.append("a cool colour cast")
    if stats.contrast < rng.contrast[0]:
        out.append("low contrast")
    if stats.luminance < rng.luminance[0]:
        out.append("a dark exposure")
    elif stats.luminance > rng.luminance[1]:
        out.append("a bright exposure")
    if _too_soft(stats, rng):
        out.append("blurred detail")
    return tuple(out)


def _too_soft(stats: FrameStats, rng: InputRange) -> bool:
    return rng.sharpness is not None and stats.sharpness < rng.sharpness[0]


SHARPEN_SIGMA = 1.5  # px at the work size: the unsharp mask's radius (1 to 3 measured; docs/robustness.md)


def _sharpen_to(x: np.ndarray, target: float) -> np.ndarray:
    """[0, 1] (H, W, 3) -> an unsharp mask of it whose sharpness is ``target``: the amount found by
    bisection (sharpness grows with it; the Laplacian of the detail is taken once)."""
    u8 = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    detail = x - np.asarray(Image.fromarray(u8).filter(ImageFilter.GaussianBlur(SHARPEN_SIGMA)), np.float32) / 255.0
    y, yd = x @ LUMA, detail @ LUMA
    ly, lyd = _laplacian(y), _laplacian(yd)
    lo, hi = 0.0, 64.0
    for _ in range(16):
        a = (lo + hi) / 2
        if float(np.abs(ly + a * lyd).mean()) / max(float((y + a * yd).std()), 1e-4) < target:
            lo = a
        else:
            hi = a
    return np.clip(x + hi * detail, 0.0, 1.0)


def bring_inside(rgb: np.ndarray, rng: InputRange | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``into_range`` and what was outside (``outside``'s words), from one reading of the frame: the words
    decide whether it is moved, so the sentence and the picture never disagree."""
    if rng is None:
        return rgb, ()
    s = frame_stats(rgb)
    moved = outside(s, rng)
    return (_move(rgb, rng, s) if moved else rgb), moved


def into_range(rgb: np.ndarray, rng: InputRange | None) -> np.ndarray:
    """(H, W, 3) uint8 -> the same frame brought inside ``rng``: red and blue gains to the nearest
    colour balance in range (brightness kept), a stretch about the mean up to the lowest contrast in
    range, a gain to the nearest brightness in range, then an unsharp mask up to the lowest sharpness
    in range. Returns ``rgb`` itself when it is inside.

    Contrast is only ever raised: a frame more contrasted than any training frame (dark midtones) lost
    more when flattened than it gained, on the shift benchmark (docs/robustness.md); sharpness too (a
    noisy frame is sharper than any training frame, and smoothing it is denoising, not a camera gain)."""
    return bring_inside(rgb, rng)[0]


def _move(rgb: np.ndarray, rng: InputRange, s: FrameStats) -> np.ndarray:
    """``into_range``'s steps for a frame ``outside`` found beyond ``rng`` (``s``: its statistics)."""
    rg, bg = np.clip(s.red_green, *rng.red_green), np.clip(s.blue_green, *rng.blue_green)
    x = rgb.astype(np.float32) / 255.0
    if rg != s.red_green or bg != s.blue_green:
        x = x * np.array([rg / s.red_green, 1.0, bg / s.blue_green], np.float32)
        x = x * (s.luminance / max(float((x @ LUMA).mean()), 1e-6))  # the cast goes, the brightness stays
    if s.contrast < rng.contrast[0]:
        mu = float((x @ LUMA).mean())
        x = (x - mu) * (rng.contrast[0] / max(s.contrast, 1e-6)) + mu
    x = np.clip(x, 0.0, 1.0)
    mu = float((x @ LUMA).mean())
    target = float(np.clip(mu, *rng.luminance))
    if target != mu:
        x = np.clip(x * (target / max(mu, 1e-4)), 0.0, 1.0)
    if _too_soft(s, rng):
        x = _sharpen_to(x, rng.sharpness[0])
    return np.rint(x * 255.0).astype(np.uint8)
