"""Camera and scene shifts of a labelled frame: what a phone or a dashcam changes against CamVid.

Each shift maps (image, label) to (image, label) at three fixed severities (1 mild, 2 moderate,
3 severe), drawn from a seed that depends only on (seed, shift, severity, frame), so two runs agree
exactly. The photometric ones follow ImageNet-C (Hendrycks and Dietterich, ICLR 2019) and its
segmentation form (Kamann and Rother, CVPR 2020); the geometric ones (field of view, aspect crops,
a car's bonnet) change what a pixel sees, and their labels move with the image. Pixels a shift
invents (padding, the bonnet) are void, so that they are never scored. numpy and Pillow only.

Training augmentation (``sis.data.augment``) does not use these functions: the benchmark is the
yardstick, and a model trained on its exact corruptions would be measured on its training data.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

SEVERITIES = (1, 2, 3)


class ShiftError(ValueError):
    """An unknown shift or severity; the message lists the valid ones."""


@dataclass(frozen=True)
class Shift:
    name: str
    what: str                   # in words, for tables and --help
    params: tuple               # one parameter per severity (1, 2, 3)
    apply: Callable             # (rgb, label, param, rng, void) -> (rgb, label)
    geometric: bool = False     # moves pixels (the label moves too), rather than changing their colour


def _f(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
    return (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def _exposure(rgb, label, gain, rng, void):
    return _u8(_f(rgb) * gain), label


def _contrast(rgb, label, c, rng, void):
    x = _f(rgb)
    return _u8((x - x.mean()) * c + x.mean()), label


def _gamma(rgb, label, g, rng, void):
    return _u8(_f(rgb) ** g), label


def white_balanced(x, gains):
    """``x`` (floats in 0-1; a numpy array or a torch tensor) with per-channel ``gains`` (shaped to broadcast
    over its channel axis), its mean brightness put back as a camera's auto exposure would: the one
    white-balance formula of the shift benchmark and the photometric augmentation."""
    y = x * gains
    return y * (float(x.mean()) / max(float(y.mean()), 1e-6))


def _white_balance(rgb, label, k, rng, void):
    """Warm (tungsten) or cool (shade), drawn per frame."""
    gains = np.array([1 + k, 1.0, 1 - k] if rng.integers(2) == 0 else [1 - k, 1.0, 1 + k], np.float32)
    return _u8(white_balanced(_f(rgb), gains)), label


def _saturation(rgb, label, s, rng, void):
    x = _f(rgb)
    g = _gray(x)
    return _u8(g + (x - g) * s), label


def _blur(rgb, label, sigma, rng, void):
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma))), label


def _noise(rgb, label, sigma, rng, void):
    """Sensor noise: shot noise (grows with the signal) plus read noise, ``sigma`` in 8-bit levels."""
    x = _f(rgb)
    shot = rng.standard_normal(x.shape).astype(np.float32) * np.sqrt(np.maximum(x, 0.0)) * (sigma / 255.0) * 1.5
    read = rng.standard_normal(x.shape).astype(np.float32) * (sigma / 255.0) * 0.5
    return _u8(x + shot + read), label


def _jpeg(rgb, label, quality, rng, void):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")), label


def _resize_pair(rgb, label, size):
    h, w = size
    return (np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR)),
            np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST)))


def _field_of_view(rgb, label, f, rng, void):
    """Another lens at the same frame size: f > 1 zooms in (the centre 1/f of the frame, enlarged);
    f < 1 zooms out (the frame shrunk by f, mirrored outwards to fill; the mirrored pixels are void)."""
    h, w = label.shape
    if f >= 1:
        ch, cw = round(h / f), round(w / f)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return _resize_pair(rgb[y0:y0 + ch, x0:x0 + cw], label[y0:y0 + ch, x0:x0 + cw], (h, w))
    sh, sw = max(1, round(h * f)), max(1, round(w * f))
    small, lab = _resize_pair(rgb, label, (sh, sw))
    top, left = (h - sh) // 2, (w - sw) // 2
    pad = ((top, h - sh - top), (left, w - sw - left))
    out = np.pad(small, pad + ((0, 0),), mode="symmetric")
    lab = np.pad(lab, pad, mode="constant", constant_values=void)
    return out, lab


def _aspect(rgb, label, ratio, rng, void):
    """A crop of another aspect (width / height) at the frame's own resolution: wide ones keep the
    full width (a dashcam's strip), tall ones the full height (a phone held upright)."""
    h, w = label.shape
    if ratio >= w / h:
        ch = max(1, round(w / ratio))
        y0 = (h - ch) // 2
        return rgb[y0:y0 + ch], label[y0:y0 + ch]
    cw = max(1, round(h * ratio))
    x0 = (w - cw) // 2
    return rgb[:, x0:x0 + cw], label[:, x0:x0 + cw]


def _bonnet(rgb, label, share, rng, void):
    """A car's bonnet across the bottom ``share`` of the frame: a dark, curved, glossy shape with the
    sky's colour reflected in it; its pixels are void (as Cityscapes' 'ego vehicle')."""
    h, w = label.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - w / 2) / (w / 2)
    edge = h * (1 - share) + (h * share * 0.35) * u ** 2  # higher in the middle, falling to the sides
    mask = yy >= edge
    sky = rgb[: max(1, h // 6)].reshape(-1, 3).mean(0) / 255.0
    depth = np.clip((yy - edge) / max(h * share, 1.0), 0, 1)[..., None]
    tone = np.array([0.16, 0.17, 0.19], np.float32) + 0.35 * sky * np.exp(-6 * depth) * (1 - 0.5 * np.abs(u))[..., None]
    out = np.where(mask[..., None], _u8(np.broadcast_to(tone, rgb.shape)), rgb)
    return out, np.where(mask, void, label).astype(np.uint8)


def _dusk(rgb, label, k, rng, void):
    """Evening light: darker (the camera's gain turned up, so noisier), bluer and less saturated."""
    x = _f(rgb)
    g = _gray(x)
    x = g + (x - g) * (1 - 0.5 * k)
    x = x * (1 - 0.75 * k) * np.array([0.85, 0.95, 1.15], np.float32) ** k
    x = x + rng.standard_normal(x.shape).astype(np.float32) * (0.012 + 0.03 * k) * np.sqrt(np.maximum(x, 0.0) + 0.02)
    return _u8(x), label


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    Shift("exposure", "overexposed: a gain of 1.4 / 1.8 / 2.3, clipped", (1.4, 1.8, 2.3), _exposure),
    Shift("contrast", "flat: contrast to 0.6 / 0.4 / 0.25 of the original", (0.6, 0.4, 0.25), _contrast),
    Shift("gamma", "dark midtones: gamma 1.5 / 2.0 / 2.6", (1.5, 2.0, 2.6), _gamma),
    Shift("white_balance", "warm or cool cast: channel gains +-0.15 / 0.3 / 0.45", (0.15, 0.3, 0.45), _white_balance),
    Shift("saturation", "a phone's colours: saturation x1.5 / 2.0 / 2.6", (1.5, 2.0, 2.6), _saturation),
    Shift("blur", "defocus or shake: Gaussian blur of 1 / 2 / 3.5 px", (1.0, 2.0, 3.5), _blur),
    Shift("noise", "sensor noise: 6 / 12 / 20 levels (shot + read)", (6.0, 12.0, 20.0), _noise),
    Shift("jpeg", "compression: JPEG quality 30 / 15 / 7", (30, 15, 7), _jpeg),
    Shift("dusk", "evening: darker, bluer, noisier at 0.4 / 0.6 / 0.8", (0.4, 0.6, 0.8), _dusk),
    Shift("zoom_in", "a narrower lens: the centre 1/1.25, 1/1.6, 1/2 enlarged", (1.25, 1.6, 2.0), _field_of_view,
          geometric=True),
    Shift("zoom_out", "a wider lens: the frame shrunk to 0.75 / 0.6 / 0.5, mirrored out (void)", (0.75, 0.6, 0.5),
          _field_of_view, geometric=True),
    Shift("aspect", "other frames: a 16:9, a 21:9 strip, a 3:4 upright crop", (16 / 9, 21 / 9, 3 / 4), _aspect,
          geometric=True),
    Shift("bonnet", "a car's bonnet over the bottom 12 / 18 / 25% (void)", (0.12, 0.18, 0.25), _bonnet,
          geometric=True),
)}


