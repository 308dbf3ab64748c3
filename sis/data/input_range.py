"""The range of colour cast, contrast, brightness, sharpness, sensor noise and JPEG blocking a model's
training frames span, and a photo brought back inside it before the model sees it.

A model trained on one city's camera has never seen a frame warmer, cooler, flatter, darker, brighter,
softer, grainier or more compressed than its training set; outside that range it fails confidently
(docs/robustness.md). A photo whose frame statistics fall outside the range is moved to the nearest edge
by steps a camera or a decoder applies: colour smoothed along luma's edges (a heavy JPEG breaks it into
blocks), noise reduction (an edge-preserving filter scaled to the noise it measures), per-channel gains
(white balance), a stretch about the mean (contrast) or a tone curve lifting dark midtones, one gain
(exposure), an unsharp mask (sharpening).
A photo inside the range is returned unchanged, so the frames the model knows are scored as before.
Sharpness, noise and blocking are per pixel, so they are taken at the size the model sees a frame (its
work size; training frames as they are stored). The range is fitted on the training frames (their
minimum and maximum: what was never seen) and kept in the model's card: training fits it at the end of
every run (replayed frames included, a fine-tune's joined to its starting model's, so a model
fine-tuned on a user's street takes that street in), ``sis calibrate --input-range`` for a model
trained before. numpy and Pillow; OpenCV for the two filters, imported only for a frame that needs one.
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
    noise: float = 0.0      # luma's noise level, a standard deviation (``noise_level``)
    blockiness: float = 1.0  # luma's steps on JPEG's 8-px grid over its steps elsewhere (``blockiness``)


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
    noise: tuple[float, float] | None = None      # None: a card fitted before noise was measured
    contrast_median: float | None = None  # where a flatter frame than any is stretched to; None: to the minimum
    blockiness: tuple[float, float] | None = None  # None: a card fitted before blocking was measured

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputRange | None":
        """The card's ``input_range`` section, or None where it has none or it is unreadable."""
        if not isinstance(d, dict):
            return None
        try:
            def pair(k):  # sharpness, noise, blockiness: None on a card fitted before they were measured
                return tuple(float(v) for v in d[k]) if d.get(k) is not None else None
            return cls(*(tuple(float(v) for v in d[k]) for k in ("luminance", "contrast", "red_green", "blue_green")),
                       frames=int(d.get("frames", 0)), source=str(d.get("source", "")),
                       sharpness=pair("sharpness"), noise=pair("noise"), blockiness=pair("blockiness"),
                       contrast_median=float(d["contrast_median"]) if d.get("contrast_median") is not None else None)
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


# Immerkaer's kernel: the difference of two Laplacians, blind to a plane's ramps and to most of an edge
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_level(y: np.ndarray) -> float:
    """A (H, W) luma plane's noise, as a standard deviation in its own units: the median absolute response
    to Immerkaer's kernel (J. Immerkaer, "Fast noise variance estimation", CVIU 1996; the median, after
    Donoho, so that edges and texture, a minority of pixels, do not read as noise). NaN under 3 px."""
    if min(y.shape) < 3:
        return float("nan")
    h, w = y.shape
    r = sum(_NOISE_KERNEL[i, j] * y[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3))
    return float(np.median(np.abs(r))) / (6 * 0.6745)  # the kernel's norm is 6; MAD -> sigma


JPEG_BLOCK = 8  # px: JPEG codes luma in 8x8 blocks (chroma, subsampled, in 16x16)


def blockiness(y: np.ndarray) -> float:
    """A (H, W) luma plane's JPEG blocking: the mean step between neighbouring columns (and rows) at the
    phase of an 8-px grid where steps are largest, over the median phase's; about 1 for a frame without
    blocks (or resized since it was compressed, which moves the grid off 8 px). NaN where there is
    nothing to measure (under two blocks, or flat)."""
    r = []
    for d in (np.abs(np.diff(y, axis=1)).mean(0), np.abs(np.diff(y, axis=0)).mean(1)):
        n = len(d) // JPEG_BLOCK * JPEG_BLOCK
        if n < 2 * JPEG_BLOCK:
            return float("nan")
        per = d[:n].reshape(-1, JPEG_BLOCK).mean(0)  # the mean step at each phase of the grid
        med = float(np.median(per))
        if med < 1e-5:
            return float("nan")
        r.append(float(per.max()) / med)
    return float(np.mean(r))


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
                      _ratio(float(m[2]), float(m[1])), _sharpness(y), noise_level(y), blockiness(y))


