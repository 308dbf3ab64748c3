"""Images users give: any file Pillow reads, checked and converted to RGB before decoding can hurt."""
from __future__ import annotations

import io
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
        if not source:
            raise ImageError(f"{label} is empty (0 bytes)")
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)) and Path(source).is_file() and Path(source).stat().st_size == 0:
        raise ImageError(f"{label} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        if isinstance(e, UnidentifiedImageError):
            raise ImageError(f"{label} is not a picture this app can open (it opens JPEG, PNG, WebP, BMP, TIFF "
                             f"and GIF)") from None
        raise ImageError(f"{label} is too large to open safely (over {max_pixels / 1e6:.0f} MP); downscale it first") from None
    except OSError:
        raise ImageError(f"{label} is cut short or damaged: it could not be read") from None
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
    except (OSError, SyntaxError, ValueError):
        raise ImageError(f"{label} is cut short or damaged: it could not be read to the end") from None
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


def resize_rgb(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> ``size`` (h, w), bilinear (Pillow filters over the whole footprint when shrinking)."""
    if arr.shape[:2] == tuple(size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.BILINEAR))


def resize_images(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,3,H,W) uint8 -> (N,3,h,w), bilinear (Pillow filters over the footprint when shrinking)."""
    if images.shape[-2:] == tuple(size):
        return images
    return np.ascontiguousarray(np.stack([resize_rgb(im.transpose(1, 2, 0), size).transpose(2, 0, 1)
                                          for im in images]))


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N,C,H,W) float32 -> (N,C,h,w), bilinear per channel (probabilities stay a distribution up to
    rounding: a bilinear resize is a convex combination)."""
    if maps.shape[-2:] == tuple(size):
        return maps
    n, c = maps.shape[:2]
    out = np.empty((n, c, *size), np.float32)
    for i in range(n):
        for k in range(c):
            out[i, k] = np.asarray(Image.fromarray(maps[i, k], "F").resize((size[1], size[0]), Image.BILINEAR))
    return out


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def iter_images(inputs: list[str | Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are kept as given."""
    from sis.data.dataset import IMAGE_EXTS
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        else:
            out.append(p)
    return out
