"""A new-drive yardstick from CamVid itself: the train split without one of its drives, and that drive
as a test split, so that a model trained on the rest meets "the same city, a new drive".

CamVid's train split holds three drives (0001TP, 62 frames at dusk; 0006R0, 101; 0016E5, 204) and
val is 0016E5 again: val is familiar ground for every model trained on train. A model trained on the
folder this writes, with the shipped recipe, has never seen the held-out drive; its figures there
stand for what a user in the model's own city uploads (docs/real_streets.md).

    python tools/new_drive.py ../shared/camvid --drive 0006R0 --out data/camvid-new-0006R0
    python -m sis train --model unet-vgg11_bn --data data/camvid-new-0006R0 ...   # the shipped recipe
    python -m sis eval --model RUN --data data/camvid-new-0006R0 --split test     # the new drive

The folder holds links to the original files (copies where the file system has no links):
train/ trainannot/ (the other drives), val/ valannot/ (CamVid val, unchanged), test/ testannot/
(the held-out drive). It is written beside and renamed into place, so a run stopped half way leaves
nothing behind and a second writer finds the folder whole or absent.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sis.data.dataset import DatasetError, list_pairs  # noqa: E402


def drive_of(path: Path) -> str:
    """CamVid names a frame DRIVE_FRAME (0006R0_f02370.png): its drive."""
    return path.stem.split("_")[0]


def drives(root: Path, split: str = "train") -> Counter:
    """Frames per drive in ``split`` of the CamVid folder ``root``."""
    return Counter(drive_of(img) for img, _ in list_pairs(root, split))


def _link(src: Path, dest: Path) -> None:
    try:
        os.symlink(src.resolve(), dest)
    except OSError:  # a file system without links: a copy
        shutil.copyfile(src, dest)


def hold_out(root: Path, drive: str, out: Path) -> tuple[int, int]:
    """Write the yardstick folder ``out``; returns (training frames, held-out frames)."""
    counts = drives(root)
    if drive not in counts:
        raise DatasetError(f"CamVid's train split in {root} has no drive '{drive}'; its drives are "
                           + ", ".join(f"{d} ({n} frames)" for d, n in sorted(counts.items())))
    if len(counts) < 2:
        raise DatasetError(f"{root}'s train split holds one drive only: nothing is left to train on without it")
    if out.exists():
        raise DatasetError(f"{out} is already there: remove it or give another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split in ("train", "val", "test"):
            (tmp / split).mkdir()
            (tmp / f"{split}annot").mkdir()
        for img, lbl in list_pairs(root, "train"):
            split = "test" if drive_of(img) == drive else "train"
            _link(img, tmp / split / img.name)
            _link(lbl, tmp / f"{split}annot" / lbl.name)
        for img, lbl in list_pairs(root, "val"):
            _link(img, tmp / "val" / img.name)
            _link(lbl, tmp / "valannot" / lbl.name)
        for f in ("classes.json",):
            if (root / f).is_file():
                shutil.copyfile(root / f, tmp / f)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sum(counts.values()) - counts[drive], counts[drive]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("camvid", type=Path, help="a CamVid folder (train/ trainannot/ val/ valannot/)")
    ap.add_argument("--drive", default="0006R0", help="the drive to hold out (default %(default)s)")
    ap.add_argument("--out", type=Path, required=True, help="the yardstick folder to write")
    a = ap.parse_args()
    try:
        n_train, n_test = hold_out(a.camvid, a.drive, a.out)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{a.out}: {n_train} training frames without {a.drive}, CamVid val, and {n_test} frames of {a.drive} "
          f"as test/")
