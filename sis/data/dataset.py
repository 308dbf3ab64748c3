"""Datasets in the SegNet CamVid layout, decoded once and augmented on tensors.

Layout (any root folder)::

    root/train/ root/trainannot/ root/val/ root/valannot/ root/test/ root/testannot/
    root/classes.json            optional; CamVid's 11 classes + void if absent

Each image ``split/NAME.ext`` has a label map ``splitannot/NAME.png`` of the same
size holding one class id per pixel (uint8), the void id allowed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from sis.classes import CAMVID, ClassSet

if TYPE_CHECKING:
    import torch

SPLITS = ("train", "val", "test")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


HOLDOUT_MIN = 10  # without a val/ split, a run holds out every HOLDOUT_EVERY-th frame from this many on
HOLDOUT_EVERY = 5


class DatasetError(ValueError):
    """A dataset folder a user pointed at is not usable; the message says why."""


def load_classes(root: Path) -> ClassSet:
    """The dataset's classes.json if present, else CamVid's classes."""
    path = Path(root) / "classes.json"
    if not path.exists():
        return CAMVID
    try:
        return ClassSet.from_json(path)
    except ValueError as e:
        raise DatasetError(f"{path}: {e}") from None


def list_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of one split, sorted by name; raises DatasetError on layout problems."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    img_dir, ann_dir = root / split, root / f"{split}annot"
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise DatasetError(f"{root} has no '{d.name}/' folder (expected the SegNet layout: "
                               f"{split}/ and {split}annot/)")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DatasetError(f"{img_dir} holds no images")
    labels = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
    pairs = []
    for img in images:
        if img.stem not in labels:
            raise DatasetError(f"image {split}/{img.name} has no label {split}annot/{img.stem}.png")
        pairs.append((img, labels[img.stem]))
    return pairs


@dataclass(frozen=True)
class ValidationPlan:
    """How a training run validates: on how many frames (0: it does not), and that in words."""
    frames: int
    sentence: str

    def __str__(self) -> str:
        return self.sentence


def validation_plan(root: Path, n_train: int) -> ValidationPlan:
    """How a training run on ``root`` (with ``n_train`` frames) validates (validation_frames follows it):
    on its val/ split, else on every HOLDOUT_EVERY-th frame from HOLDOUT_MIN frames on, else not at all."""
    root = Path(root)
    if (root / "val").is_dir():
        n = len(list_pairs(root, "val"))
        return ValidationPlan(n, f"on the dataset's val/ split ({n} frames)")
    if n_train < HOLDOUT_MIN:
        return ValidationPlan(0, f"none: the dataset has no val/ split and {n_train} frames, fewer than the "
                                 f"{HOLDOUT_MIN} from which a share is held out")
    held = len(range(HOLDOUT_EVERY - 1, n_train, HOLDOUT_EVERY))
    return ValidationPlan(held, f"on {held} of the dataset's {n_train} frames held out from training (every "
                                f"{HOLDOUT_EVERY}th; the dataset has no val/ split)")


MAX_FRAME_PIXELS = 40_000_000  # a dataset frame above this is refused before it is decoded (a PNG bomb)


def _open(path: Path, what: str) -> Image.Image:
    try:
        im = Image.open(path)
    except Image.DecompressionBombError:
        raise DatasetError(f"{what} {Path(path).name} is far above the {MAX_FRAME_PIXELS / 1e6:.0f} MP a dataset "
                           "frame may have") from None
    if im.width * im.height > MAX_FRAME_PIXELS:
        im.close()
        raise DatasetError(f"{what} {Path(path).name} is {im.width}x{im.height}, above the "
                           f"{MAX_FRAME_PIXELS / 1e6:.0f} MP a dataset frame may have")
    return im


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of a dataset frame."""
    try:
        with _open(path, "image") as im:
            return np.asarray(im.convert("RGB"))
    except DatasetError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from None


