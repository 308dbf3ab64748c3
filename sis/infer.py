"""Inference: any image Pillow reads -> label map + confidence -> coloured mask / overlay.

The model works at about its training resolution: an image is resized (aspect kept) to the
pixel count of ``cfg.base_size``, run on an engine (``sis.engines``: padding to the stride and
normalising happen there) and its answer mapped back to the original size. numpy and Pillow
only: serving on a graph engine never imports torch.
"""
from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)


class ImageError(ValueError):
    """An image a user gave cannot be used; the message says why."""


@dataclass
class LoadedImage:
    image: Image.Image  # RGB, EXIF orientation applied
    notes: list[str]    # what was converted, in words (e.g. "alpha composited on white")
    original_mode: str


def load_image(source: str | Path | bytes | BinaryIO, max_pixels: int = MAX_PIXELS,
               background: str = "white", name: str | None = None) -> LoadedImage:
    """Open, check and convert any image to RGB.

    - the pixel count is checked from the header, before decoding;
    - EXIF orientation applied (broken EXIF ignored); animated/multi-page: frame 0;
    - 16-bit and 32-bit modes are scaled to 8 bits (not clipped); alpha is
      composited on ``background`` ('white' or 'black'); CMYK, P, 1, L converted.
    """
    label = name or (str(source) if isinstance(source, (str, Path)) else "the upload")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ImageError(f"{label} is not an image format Pillow can read") from None
        raise ImageError(f"{label} is too large to open safely (over {max_pixels / 1e6:.0f} MP); downscale it first") from None
    except OSError as e:
        raise ImageError(f"{label} is truncated or corrupt ({e})") from None
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(f"{label} is {w}x{h} = {w * h / 1e6:.0f} MP, above the "
                         f"{max_pixels / 1e6:.0f} MP limit; downscale it first")
    if w == 0 or h == 0:
        raise ImageError(f"{label} has no pixels ({w}x{h})")
    notes: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        notes.append(f"first of {im.n_frames} frames used")
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{label} is truncated or corrupt ({e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on corrupt EXIF; we note it instead
            orientation = im.getexif().get(0x0112, 1)
        if orientation in range(2, 9):
            im = ImageOps.exif_transpose(im)
            notes.append(f"EXIF orientation {orientation} applied")
    except Exception:  # broken EXIF must not lose the image
        notes.append("broken EXIF ignored")
    mode = im.mode
    return LoadedImage(_to_rgb(im, background, notes), notes, mode)


def _to_rgb(im: Image.Image, background: str, notes: list[str]) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255 and arr.max() <= 65535
                                       and arr.min(initial=0) >= 0):
            arr, how = arr / 257.0, "16-bit scaled to 8-bit"
        elif mode == "F" and arr.min(initial=0) >= 0 and arr.max(initial=0) <= 1.0:
            arr, how = arr * 255.0, "float [0,1] scaled to 8-bit"
        elif arr.min(initial=0) >= 0 and arr.max(initial=0) <= 255:
            how = f"{mode} values already in 0..255"
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr, how = (arr - lo) / max(hi - lo, 1e-12) * 255.0, f"{mode} range {lo:g}..{hi:g} stretched to 8-bit"
        notes.append(how)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        if im.mode == "RGB":
            return im
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if background == "white" else (0, 0, 0, 255))
        notes.append(f"alpha composited on {background}")
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    return im.convert("RGB")


@dataclass
class Prediction:
    labels: np.ndarray      # (H, W) uint8 class ids at the original size
    confidence: np.ndarray  # (H, W) float32 max softmax probability
    ms: float               # resize + engine + softmax + resize back, milliseconds (a graph build excluded)
    work_size: tuple[int, int]


def work_size(h: int, w: int, base: tuple[int, int]) -> tuple[int, int]:
    """(h, w) with the pixel count of ``base`` and the aspect of the image."""
    f = (base[0] * base[1] / (h * w)) ** 0.5
    return max(1, round(h * f)), max(1, round(w * f))


def labels_and_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(C, H, W) logits -> (H, W) uint8 argmax and (H, W) float32 max softmax probability."""
    top = logits.max(0)
    # the top class's softmax is 1 / sum(exp(l - l_top)): no (C, H, W) probability array is kept
    conf = 1.0 / np.exp(logits - top).sum(0)
    return logits.argmax(0).astype(np.uint8), conf.astype(np.float32)


def resize_rgb(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> ``size`` (h, w), bilinear (Pillow filters over the whole footprint when shrinking)."""
    if arr.shape[:2] == tuple(size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR))


def predict(engine, image: Image.Image | np.ndarray) -> Prediction:
    """Segment one RGB image with an ``engines`` engine: resized (aspect kept) to the model's pixel
    count, logits, argmax and confidence, mapped back to the image's size. numpy and Pillow only."""
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, np.uint8)
    h, w = arr.shape[:2]
    wh, ww = work_size(h, w, tuple(engine.cfg.base_size))
    engine.prepare((wh, ww))  # a new size builds its graph once: not part of the model's time
    t0 = time.perf_counter()
    x = resize_rgb(arr, (wh, ww))
    logits = engine(np.ascontiguousarray(x.transpose(2, 0, 1))[None])[0]
    labels, conf = labels_and_confidence(logits)
    if (wh, ww) != (h, w):
        labels = np.asarray(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
        conf = np.asarray(Image.fromarray(conf, "F").resize((w, h), Image.BILINEAR))
    ms = (time.perf_counter() - t0) * 1000
    return Prediction(labels, conf, ms, (wh, ww))


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; palette is ClassSet.palette()."""
    return palette[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            visible: list[int] | None = None) -> np.ndarray:
    """Blend the coloured mask over the image; classes not in ``visible`` are left unpainted."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"opacity must be within 0..1, got {alpha}")
    img = np.ascontiguousarray(image, np.uint8)
    # Pillow blends uint8 in C: a tenth of the time of float numpy on a 720p video frame
    out = np.asarray(Image.blend(Image.fromarray(img), Image.fromarray(colorize(labels, palette)), alpha))
    return out if visible is None else np.where(np.isin(labels, visible)[..., None], out, img)


def class_share(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) fraction of pixels per class id; sums to 1 over the labelled pixels."""
    counts = np.bincount(labels.reshape(-1), minlength=num_classes)[:num_classes].astype(np.float64)
    return counts / max(counts.sum(), 1)


def error_map(labels: np.ndarray, truth: np.ndarray, void: int | None) -> np.ndarray:
    """(H, W, 3) uint8: green correct, red wrong, black void."""
    out = np.zeros(labels.shape + (3,), np.uint8)
    valid = truth != void if void is not None else np.ones(truth.shape, bool)
    out[valid & (labels == truth)] = (40, 170, 60)
    out[valid & (labels != truth)] = (220, 40, 40)
    return out


def label_png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def rgb_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "PNG")
    return buf.getvalue()


def iter_images(inputs: list[str | Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given."""
    from .data import IMAGE_EXTS
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        else:
            out.append(p)
    return out
