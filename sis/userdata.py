"""Datasets that users build from corrected masks, in the SegNet layout the trainer reads.

``data/datasets/<name>/`` holds ``train/<frame>.png`` (the image), ``trainannot/<frame>.png`` (its
class ids) and ``classes.json``. Every file is written beside its target and renamed into place,
and every frame gets a name of its own, so sessions saving into the same dataset at once lose
nothing, and a reader never sees an image without its label (the label lands first).
"""
from __future__ import annotations

import io
import json
import re
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import store
from .classes import ClassSet
from .data import DatasetError, extract_dataset_zip, list_pairs, load_classes, read_label, read_rgb
from .files import atomic_write, remove

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class UserDataset:
    name: str
    root: Path
    frames: tuple[str, ...]  # frame names (file stems), oldest first
    classes: ClassSet


def datasets_dir() -> Path:
    return store.data_dir() / "datasets"


def check_name(name: str) -> str:
    """``name`` if it can name a dataset folder, else DatasetError saying what is allowed."""
    if not NAME.match(name or ""):
        raise DatasetError(f"'{name}' cannot name a dataset: use 1-64 letters, digits, '-', '_' or '.', "
                           "starting with a letter or digit")
    return name


def _frames(root: Path) -> tuple[str, ...]:
    try:
        return tuple(img.stem for img, _ in list_pairs(root, "train"))
    except DatasetError:
        return ()


def get_dataset(name: str) -> UserDataset:
    root = datasets_dir() / check_name(name)
    if not root.is_dir():
        raise DatasetError(f"there is no dataset named '{name}'")
    return UserDataset(name, root, _frames(root), load_classes(root))


def list_datasets() -> list[UserDataset]:
    """Every user dataset, most recently changed first."""
    folder = datasets_dir()
    if not folder.is_dir():
        return []
    roots = [p for p in folder.iterdir() if p.is_dir() and NAME.match(p.name)]
    roots.sort(key=lambda p: max((q.stat().st_mtime for q in (p, p / "train") if q.exists())), reverse=True)
    return [UserDataset(p.name, p, _frames(p), load_classes(p)) for p in roots]


def _png(arr: np.ndarray, mode: str | None = None):
    return lambda tmp: Image.fromarray(arr, mode).save(tmp, "PNG")


def save_frame(name: str, image: np.ndarray, labels: np.ndarray, classes: ClassSet, source: str = "") -> str:
    """Add one (H, W, 3) uint8 image and its (H, W) uint8 class ids to dataset ``name`` (made if new);
    returns the frame's name. The dataset's classes must be ``classes``."""
    root = datasets_dir() / check_name(name)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DatasetError(f"a frame is an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise DatasetError(f"the label is {labels.shape[1]}x{labels.shape[0]} but the image is "
                           f"{image.shape[1]}x{image.shape[0]}")
    bad = np.unique(labels[labels >= classes.num_classes])
    bad = bad[bad != (classes.void if classes.void is not None else -1)]
    if bad.size:
        raise DatasetError(f"the label holds class id {int(bad[0])}, outside 0..{classes.num_classes - 1}")
    for sub in ("train", "trainannot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    spec = root / "classes.json"
    if spec.exists():
        if load_classes(root).names != classes.names:
            raise DatasetError(f"dataset '{name}' holds other classes ({', '.join(load_classes(root).names)})")
    else:
        # two sessions may both write it: the same content, renamed into place, so either wins
        atomic_write(spec, lambda tmp: tmp.write_text(json.dumps(classes.to_dict(), indent=1)),
                     tmp=spec.with_name(f"classes.json.{uuid.uuid4().hex}.tmp"))
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(source).stem)[:40].strip("-")
    now = time.time()  # names sort by when they were saved; the random part keeps simultaneous saves apart
    stem = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f"{int(now % 1 * 1e6):06d}-{uuid.uuid4().hex[:4]}" + \
        (f"-{slug}" if slug else "")
    atomic_write(root / "trainannot" / f"{stem}.png", _png(np.ascontiguousarray(labels, np.uint8), "L"))
    atomic_write(root / "train" / f"{stem}.png", _png(np.ascontiguousarray(image)))
    return stem


def _image(ds: UserDataset, frame: str) -> Path:
    """The image file of one frame (its label is trainannot/<frame>.png)."""
    img = next((p for p in (ds.root / "train").iterdir() if p.stem == frame), None)
    if img is None:
        raise DatasetError(f"dataset '{ds.name}' has no frame '{frame}'")
    return img


def remove_frame(name: str, frame: str) -> None:
    """Delete one frame (image first, so that no image is ever left without its label)."""
    ds = get_dataset(name)
    remove(_image(ds, frame))
    remove(ds.root / "trainannot" / f"{frame}.png")


def read_frame(name: str, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, labels (H, W) uint8) of one frame."""
    ds = get_dataset(name)
    return read_rgb(_image(ds, frame)), read_label(ds.root / "trainannot" / f"{frame}.png")


def to_zip(name: str) -> bytes:
    """The dataset as a zip in the SegNet layout (``<name>/train/``, ``<name>/trainannot/``, classes.json)."""
    ds = get_dataset(name)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for img, lbl in list_pairs(ds.root, "train") if ds.frames else []:
            z.write(img, f"{name}/train/{img.name}")
            z.write(lbl, f"{name}/trainannot/{lbl.name}")
        if (ds.root / "classes.json").exists():
            z.write(ds.root / "classes.json", f"{name}/classes.json")
    return buf.getvalue()


def import_zip(data: bytes, name: str) -> UserDataset:
    """Add the train frames of a SegNet-layout zip (one this module wrote, or any) to dataset ``name``."""
    check_name(name)
    datasets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=datasets_dir(), prefix=".import-") as tmp:
        root = extract_dataset_zip(data, Path(tmp))
        classes = load_classes(root)
        for img, lbl in list_pairs(root, "train"):
            image, labels = read_rgb(img), read_label(lbl)
            if image.shape[:2] != labels.shape:
                raise DatasetError(f"size mismatch: train/{img.name} and its label differ in size")
            save_frame(name, image, labels, classes, source=img.stem)
    return get_dataset(name)


def delete_dataset(name: str) -> None:
    ds = get_dataset(name)
    trash = ds.root.with_name(f".deleted-{ds.name}-{uuid.uuid4().hex[:6]}")
    ds.root.rename(trash)  # one rename: a concurrent reader sees the whole dataset or none
    shutil.rmtree(trash, ignore_errors=True)