def read_label(path: Path) -> np.ndarray:
    """(H, W) uint8 label map; palette PNGs give their indices, not colours."""
    try:
        with _open(path, "label") as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise DatasetError(f"label {path} has mode {im.mode}; expected a single-channel "
                                   f"PNG of class ids")
            arr = np.asarray(im)
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read label {path}: {e}") from None
    if arr.max(initial=0) > 255:
        raise DatasetError(f"label {path} has value {int(arr.max())} > 255")
    return arr.astype(np.uint8)


@dataclass
class Frames:
    """Decoded frames of one split: images [(3,H,W) uint8], masks [(H,W) uint8] (class ids fit a byte: a
    fine-tune holds every frame, and int64 would take eight times the memory; widened per batch)."""
    names: list[str]
    images: list[torch.Tensor]
    masks: list[torch.Tensor]
    classes: ClassSet

    def __len__(self) -> int:
        return len(self.names)

    def subset(self, keep) -> "Frames":
        """The frames at the indices ``keep`` (a list or a range), in that order."""
        return Frames([self.names[i] for i in keep], [self.images[i] for i in keep], [self.masks[i] for i in keep],
                      self.classes)

    @staticmethod
    def join(parts: list["Frames"]) -> "Frames":
        """The frames of ``parts`` one after the other (they share one class list)."""
        return Frames([n for p in parts for n in p.names], [i for p in parts for i in p.images],
                      [m for p in parts for m in p.masks], parts[0].classes)


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, the first and the last included (all ``n`` where ``k >= n``)."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    return [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]


def load_split(root: Path, split: str, limit: int | None = None,
               classes: ClassSet | None = None, evenly: bool = False) -> Frames:
    """Decode a split into memory, checking sizes and label values frame by frame: all of it, or ``limit``
    frames, the first ones or (``evenly``) spread over the split; only those are read."""
    import torch  # frames are tensors for training and evaluation; reading labels needs no torch
    classes = classes or load_classes(root)
    pairs = list_pairs(root, split)
    if limit is not None:
        pairs = [pairs[i] for i in spread(len(pairs), limit)] if evenly else pairs[:limit]
    names, images, masks = [], [], []
    for img_path, lbl_path in pairs:
        img, lbl = read_rgb(img_path), read_label(lbl_path)
        if img.shape[:2] != lbl.shape:
            raise DatasetError(f"size mismatch: {split}/{img_path.name} is {img.shape[1]}x{img.shape[0]} "
                               f"but its label is {lbl.shape[1]}x{lbl.shape[0]}")
        bad = np.unique(lbl[lbl >= classes.num_classes])
        bad = bad[bad != (classes.void if classes.void is not None else -1)]
        if bad.size:
            raise DatasetError(f"label {split}annot/{lbl_path.name} has class id {int(bad[0])} outside "
                               f"0..{classes.num_classes - 1}" +
                               (f" (void is {classes.void})" if classes.void is not None else ""))
        names.append(img_path.stem)
        images.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
        masks.append(torch.from_numpy(lbl))
    return Frames(names, images, masks, classes)


def load_splits(root: Path, splits: tuple[str, ...] | list[str], limit: int | None = None,
                classes: ClassSet | None = None) -> Frames:
    """Several splits decoded as one set of frames (``limit``: the first N of them all); frame names
    keep their split (``val/0016E5_07959``) where more than one split is read."""
    if not splits:
        raise DatasetError("no split to read")
    if len(splits) == 1:
        return load_split(root, splits[0], limit, classes)
    parts = [load_split(root, s, None, classes) for s in splits]
    for s, p in zip(splits, parts):
        p.names = [f"{s}/{n}" for n in p.names]
    frames = Frames.join(parts)
    return frames.subset(range(min(limit, len(frames)))) if limit is not None else frames


