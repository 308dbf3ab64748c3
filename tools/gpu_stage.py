"""Stage CamVid for a lent GPU machine (the `device` tool sends at most 64 MiB).

The train and val PNGs (119 MB) do not fit, so the frames travel as JPEG at quality 97
without chroma subsampling (51 MiB with the labels, 46 dB PSNR against the PNGs); labels travel
unchanged.
Models trained on the staged copy are evaluated on the original PNGs (tools/ship.py).

    python tools/gpu_stage.py ../shared/camvid .gpu/camvid
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sis.data import list_pairs  # noqa: E402


def stage(src: Path, dest: Path, quality: int = 97) -> int:
    total = 0
    for split in ("train", "val"):
        (dest / split).mkdir(parents=True, exist_ok=True)
        (dest / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for img, lbl in list_pairs(src, split):
            out = dest / split / f"{img.stem}.jpg"
            with Image.open(img) as im:
                im.convert("RGB").save(out, "JPEG", quality=quality, subsampling=0)
            shutil.copyfile(lbl, dest / f"{split}annot" / lbl.name)
            total += out.stat().st_size + lbl.stat().st_size
    return total


if __name__ == "__main__":
    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    print(f"{dest}: {stage(src, dest) / 2**20:.1f} MiB")