def fit_input_range(frames: Iterable[np.ndarray], source: str = "") -> InputRange:
    """The range the (H, W, 3) uint8 ``frames`` span: each statistic's minimum and maximum, and the median
    contrast."""
    s = np.array([[f.luminance, f.contrast, f.red_green, f.blue_green, f.sharpness, f.noise, f.blockiness]
                  for f in map(frame_stats, frames)])
    if not len(s):
        raise ValueError("an input range needs at least one frame")
    lo, hi = s[:, :4].min(0), s[:, :4].max(0)

    def span(col):  # None where no frame had it to measure
        v = s[:, col][~np.isnan(s[:, col])]
        return (float(v.min()), float(v.max())) if len(v) else None
    return InputRange(*((float(a), float(b)) for a, b in zip(lo, hi)), frames=len(s), source=source,
                      sharpness=span(4), noise=span(5), contrast_median=float(np.median(s[:, 1])),
                      blockiness=span(6))


def union(a: InputRange, b: InputRange | None) -> InputRange:
    """The range spanning both: a fine-tune has seen what its starting model saw, and its own frames."""
    if b is None:
        return a
    span = [(min(x[0], y[0]), max(x[1], y[1])) for x, y in
            zip((a.luminance, a.contrast, a.red_green, a.blue_green), (b.luminance, b.contrast, b.red_green, b.blue_green))]

    def either(x, y):  # a statistic one card did not measure is the other's
        return x if y is None else y if x is None else (min(x[0], y[0]), max(x[1], y[1]))
    medians = [m for m in (a.contrast_median, b.contrast_median) if m is not None]
    return InputRange(*span, frames=a.frames + b.frames, source=f"{a.source} and {b.source}",
                      sharpness=either(a.sharpness, b.sharpness), noise=either(a.noise, b.noise),
                      contrast_median=min(medians) if medians else None,  # the lower: the gentler stretch
                      blockiness=either(a.blockiness, b.blockiness))


def outside(stats: FrameStats, rng: InputRange) -> tuple[str, ...]:
    """What about a frame lies outside the range, in words (empty: nothing)."""
    out = []
    if stats.red_green > rng.red_green[1] or stats.blue_green < rng.blue_green[0]:
        out.append("a warm colour cast")
    elif stats.red_green < rng.red_green[0] or stats.blue_green > rng.blue_green[1]:
        out.append("a cool colour cast")
    if stats.contrast < rng.contrast[0]:
        out.append("low contrast")
    elif _too_contrasted(stats, rng):
        out.append("deep shadows")
    if stats.luminance < rng.luminance[0]:
        out.append("a dark exposure")
    elif stats.luminance > rng.luminance[1]:
        out.append("a bright exposure")
    if _too_soft(stats, rng):
        out.append("blurred detail")
    if _too_noisy(stats, rng):
        out.append("heavy sensor noise")
    if _too_blocky(stats, rng):
        out.append("heavy compression blocks")
    return tuple(out)


def _too_contrasted(stats: FrameStats, rng: InputRange) -> bool:
    return stats.contrast > rng.contrast[1]


LIFT_MIN_GAMMA = 0.25  # the strongest midtone lift (x ** 0.25): a frame of pure blacks and whites has none to lift


def _lift_midtones(x: np.ndarray, target: float) -> np.ndarray:
    """[0, 1] (H, W, 3) -> x ** g, the g < 1 found by bisection that brings luma's contrast down to
    ``target``: a tone curve that lifts dark midtones (as a phone's shadow lift does), blacks and
    whites kept where they are, where a linear flattening greys the whole frame."""
    lo, hi = LIFT_MIN_GAMMA, 1.0
    for _ in range(16):
        g = (lo + hi) / 2
        y = (x ** g) @ LUMA
        if float(y.std()) / max(float(y.mean()), 1e-4) > target:
            hi = g
        else:
            lo = g
    return x ** hi


