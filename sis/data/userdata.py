"""Datasets that users build from corrected masks, in the SegNet layout the trainer reads.

``data/datasets/<name>/`` holds ``train/<frame>.png`` (the image), ``trainannot/<frame>.png`` (its
class ids) and ``classes.json``. On a server marked as shared (``SIS_SHARED=1``, see ``Access``)
each session has a folder of its own, ``data/sessions/<digest of the session id>/datasets/``, so
that a visitor never sees another visitor's photos; every function takes that folder as ``home``
(default: ``data/datasets``). Every file is written beside its target and renamed into place, and
every frame gets a name of its own, so sessions saving into the same dataset at once lose nothing,
and a reader never sees an image without its label (the label lands first).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
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

from sis import store
from sis.classes import ClassSet
from sis.data.dataset import DatasetError, extract_dataset_zip, list_pairs, load_classes, read_label, read_rgb
from sis.files import atomic_write, remove

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class UserDataset:
    name: str
    root: Path
    frames: tuple[str, ...]  # frame names (file stems), oldest first
    classes: ClassSet


def datasets_dir() -> Path:
    return store.data_dir() / "datasets"


@dataclass(frozen=True)
class Access:
    """Who sees which datasets, and whether a typed server folder may be trained on: one policy for the app.

    ``shared`` (``SIS_SHARED=1``, for a hosted server many visitors use): each session sees only the
    datasets it made. ``server_paths`` (``SIS_SERVER_PATHS=1|0``; default: on unless shared): the
    Fine-tune page accepts a folder path typed by the user (any folder the server can read)."""
    shared: bool
    server_paths: bool

    @classmethod
    def from_env(cls) -> "Access":
        shared = os.environ.get("SIS_SHARED", "") in ("1", "true", "True")
        paths = os.environ.get("SIS_SERVER_PATHS", "")
        return cls(shared, paths in ("1", "true", "True") if paths else not shared)

    def home(self, session: str) -> Path:
        """The datasets folder ``session`` sees."""
        if not self.shared:
            return datasets_dir()
        # a digest: any session id names a folder, and the folder names no session
        return store.data_dir() / "sessions" / hashlib.sha256(session.encode()).hexdigest()[:24] / "datasets"


def _home(home: Path | None) -> Path:
    return Path(home) if home is not None else datasets_dir()


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


def get_dataset(name: str, home: Path | None = None) -> UserDataset:
    root = _home(home) / check_name(name)
    if not root.is_dir():
        raise DatasetError(f"there is no dataset named '{name}'")
    return UserDataset(name, root, _frames(root), load_classes(root))


def list_datasets(home: Path | None = None) -> list[UserDataset]:
    """Every user dataset in ``home``, most recently changed first."""
    folder = _home(home)
    if not folder.is_dir():
        return []
    roots = [p for p in folder.iterdir() if p.is_dir() and NAME.match(p.name)]
    roots.sort(key=lambda p: max((q.stat().st_mtime for q in (p, p / "train") if q.exists())), reverse=True)
    return [UserDataset(p.name, p, _frames(p), load_classes(p)) for p in roots]


def _png(arr: np.ndarray, mode: str | None = None):
    return lambda tmp: Image.fromarray(arr, mode).save(tmp, "PNG")


def save_frame(name: str, image: np.ndarray, labels: np.ndarray, classes: ClassSet, source: str = "",
               home: Path | None = None) -> str:
    """Add one (H, W, 3) uint8 image and its (H, W) uint8 class ids to dataset ``name`` (made if new);
    returns the frame's name. The dataset's classes must be ``classes``."""
    root = _home(home) / check_name(name)
    _check(image, labels, classes, "the frame")
    try:
        return _save(root, name, image, labels, classes, source)
    except FileNotFoundError:  # another session removed the dataset while this frame was written: make it anew
        return _save(root, name, image, labels, classes, source)


def _check(image: np.ndarray, labels: np.ndarray, classes: ClassSet, what: str) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DatasetError(f"{what} is not an (H, W, 3) uint8 image: {image.shape} {image.dtype}")
    if labels.shape != image.shape[:2]:
        raise DatasetError(f"{what}: the label is {labels.shape[1]}x{labels.shape[0]} but the image is "
                           f"{image.shape[1]}x{image.shape[0]}")
    bad = np.unique(labels[labels >= classes.num_classes])
    bad = bad[bad != (classes.void if classes.void is not None else -1)]
    if bad.size:
        raise DatasetError(f"{what}: the label holds class id {int(bad[0])}, outside 0..{classes.num_classes - 1}")


def _save(root: Path, name: str, image: np.ndarray, labels: np.ndarray, classes: ClassSet, source: str) -> str:
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


def remove_frame(name: str, frame: str, home: Path | None = None) -> None:
    """Delete one frame (image first, so that no image is ever left without its label)."""
    ds = get_dataset(name, home)
    remove(_image(ds, frame))
    remove(ds.root / "trainannot" / f"{frame}.png")


def read_frame(name: str, frame: str, home: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8, labels (H, W) uint8) of one frame."""
    ds = get_dataset(name, home)
    return read_rgb(_image(ds, frame)), read_label(ds.root / "trainannot" / f"{frame}.png")


def to_zip(name: str, home: Path | None = None) -> bytes:
    """The dataset as a zip in the SegNet layout (``<name>/train/``, ``<name>/trainannot/``, classes.json)."""
    ds = get_dataset(name, home)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # PNGs are compressed already
        for img, lbl in list_pairs(ds.root, "train") if ds.frames else []:
            z.write(img, f"{name}/train/{img.name}")
            z.write(lbl, f"{name}/trainannot/{lbl.name}")
        if (ds.root / "classes.json").exists():
            z.write(ds.root / "classes.json", f"{name}/classes.json")
    return buf.getvalue()


def import_zip(data: bytes, name: str, home: Path | None = None) -> UserDataset:
    """Add the train frames of a SegNet-layout zip (one this module wrote, or any) to dataset ``name``."""
    check_name(name)
    _home(home).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=_home(home), prefix=".import-") as tmp:
        root = extract_dataset_zip(data, Path(tmp))
        classes = load_classes(root)
        pairs = list_pairs(root, "train")
        for img, lbl in pairs:  # every frame checked before the first is added: a bad zip adds nothing
            _check(read_rgb(img), read_label(lbl), classes, f"train/{img.name}")
        for img, lbl in pairs:
            save_frame(name, read_rgb(img), read_label(lbl), classes, source=img.stem, home=home)
    return get_dataset(name, home)


def delete_dataset(name: str, home: Path | None = None) -> None:
    ds = get_dataset(name, home)
    trash = ds.root.with_name(f".deleted-{ds.name}-{uuid.uuid4().hex[:6]}")
    ds.root.rename(trash)  # one rename: a concurrent reader sees the whole dataset or none
    shutil.rmtree(trash, ignore_errors=True)
