"""Val mIoU and latency of the accurate modes: every shipped model with no augmentation, flip, and
multi-scale + flip, and the ensembles of the four and of the best two, on all val frames.

    python tools/accuracy_modes.py --data ../shared/camvid [--engine onnxruntime-int8] [--out FILE.json]

Each model's class probabilities for a mode come from ``AccurateEngine(...).probabilities`` (the
code the app and the CLI run); an ensemble's are the mean of its members' (what AccurateEngine
computes with equal weights), so every frame is run once per model and mode. Latency: ``bench_engine``
(predict on a 360x480 CamVid frame, median of 5) of each model and mode, and of the ensembles, on
``--engine`` (default: each model's engine here). Prints a table; ``--out`` writes the JSON.
``--write-cards`` stores each model's figures in its card (``accurate``) and the ensembles' in
``weights/ensembles.json``; ``--load FILE`` does that (and the table) from a result already measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sis import engines, metrics, zoo  # noqa: E402
from sis.data.dataset import load_split  # noqa: E402
from sis.host import cpu_model  # noqa: E402
from sis.bench import bench_engine  # noqa: E402

MODES = {"none": engines.TTA.from_mode("none"), "flip": engines.TTA.from_mode("flip"),
         "ms": engines.TTA.from_mode("ms")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "camvid"))
    ap.add_argument("--engine", default=None, help="engine for every model (default: each one's engine here)")
    ap.add_argument("--limit", type=int, help="first N val frames only")
    ap.add_argument("--repeats", type=int, default=5, help="timed predicts per latency figure")
    ap.add_argument("--out")
    ap.add_argument("--load", help="a JSON this tool wrote: print and store it instead of measuring")
    ap.add_argument("--write-cards", action="store_true")
    a = ap.parse_args()
    out = json.loads(Path(a.load).read_text()) if a.load else measure(a)
    report(out)
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    if a.write_cards:
        write_cards(out, a)


def measure(a) -> dict:
    shipped = zoo.shipped_models()
    names = list(shipped)
    cards = {n: zoo.read_card(f) for n, f in shipped.items()}
    best2 = sorted(names, key=lambda n: -(cards[n].val_miou or 0))[:2]
    groups = {n: [n] for n in names} | {"ensemble of 4": names, "ensemble of best 2": best2}
    members = {n: engines.load_engine(f, a.engine) for n, f in shipped.items()}
    cfg = members[names[0]].cfg
    classes = cfg.class_set
    frames = load_split(a.data, "val", a.limit, classes)
    cms = {(g, m): np.zeros((classes.num_classes,) * 2, np.int64) for g in groups for m in MODES}
    t0 = time.time()
    for i, (img, mask) in enumerate(zip(frames.images, frames.masks)):
        x = img.numpy()[None]
        probs = {(n, m): engines.AccurateEngine([members[n]], tta).probabilities(x)[0]
                 for n in names for m, tta in MODES.items()}
        for g, ms in groups.items():
            for m in MODES:
                p = np.mean([probs[(n, m)] for n in ms], axis=0)
                cms[(g, m)] += metrics.confusion_matrix(p.argmax(0), mask.numpy(), classes.num_classes, classes.void)
        print(f"\r{i + 1}/{len(frames)} frames, {time.time() - t0:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    out = {"cpu": cpu_model(), "frames": len(frames), "engine": a.engine or "each model's engine here",
           "scales": list(MODES["ms"].scales), "best2": best2, "results": {}}
    for g, ms in groups.items():
        for m, tta in MODES.items():
            s = metrics.summarize(cms[(g, m)], classes.names)
            eng = engines.AccurateEngine([members[n] for n in ms], tta)
            lat = bench_engine(eng, tuple(cfg.base_size), warmup=1, repeats=a.repeats)
            out["results"][f"{g}|{m}"] = {"group": g, "mode": m, "miou": s["miou"], "pixel_acc": s["pixel_acc"],
                                          "per_class_iou": s["per_class_iou"], "median_ms": lat["median_ms"],
                                          "engine": eng.name}
    for g in groups:
        base = out["results"][f"{g}|none"]
        for m in MODES:
            r = out["results"][f"{g}|{m}"]
            r["miou_gain"] = 100 * (r["miou"] - base["miou"])
            r["latency_x"] = r["median_ms"] / base["median_ms"]
    return out


def report(out: dict) -> None:
    thin = ("Pole", "SignSymbol", "Pedestrian", "Bicyclist")
    print(f"| model | mode | val mIoU | gain | {' | '.join(thin)} | ms | x |")
    print("|---|---|---|---|" + "---|" * len(thin) + "---|---|")
    for r in out["results"].values():
        print(f"| {r['group']} | {r['mode']} | {100 * r['miou']:.2f} | {r['miou_gain']:+.2f} | "
              + " | ".join(f"{100 * (r['per_class_iou'][c] or 0):.1f}" for c in thin)
              + f" | {r['median_ms']:.0f} | {r['latency_x']:.1f} |")
    print(f"{out['frames']} val frames, {out['cpu']}, engine: {out['engine']}")


def write_cards(out: dict, a) -> None:
    """Each shipped model's modes into its card; the ensembles, and whether each beats its best member
    in the same mode, into weights/ensembles.json (the app offers only those that do)."""
    from sis.files import atomic_write
    command = f"python tools/accuracy_modes.py --data {a.data}" + (f" --engine {a.engine}" if a.engine else "")
    meta = {"scales": out["scales"], "frames": out["frames"], "cpu": out["cpu"], "engine": out["engine"],
            "command": command}
    groups = {}
    for r in out["results"].values():
        groups.setdefault(r["group"], {})[r["mode"]] = {k: r[k] for k in ("miou", "pixel_acc", "per_class_iou",
                                                                           "median_ms", "latency_x", "engine")}
    shipped = zoo.shipped_models()
    for name, folder in shipped.items():
        zoo.update_card(folder, accurate=dict(meta, modes=groups[name]))
    members = {"ensemble of 4": list(shipped), "ensemble of best 2": out["best2"]}
    ens = {}
    for g, ms in members.items():
        ens[g] = dict(members=ms, modes=groups[g])
        for m, r in groups[g].items():
            best = max(ms, key=lambda n: groups[n][m]["miou"])
            r["best_member"], r["best_member_miou"] = best, groups[best][m]["miou"]
            r["beats_best_member"] = r["miou"] > groups[best][m]["miou"]
    atomic_write(zoo.WEIGHTS_DIR / "ensembles.json",
                 lambda p: p.write_text(json.dumps(dict(meta, ensembles=ens), indent=1)))


if __name__ == "__main__":
    main()