def validation_frames(root: Path, train: Frames, limit: int | None, classes) -> tuple[Frames, Frames | None, str]:
    """(train frames, val frames or None, how the run validates in words): the dataset's val/ split
    where it has one, else every HOLDOUT_EVERY-th of its train frames once it has HOLDOUT_MIN, else none."""
    said = validation_plan(root, len(train)).sentence
    if (Path(root) / "val").is_dir():
        val = load_split(root, "val", limit, classes)
        return train, val, said
    n = len(train)
    if n < HOLDOUT_MIN:
        return train, None, said
    held = range(HOLDOUT_EVERY - 1, n, HOLDOUT_EVERY)
    return train.subset([i for i in range(n) if i not in held]), train.subset(held), said


def class_frequencies(frames: Frames) -> torch.Tensor:
    """(C,) pixel count per class over the split (void excluded)."""
    import torch
    c = frames.classes.num_classes
    counts = torch.zeros(c, dtype=torch.float64)
    for m in frames.masks:
        counts += torch.bincount(m[m < c].reshape(-1), minlength=c).double()
    return counts


def class_weights(frames: Frames, mode: str = "none") -> torch.Tensor | None:
    """Loss weights per class: 'none', 'median' (median-frequency balancing) or 'sqrt-median'."""
    if mode == "none":
        return None
    freq = class_frequencies(frames)
    freq = freq / freq.sum()
    present = freq > 0
    w = freq.new_zeros(freq.shape)
    w[present] = freq[present].median() / freq[present]
    if mode == "sqrt-median":
        w = w.sqrt()
    elif mode != "median":
        raise ValueError(f"unknown class weighting '{mode}'; choose none, median or sqrt-median")
    return w.float()


def extract_dataset_zip(data: bytes, dest: Path, max_bytes: int = 500 * 2**20, max_files: int = 5000) -> Path:
    """Unpack an uploaded zip in the SegNet layout into ``dest``; returns the dataset root.

    Refuses archives that are too big when unpacked, hold too many files, or write
    outside ``dest``; checks that a train/ + trainannot/ pair exists inside.
    """
    import io
    import shutil
    import zipfile
    import zlib
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise DatasetError("the upload is not a valid zip file") from None
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > max_files:
        raise DatasetError(f"the zip holds {len(infos)} files, above the {max_files} limit")
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise DatasetError(f"the zip unpacks to {total / 2**20:.0f} MB, above the {max_bytes / 2**20:.0f} MB limit")
    dest = Path(dest).resolve()
    for info in infos:
        target = (dest / info.filename).resolve()
        if not target.is_relative_to(dest):
            raise DatasetError(f"the zip entry {info.filename} points outside the archive")
    try:
        try:
            zf.extractall(dest)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:  # data that does not match its headers
            raise DatasetError(f"the zip is damaged ({e}); nothing was kept") from None
        except NotImplementedError as e:  # a compression method zipfile cannot read (e.g. deflate64)
            raise DatasetError(f"the zip uses a compression this server cannot read ({e}); re-zip it with the "
                               "usual 'deflate' method") from None
        except RuntimeError as e:  # an encrypted entry
            raise DatasetError(f"the zip cannot be read: {e}") from None
        except OSError as e:  # a full disk, a name the file system refuses
            raise DatasetError(f"the zip could not be unpacked here: {e.strerror or e}") from None
        roots = sorted({p.parent for p in dest.rglob("train") if p.is_dir()}, key=lambda p: len(p.parts))
        if not roots:
            raise DatasetError("the zip has no train/ folder (expected the SegNet layout: train/, trainannot/, "
                               "val/, valannot/)")
        root = roots[0]
        if not (root / "trainannot").is_dir():
            raise DatasetError("the zip has images in train/ but no labels (no trainannot/ folder)")
        list_pairs(root, "train")  # every image has its label
    except DatasetError:
        shutil.rmtree(dest, ignore_errors=True)  # a refused zip leaves nothing half-written behind
        raise
    return root
