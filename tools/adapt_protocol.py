"""The correct-and-adapt protocol, with ground truth standing in for a user's corrections.

Five frames of CamVid's val clip (0016E5; every 20th in name order) become a user dataset
(train/ + trainannot/ only); each shipped model is fine-tuned on them with the Fine-tune page's
defaults (its recipe's augmentation, batch 4, lr 2e-4, the page's step count), with replay of
CamVid train (half of each batch) and without. Scored (PyTorch fp32, full frames):

- near: the val frames at least --gap frames away from every picked frame (the rest of the street);
- other: the CamVid train frames of the other sequences that the replay never drew (forgetting).

``--shift dusk:3`` makes the street a new one: the five frames and the near frames are seen through a
photometric shift of the benchmark (``sis.data.shifts``), as a user's own camera would show them;
``other`` stays clean CamVid. ``--recipes`` picks what is compared (see RECIPES).

    python tools/adapt_protocol.py --camvid ../shared/camvid --out /tmp/adapt [--models a,b] [--steps 20]
        [--shift NAME:SEVERITY] [--recipes replay,plain] [--json]

Runs are kept in --out and skipped when their model is already there (a stopped run resumes).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sis import zoo  # noqa: E402
from sis.data.dataset import Frames, list_pairs, load_classes, load_split, spread  # noqa: E402

SHIPPED = ("pspnet-resnet18", "pspnet-vgg11_bn", "unet-resnet18", "unet-vgg11_bn")
# what a recipe changes over the page's defaults; "replay" is what the Fine-tune page starts with
RECIPES = {
    "replay": {"replay": True},
    "plain": {"replay": False},
    "replay-heldbn": {"replay": True, "freeze_bn": True},
    "replay-x3": {"replay": True, "steps": 3},
    "replay50-x3": {"replay": True, "steps": 3, "replay_ratio": 0.5},  # half, whatever the card's adaptation says
    "replay-heldbn-x3": {"replay": True, "freeze_bn": True, "steps": 3},
    # three replayed frames in four of each batch: more of what it knew, less of the street
    "replay75-x3": {"replay": True, "steps": 3, "replay_ratio": 0.75},
    # the fine-tune's weights alone, whatever the card says; and a quarter of the starting ones averaged in
    "replay75-x3-own": {"replay": True, "steps": 3, "replay_ratio": 0.75, "init_share": 0.0},
    "replay75-x3-keep25": {"replay": True, "steps": 3, "replay_ratio": 0.75, "init_share": 0.25},
    # the shipped model as the teacher on the replayed frames (alpha: its share of their loss)
    "replay-teacher": {"replay": True, "teacher": 0.5},
    "replay-teacher-x3": {"replay": True, "steps": 3, "teacher": 0.5},
    "replay-teacher9-x3": {"replay": True, "steps": 3, "teacher": 0.9},
    "replay-teacher-heldbn-x3": {"replay": True, "steps": 3, "teacher": 0.5, "freeze_bn": True},
    # a gentler rate, or the encoder held: what a model already fine-tuned for robustness forgets less with
    "replay-x3-lr5e-5": {"replay": True, "steps": 3, "lr": 5e-5},
    "replay-teacher9-x3-lr5e-5": {"replay": True, "steps": 3, "teacher": 0.9, "lr": 5e-5},
    "replay-teacher9-x3-frozen": {"replay": True, "steps": 3, "teacher": 0.9, "freeze_encoder": True},
    # without the photometric augmentation a robust model's recipe passes on to its fine-tunes
    "replay-x3-plainphoto": {"replay": True, "steps": 3, "photometric": "none"},
    "replay-teacher9-x3-plainphoto": {"replay": True, "steps": 3, "teacher": 0.9, "photometric": "none"},
    # step 5 first: BatchNorm statistics re-estimated on the whole street, unlabelled, then held while tuning
    "adabn-replay-heldbn": {"replay": True, "freeze_bn": True, "adabn": True},
    "adabn": {"adabn": True, "steps": 0},
}
# each teacher recipe with its answers kept at half the frame's size (a quarter of the memory: what a 1 GB host holds)
RECIPES |= {f"{k}-half": {**r, "teacher_scale": 0.5} for k, r in RECIPES.items() if r.get("teacher")}


def parse_shift(text: str) -> tuple[str, int] | None:
    """'dusk:3' -> ('dusk', 3); '' -> None. Geometric shifts move the labels: not offered here."""
    if not text:
        return None
    from sis.data import shifts
    name, _, sev = text.partition(":")
    if shifts.get_shift(name).geometric:
        raise SystemExit(f"--shift {name} moves pixels; pick a photometric one "
                         f"({', '.join(n for n in shifts.list_shifts() if not shifts.get_shift(n).geometric)})")
    return name, int(sev or 3)


def through(frames: Frames, shift: tuple[str, int] | None, first: int = 0) -> Frames:
    """The frames seen through ``shift`` (frame i drawn as index first + i), or as they are without one."""
    if shift is None:
        return frames
    import numpy as np
    import torch

    from sis.data.shifts import shifted
    images = []
    for i, (img, mask) in enumerate(zip(frames.images, frames.masks)):
        rgb, _ = shifted(img.permute(1, 2, 0).numpy(), mask.numpy().astype(np.uint8), *shift, frame=first + i)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    return Frames(frames.names, images, frames.masks, frames.classes)


def street_folder(user: Path, near: Frames, out: Path) -> Path:
    """The street's frames, unlabelled (the corrected ones and the near ones), as PNGs for ``sis adapt``."""
    from PIL import Image
    out.mkdir(parents=True, exist_ok=True)
    for img in sorted((user / "train").iterdir()):
        shutil.copy(img, out / img.name)
    for name, img in zip(near.names, near.images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(out / f"{name}.png")
    return out


def user_dataset(camvid: Path, out: Path, every: int, n: int, shift: tuple[str, int] | None = None) -> list[int]:
    """The picked val frames (indices in name order) copied into out/train + out/trainannot, through
    ``shift`` where one is given (drawn as their val index, as the near frames are)."""
    import numpy as np
    from PIL import Image

    from sis.data.dataset import read_label, read_rgb
    from sis.data.shifts import shifted
    pairs = list_pairs(camvid, "val")
    picked = list(range(0, len(pairs), every))[:n]
    for sub in ("train", "trainannot"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in picked:
        img, lbl = pairs[i]
        if shift is None:
            shutil.copy(img, out / "train" / img.name)
        else:
            rgb, _ = shifted(read_rgb(img), np.asarray(read_label(lbl), np.uint8), *shift, frame=i)
            Image.fromarray(rgb).save(out / "train" / f"{img.stem}.png")
        shutil.copy(lbl, out / "trainannot" / lbl.name)
    if (camvid / "classes.json").exists():
        shutil.copy(camvid / "classes.json", out / "classes.json")
    return picked


def replay_names(camvid: Path, limit: int) -> set[str]:
    """The train frames the replay holds (train.load_replay's even spread), by name."""
    names = [img.stem for img, _ in list_pairs(camvid, "train")]
    return {names[i] for i in spread(len(names), limit)}


def score(folder: Path, sets: dict[str, Frames]) -> dict[str, dict]:
    import torch

    from sis.evaluation.evaluate import evaluate
    from sis.zoo.models import load_model
    model, cfg = load_model(folder)
    return {k: evaluate(model, cfg, f, torch.device("cpu"), amp=False, batch_size=4)
            for k, f in sets.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "camvid")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(SHIPPED))
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--gap", type=int, default=4, help="near frames are at least this many frames from a picked one")
    ap.add_argument("--steps", type=int, default=None, help="default: the Fine-tune page's (evaluation.before_after.STEPS)")
    ap.add_argument("--shift", default="", help="a photometric shift NAME:SEVERITY the street is seen through")
    ap.add_argument("--recipes", default="replay,plain", help=f"comma-separated, of {', '.join(RECIPES)}")
    ap.add_argument("--seed", type=int, default=0, help="the fine-tunes' seed (another one measures their spread)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from sis.evaluation.before_after import STEPS
    a.steps = a.steps or STEPS
    shift = parse_shift(a.shift)
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    if unknown := [r for r in recipes if r not in RECIPES]:
        raise SystemExit(f"unknown recipe {', '.join(unknown)}; valid: {', '.join(RECIPES)}")
    from sis.training.config import TrainConfig
    from sis.training.loop import train
    from sis.zoo.card import recipe_defaults
    user = a.out / "user"
    picked = user_dataset(a.camvid, user, a.every, a.frames, shift)
    classes = load_classes(a.camvid)
    val = load_split(a.camvid, "val", None, classes)
    keep = [i for i in range(len(val)) if min(abs(i - p) for p in picked) >= a.gap]
    near = Frames.join([through(val.subset([i]), shift, first=i) for i in keep])
    drawn = replay_names(a.camvid, TrainConfig.replay_limit)
    train_frames = load_split(a.camvid, "train", None, classes)
    other = train_frames.subset([i for i, n in enumerate(train_frames.names)
                                 if not n.startswith(val.names[0].split("_")[0]) and n not in drawn])
    sets = {"near": near, "other": other}
    rows = []
    for name in a.models.split(","):
        base = zoo.shipped_models()[name]
        row = {"model": name, "picked": [val.names[i] for i in picked], "near_frames": len(near),
               "other_frames": len(other), "shift": a.shift or None,
               "shipped": {k: v["miou"] for k, v in score(base, sets).items()}}
        for recipe in recipes:
            r = dict(RECIPES[recipe])
            out = a.out / (f"{name}-{recipe}" + (f"-seed{a.seed}" if a.seed else ""))
            init = base
            if r.get("adabn"):
                from sis.adaptation.unlabeled import adapt_folder
                init = a.out / f"{name}-adabn-init"
                if not (init / "card.json").exists():
                    adapt_folder(base, street_folder(user, near, a.out / "street"), init)
                if r.get("steps") == 0:  # the unlabelled adaptation alone
                    row[recipe] = {"wall_s": None, **{k: v["miou"] for k, v in score(init, sets).items()}}
                    continue
            extra = {k: v for k, v in r.items()
                     if k in ("freeze_bn", "teacher_scale", "freeze_encoder", "lr", "photometric", "replay_ratio",
                              "init_share")}
            if r.get("teacher"):
                extra.update(teacher=str(base), distill_alpha=r["teacher"])
            cfg = TrainConfig(model=name, data=str(user), init=str(init), out=str(out), batch_size=4,
                              max_steps=a.steps * r.get("steps", 1), train_limit=48, val_limit=20, val_every=1,
                              replay=str(a.camvid) if r["replay"] else "", seed=a.seed,
                              **{"lr": 2e-4, **recipe_defaults(str(base)), **extra})  # the base card: its adaptation too
            wall = None
            if not (out / "card.json").exists() or json.loads((out / "card.json").read_text()).get("status") != "done":
                t0 = time.perf_counter()
                train(cfg, log=lambda m: None)
                wall = time.perf_counter() - t0
            scores = score(out, sets)
            row[recipe] = {"wall_s": wall, **{k: v["miou"] for k, v in scores.items()}}
        rows.append(row)
        if not a.json:
            s = row["shipped"]
            print(f"{name}: near {100 * s['near']:.2f} other {100 * s['other']:.2f}", flush=True)
            for k in recipes:
                r = row[k]
                took = "kept from an earlier run" if r["wall_s"] is None else f"{r['wall_s']:.0f} s"
                print(f"  {k:14} near {100 * r['near']:.2f} ({100 * (r['near'] - s['near']):+.2f})  other "
                      f"{100 * r['other']:.2f} ({100 * (r['other'] - s['other']):+.2f})  training {took}", flush=True)
    from sis.zoo.runtime import host_info
    if a.json:
        print(json.dumps({"host": host_info(), "steps": a.steps, "shift": a.shift or None, "seed": a.seed, "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
