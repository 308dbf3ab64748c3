"""Stage CamVid for a lent GPU machine (the `device` tool sends at most 64 MiB).

The train and val PNGs (119 MB) do not fit, so the frames travel as JPEG at quality 97
without chroma subsampling (51 MiB with the labels, 46 dB PSNR against the PNGs); labels travel
unchanged.
Models trained on the staged copy are evaluated on the original PNGs (tools/ship.py).

    python tools/gpu_stage.py ../shared/camvid .gpu/camvid
    python tools/gpu_stage.py ../shared/camvid .gpu/camvid92 --quality 92 --teacher unet-vgg11_bn .teacher

The second form is for distillation (tools/gpu_plans/distill.txt): the teacher's weights (24 MB)
travel too, so the frames go at quality 92 (40 dB PSNR, 31 MiB with the labels).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sis.data.dataset import list_pairs  # noqa: E402


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


def stage_teacher(name: str, dest: Path) -> int:
    """A shipped model's config, weights and card into ``dest``/NAME (a model folder a run can load)."""
    from sis import zoo
    src, out = zoo.resolve(name), dest / name
    out.mkdir(parents=True, exist_ok=True)
    return sum(Path(shutil.copyfile(src / f, out / f)).stat().st_size
               for f in ("config.json", "model.safetensors", "card.json"))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--quality", type=int, default=97)
    ap.add_argument("--teacher", nargs=2, metavar=("MODEL", "FOLDER"), help="also stage this model into FOLDER")
    a = ap.parse_args()
    print(f"{a.dest}: {stage(a.src, a.dest, a.quality) / 2**20:.1f} MiB")
    if a.teacher:
        print(f"{a.teacher[1]}/{a.teacher[0]}: {stage_teacher(a.teacher[0], Path(a.teacher[1])) / 2**20:.1f} MiB")