def _too_soft(stats: FrameStats, rng: InputRange) -> bool:
    return rng.sharpness is not None and stats.sharpness < rng.sharpness[0]


def _too_noisy(stats: FrameStats, rng: InputRange) -> bool:
    return rng.noise is not None and stats.noise > rng.noise[1]


def _too_blocky(stats: FrameStats, rng: InputRange) -> bool:
    return rng.blockiness is not None and stats.blockiness > rng.blockiness[1]


DEBLOCK_RADIUS, DEBLOCK_EPS = 10.0, 0.01  # px per unit of blockiness over 1; guided filter's eps (docs/robustness.md)


def _smooth_chroma(x: np.ndarray, blocks: float) -> np.ndarray:
    """[0, 1] (H, W, 3) -> the same luma, its two chroma planes smoothed by a guided filter with luma as the
    guide (He, Sun and Tang, ECCV 2010) over a radius of DEBLOCK_RADIUS x (``blocks`` - 1): a heavy JPEG
    turns colour into flat 16-px patches (a purple square on grey asphalt) while luma, coded finer, keeps
    the edges; colour is made to follow luma's edges, so a red car keeps its outline. Smoothing luma as
    well lost more than it gained (docs/robustness.md)."""
    from sis.host import opencv
    cv2 = opencv()
    y, cr, cb = cv2.split(cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2YCrCb))
    r = max(1, round(DEBLOCK_RADIUS * (blocks - 1.0)))

    def box(p):
        return cv2.boxFilter(p, -1, (2 * r + 1, 2 * r + 1))
    my = box(y)
    vy = box(y * y) - my * my

    def guided(p):  # each window's best linear fit of p on y, averaged over the windows that hold a pixel
        mp = box(p)
        a = (box(y * p) - my * mp) / (vy + DEBLOCK_EPS)
        return box(a) * y + box(mp - a * my)
    return np.clip(cv2.cvtColor(cv2.merge([y, guided(cr), guided(cb)]), cv2.COLOR_YCrCb2RGB), 0.0, 1.0)


SOFT_POWER = 0.25  # a soft frame's scale: (its sharpness over the range's minimum) ** this (docs/robustness.md)
SOFT_SCALES = (0.5, 0.75, 1.0)  # the scales it snaps to: a few graph sizes serve every soft frame


def soft_scale(rgb: np.ndarray, rng: InputRange | None) -> float:
    """The fraction of its work size an (H, W, 3) uint8 frame is segmented at: 1 unless it is softer than
    any training frame; a softer one is made smaller, which shrinks its blur with it (and its objects,
    which the models bear better), by (its sharpness over the range's minimum) ** SOFT_POWER, snapped to
    the nearest of SOFT_SCALES. Sharpening alone stops at the softest training frame."""
    if rng is None or rng.sharpness is None:
        return 1.0
    s = _sharpness((rgb.astype(np.float32) / 255.0) @ LUMA)
    if not s < rng.sharpness[0]:  # NaN (flat, tiny) is never soft
        return 1.0
    k = (s / rng.sharpness[0]) ** SOFT_POWER
    return min(SOFT_SCALES, key=lambda v: abs(v - k))


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


DENOISE_RADIUS, DENOISE_SPREAD, DENOISE_RANGE = 6, 3.0, 2.0  # px, px, x each channel's noise (docs/robustness.md)