def list_shifts() -> list[str]:
    return list(SHIFTS)


def get_shift(name: str) -> Shift:
    if name not in SHIFTS:
        raise ShiftError(f"unknown shift '{name}'; valid shifts: {', '.join(SHIFTS)}")
    return SHIFTS[name]


def parse_shifts(text: str) -> list[str]:
    """'all' or a comma-separated list of shift names -> the names, checked."""
    names = list(SHIFTS) if text.strip() in ("", "all") else [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        get_shift(n)
    return names


def shifted(rgb: np.ndarray, label: np.ndarray, name: str, severity: int, frame: int, seed: int = 0,
            void: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 and (H, W) uint8 -> the pair under shift ``name`` at ``severity`` (1-3). The
    randomness (noise, a warm or cool cast) depends only on (seed, shift, severity, frame)."""
    shift = get_shift(name)
    if severity not in SEVERITIES:
        raise ShiftError(f"severity must be one of {', '.join(map(str, SEVERITIES))}, not {severity}")
    rng = np.random.default_rng([seed, list(SHIFTS).index(name), severity, frame])
    out, lab = shift.apply(np.ascontiguousarray(rgb, np.uint8), np.ascontiguousarray(label, np.uint8),
                           shift.params[severity - 1], rng, void)
    return np.ascontiguousarray(out), np.ascontiguousarray(lab)
