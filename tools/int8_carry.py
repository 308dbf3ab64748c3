"""How alike an adapted model's int8 graph labels frames to its eager, against its start's int8 graph.

    python tools/int8_carry.py MODEL --data ../shared/camvid [--shifts clean,dusk,blur] [--severity 3]
                               [--frames 8] [--score-every 4] [--fit-epochs E] [--json OUT]
    python tools/int8_carry.py MODEL --data ../shared/camvid --scale-ranges 0.9,0.8,2,4

For each shift: --frames CamVid val frames spread over the drive, under that shift; MODEL adapted on them
as `sis adapt` does (unlabeled.adapt_folder, with its checks), then given its start's activation ranges
(int8_ranges.json) and scored: each frame's int8 labels against eager fp32's (mIoU, eager as the truth),
for the adapted model and for MODEL, on every frame alone, then pooled over all frames, over fours and
over pairs spaced evenly. This is what `packaging.carry.carried_engines` compares (CHECK_FRAMES frames,
INT8_SLACK of slack; "check" is its verdict on the frames it takes, check_picks); the spread of the fours and pairs is
what sizes them. Then what the check stands for, with labels: both models' eager and int8 mIoU on every
--score-every-th of the other val frames under the same shift (the gate for a shipped int8 graph is its
val mIoU within 0.5 of eager's).

With --scale-ranges, what the check must catch instead: MODEL itself (no adaptation) quantised with its
ranges multiplied by each factor (below 1 clips activations, above 1 coarsens them), its int8 labels'
agreement with eager on the clean frames the check takes, and its int8 mIoU on the labelled ones.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sis import zoo  # noqa: E402
from sis.data.shifts import parse_shifts, shifted  # noqa: E402
from sis.engines import REFERENCE, load_engine  # noqa: E402
from sis.engines.int8 import RANGES_FILE  # noqa: E402
from sis.host import cpu_model  # noqa: E402
from sis.packaging.carry import INT8, INT8_SLACK, agreement, agreement_matrices, alike, check_picks  # noqa: E402
from sis.evaluation.robustness import CLEAN, score_set, val_frames  # noqa: E402
from sis.adaptation.unlabeled import MIN_FRAMES, adapt_folder, seen  # noqa: E402
from sis.zoo import models  # noqa: E402


def groups(count: int, size: int) -> list[list[int]]:
    """``count`` frames in groups of ``size``, each spread evenly over them (8 in pairs: 0 and 4, 1 and 5, ...)."""
    step = count // size
    return [list(range(i, count, step))[:size] for i in range(step)] if 0 < size <= count else []


def scaled_ranges(start: Path, factor: float, dst: Path) -> Path:
    """A copy of the model in ``start`` whose int8 ranges are ``factor`` times its own."""
    shutil.copytree(start, dst, ignore=shutil.ignore_patterns(RANGES_FILE, "checkpoint"))
    ranges = json.loads((start / RANGES_FILE).read_text())
    for tensor in ranges["data"].values():
        for end in ("lowest", "highest"):
            tensor[end]["data"] = [v * factor for v in tensor[end]["data"]]
    (dst / RANGES_FILE).write_text(json.dumps(ranges))
    return dst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a model name or folder with int8_ranges.json")
    ap.add_argument("--data", required=True, help="CamVid root with val/ and val_labels/")
    ap.add_argument("--shifts", default="clean,dusk,white_balance,exposure,jpeg,blur")
    ap.add_argument("--severity", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8, help="val frames adapted on and scored, spread over the drive")
    ap.add_argument("--score-every", type=int, default=4, help="score with labels on every N-th other val frame")
    ap.add_argument("--fit-epochs", type=float, help="passes fitting the BatchNorm layers to the frames, as `sis adapt "
                    "--fit-epochs` (default: its default on this host; 0: the statistics alone)")
    ap.add_argument("--scale-ranges", help="factors: MODEL's own int8 graph with its ranges scaled, no adaptation")
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args(argv)
    start = zoo.resolve(a.model)
    if not (start / RANGES_FILE).is_file():
        ap.error(f"{start} has no {RANGES_FILE}: nothing to carry")
    smodel, scfg = models.load_model(start)
    val = val_frames(Path(a.data))
    at = sorted({round(i * (len(val) - 1) / max(a.frames - 1, 1)) for i in range(min(a.frames, len(val)))})
    picks = [val[i] for i in at]
    scored = [i for i in range(len(val)) if i not in at][::a.score_every]
    classes = scfg.class_set
    void = classes.void if classes.void is not None else 255
    if len(picks) < MIN_FRAMES:
        ap.error(f"{len(picks)} val frames are too few: an adaptation takes at least {MIN_FRAMES}")
    if a.scale_ranges:
        rows = []
        checked = [seen(rgb, scfg).numpy() for _, rgb, _ in picks]
        checked = check_picks(checked)
        pairs = [(val[i][1], val[i][2]) for i in scored]
        eager = score_set(load_engine(start, REFERENCE), pairs, classes).miou
        for factor in [1.0] + [float(f) for f in a.scale_ranges.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                folder = scaled_ranges(start, factor, Path(tmp) / start.name)
                row = {"factor": factor, "agreement": agreement(folder, smodel, scfg, checked, INT8),
                       "int8": score_set(load_engine(folder, INT8), pairs, classes).miou, "eager": eager,
                       "scored_on": len(pairs)}
            rows.append(row)
            print(f"ranges x{factor:g}: int8 labels {100 * row['agreement']:.2f}% alike to eager on {len(checked)} "
                  f"frames; int8 - eager mIoU on {len(pairs)} labelled frames {100 * (row['int8'] - eager):+.2f}",
                  flush=True)
        print(f"{start.name}, clean CamVid val, {cpu_model()}")
        if a.json:
            a.json.write_text(json.dumps({"model": start.name, "cpu": cpu_model(), "scaled": rows}, indent=1))
        return 0
    names = [n.strip() for n in a.shifts.split(",")]
    parse_shifts(",".join(n for n in names if n != CLEAN) or "all")  # an unknown name stops here, before any work
    rows = []
    for shift in names:
        with tempfile.TemporaryDirectory() as tmp:
            street = Path(tmp) / "street"
            street.mkdir()
            rgbs = [rgb if shift == CLEAN else shifted(rgb, label, shift, a.severity, i, 0, void)[0]
                    for i, (_, rgb, label) in zip(at, picks)]
            for i, rgb in enumerate(rgbs):
                Image.fromarray(rgb).save(street / f"{i:03d}.png")
            out = Path(tmp) / "adapted"
            t0 = time.perf_counter()
            fitted = adapt_folder(start, street, out, fit_epochs=a.fit_epochs).fit_steps
            seconds = time.perf_counter() - t0
            shutil.copyfile(start / RANGES_FILE, out / RANGES_FILE)  # as carried_engines does, kept or not
            model, cfg = models.load_model(out)
            given = [seen(rgb, scfg).numpy() for rgb in rgbs]
            new, old = (agreement_matrices(out, model, cfg, given, INT8),
                        agreement_matrices(start, smodel, scfg, given, INT8))
            row = {"shift": shift, "severity": 0 if shift == CLEAN else a.severity, "frames": len(given),
                   "adapt_s": round(seconds, 1), "fit_steps": fitted,
                   "adapted": [alike([m]) for m in new], "start": [alike([m]) for m in old]}
            for name, size in (("all", len(given)), ("fours", 4), ("pairs", 2)):
                row[name] = [(alike([new[i] for i in ix]), alike([old[i] for i in ix]))
                             for ix in groups(len(given), size)]
            checked = check_picks(list(range(len(given))))  # the frames carried_engines checks
            row["check"] = alike([new[i] for i in checked]) >= alike([old[i] for i in checked]) - INT8_SLACK
            pairs = [(rgb, label) if shift == CLEAN else shifted(rgb, label, shift, a.severity, i, 0, void)
                     for i, (_, rgb, label) in ((i, val[i]) for i in scored)]
            row["scored_on"] = len(pairs)
            row["labelled"] = {who: {e: score_set(load_engine(folder, e), pairs, classes, shift).miou
                                     for e in (REFERENCE, INT8)}
                               for who, folder in (("adapted", out), ("start", start))}
        rows.append(row)
        diff = lambda pairs: ", ".join(f"{100 * (x - y):+.2f}" for x, y in pairs)  # noqa: E731
        adapted, begun = row["all"][0]
        lab = {who: 100 * (m[INT8] - m[REFERENCE]) for who, m in row["labelled"].items()}
        print(f"{shift:>14}: adapted {100 * adapted:.2f} / start {100 * begun:.2f} on {len(given)} frames; "
              f"fours {diff(row['fours'])}; pairs {diff(row['pairs'])}; check {'passes' if row['check'] else 'fails'}; "
              f"int8 - eager mIoU on {len(pairs)} labelled frames: adapted {lab['adapted']:+.2f} "
              f"(eager {100 * row['labelled']['adapted'][REFERENCE]:.2f}), start {lab['start']:+.2f} "
              f"(eager {100 * row['labelled']['start'][REFERENCE]:.2f}); adapted in {seconds:.0f} s", flush=True)
    print(f"{start.name}, int8 labels against eager fp32 (mIoU %), {cpu_model()}")
    if a.json:
        a.json.write_text(json.dumps({"model": start.name, "cpu": cpu_model(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