def _denoise(x: np.ndarray, sigma: float) -> np.ndarray:
    """[0, 1] (H, W, 3) -> a bilateral filter of it (Tomasi and Manduchi, ICCV 1998; OpenCV's): each pixel
    the average of its neighbours within DENOISE_RADIUS, weighted by distance (DENOISE_SPREAD) and by how
    alike they are, on the scale of the noise, so edges stay. Luma (its noise ``sigma``) and the two
    chroma planes (each its own, measured here) apart: grain a phone leaves in luma alone is smoothed
    as much as grain in every channel."""
    from sis.host import opencv
    cv2 = opencv()
    planes = list(cv2.split(cv2.cvtColor(np.ascontiguousarray(x, np.float32), cv2.COLOR_RGB2YCrCb)))
    for i, p in enumerate(planes):
        n = sigma if i == 0 else noise_level(p)
        n = n if np.isfinite(n) else 0.0  # a plane too small to measure is hardly smoothed
        planes[i] = cv2.bilateralFilter(p, 2 * DENOISE_RADIUS + 1, DENOISE_RANGE * max(n, 1e-4), DENOISE_SPREAD)
    return cv2.cvtColor(cv2.merge(planes), cv2.COLOR_YCrCb2RGB)


def bring_inside(rgb: np.ndarray, rng: InputRange | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """``into_range`` and what was outside (``outside``'s words), from one reading of the frame: the words
    decide whether it is moved, so the sentence and the picture never disagree."""
    if rng is None:
        return rgb, ()
    c = np.ascontiguousarray(rgb)  # one layout, one float rounding: an engine's transposed batch reads as the photo
    s = frame_stats(c)
    moved = outside(s, rng)
    return (_move(c, rng, s) if moved else rgb), moved


def into_range(rgb: np.ndarray, rng: InputRange | None) -> np.ndarray:
    """(H, W, 3) uint8 -> the same frame brought inside ``rng``: the colour of a frame blockier than the
    range smoothed, noise above the range reduced, red and blue gains to the nearest colour balance in
    range (brightness kept), a frame flatter than the range stretched about its mean to the training
    frames' median contrast and a more contrasted one's dark midtones lifted by a tone curve to that
    contrast, a gain to the nearest brightness in range, then an unsharp mask up to the lowest sharpness
    in range. Returns ``rgb`` itself when it is inside.

    A contrasted frame is never flattened linearly: that lost more than it gained, on the shift
    benchmark, where the tone curve gains (docs/robustness.md). Sharpness is only raised: a
    frame sharper than any training frame is left as it is; grain is told apart by its own statistic
    (``noise_level``), which texture and edges barely move."""
    return bring_inside(rgb, rng)[0]


def _move(rgb: np.ndarray, rng: InputRange, s: FrameStats) -> np.ndarray:
    """``into_range``'s steps for a frame ``outside`` found beyond ``rng`` (``s``: its statistics)."""
    rg, bg = np.clip(s.red_green, *rng.red_green), np.clip(s.blue_green, *rng.blue_green)
    x = rgb.astype(np.float32) / 255.0
    if _too_blocky(s, rng):  # first: the compression came last, after everything the camera did
        x = _smooth_chroma(x, s.blockiness)
    if _too_noisy(s, rng):  # first, as a camera does: the gains below would scale the noise with the picture
        x = _denoise(x, s.noise)
    if rg != s.red_green or bg != s.blue_green:
        x = x * np.array([rg / s.red_green, 1.0, bg / s.blue_green], np.float32)
        x = x * (s.luminance / max(float((x @ LUMA).mean()), 1e-6))  # the cast goes, the brightness stays
    if _too_contrasted(s, rng):  # to a typical training frame's contrast, as a flat frame is
        x = _lift_midtones(np.clip(x, 0.0, 1.0), rng.contrast_median or rng.contrast[1])
    if s.contrast < rng.contrast[0]:  # to a typical training frame's contrast, not the flattest one's
        mu = float((x @ LUMA).mean())
        x = (x - mu) * ((rng.contrast_median or rng.contrast[0]) / max(s.contrast, 1e-6)) + mu
    x = np.clip(x, 0.0, 1.0)
    mu = float((x @ LUMA).mean())
    target = float(np.clip(mu, *rng.luminance))
    if target != mu:
        x = np.clip(x * (target / max(mu, 1e-4)), 0.0, 1.0)
    if _too_soft(s, rng):
        x = _sharpen_to(x, rng.sharpness[0])
    return np.rint(x * 255.0).astype(np.uint8)
