"""Val figures of several runs of one recipe (seeds), evaluated alike, and their spread.

    python tools/seed_spread.py weights/pspnet-resnet18 runs/gpu/pspnet-resnet18-seed1 \\
        runs/gpu/pspnet-resnet18-seed2 --data ../shared/camvid [--out FILE.json]

Each folder is evaluated as `python -m sis eval --split val` does (fp32, the original PNGs), so a
shipped model and fresh runs compare on equal terms. Prints each run's mIoU, then the mean, the
sample standard deviation and the range: what one point of mIoU means between two runs here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def spread(values: list[float]) -> dict:
    """mean, sample sd (None for one value), min, max and range of ``values``."""
    return {"n": len(values), "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "range": max(values) - min(values)}


def evaluate_runs(folders: list[Path], data: str) -> list[dict]:
    from sis import zoo
    from sis.data.dataset import load_split
    from sis.evaluation.evaluate import evaluate_folder
    frames = load_split(data, "val", classes=zoo.read_config(folders[0]).class_set)  # runs of one recipe: one read
    rows = []
    for f in folders:
        res, card = evaluate_folder(f, frames), zoo.read_card(f)
        rows.append({"run": str(f), "seed": (zoo.card_as_written(f).get("recipe") or {}).get("seed"), "epochs": card.epochs_run,
                     "miou": res["miou"], "per_class_iou": res["per_class_iou"]})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--data", default="../shared/camvid")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    rows = evaluate_runs(a.runs, a.data)
    for r in rows:
        print(f"{r['run']:50} seed {r['seed']}  epochs {r['epochs']}  val mIoU {100 * r['miou']:.2f}")
    s = spread([100 * r["miou"] for r in rows])
    print(f"mean {s['mean']:.2f}" + (f"  sd {s['sd']:.2f}" if s["sd"] is not None else "") +
          f"  range {s['min']:.2f}-{s['max']:.2f} ({s['range']:.2f})")
    if a.out:
        a.out.write_text(json.dumps({"runs": rows, "spread_points": s, "data": a.data}, indent=1))
