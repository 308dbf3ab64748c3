"""What adapting without labels (BatchNorm statistics, sis.adaptation.unlabeled) gains on the shift benchmark.

    python tools/unlabeled_gain.py MODEL --data ../shared/camvid [--shifts dusk,white_balance] [--severity 3] [--every 2]
                                   [--signals] [--source-share 0,0.25,0.5]
                                   [--adapt-frames 8 [--spread]] [--fit-epochs 2 [--fit entropy:norm:1e-4,...]]

For each shift: CamVid val under it (every N-th frame), split in two by frame parity; the model is adapted
on the even frames (their labels unused) and both it and the original are scored on the odd ones, on eager
fp32, through the app's predict path. With --source-share, one adapted model per share of the training statistics
kept (blend_statistics; "rule": the share `sis adapt` keeps for that many frames), all from one pass over
the frames; --adapt-frames N adapts on only the first N of the even frames (with --spread, N spaced evenly
over all of them: CamVid val is one drive filmed at 15 labelled frames a second, so the first N are a
fraction of a second of it and --spread the whole 7 seconds). Prints mIoU before, after, the
gain and the adaptation's time. With --signals, also what could tell a gain from a loss without labels,
read on the adaptation frames only: the change in mean calibrated confidence, and in the share of pixels
labelled alike on a frame and its mirror image. With --fit-epochs, the adapted model is then fitted to the
adaptation frames as `sis adapt` does (fit_to_frames), each --fit LOSS:TRAIN:RATE in turn: LOSS entropy
(TENT, what `sis adapt` does) or pseudo (cross-entropy to the adapted model's multi-scale + flip labels
where surer than --pseudo-threshold), TRAIN norm (the BatchNorm scales and shifts) or all (every weight).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sis import zoo  # noqa: E402
from sis.data import dataset  # noqa: E402
from sis.data.shifts import parse_shifts, shifted  # noqa: E402
from sis.engines import create_engine  # noqa: E402
from sis.engines.accurate import TTA, AccurateEngine  # noqa: E402
from sis.engines.predict import at_work_size, predict  # noqa: E402
from sis.host import cpu_model  # noqa: E402
from sis.evaluation.robustness import CLEAN, score_set, val_frames  # noqa: E402
from sis.adaptation.unlabeled import (adapt_batchnorm, batchnorm_statistics, blend_statistics,  # noqa: E402
                                    fit_steps, fit_to_frames, training_share)
from sis.zoo import models  # noqa: E402


def label_free(engine, frames) -> tuple[float, float]:
    """Mean calibrated confidence, and the share of pixels labelled alike on each frame and its mirror image."""
    conf, alike = [], []
    for rgb in frames:
        pred, mirrored = predict(engine, rgb), predict(engine, np.ascontiguousarray(rgb[:, ::-1]))
        conf.append(float(pred.confidence.mean()))
        alike.append(float((pred.labels == mirrored.labels[:, ::-1]).mean()))
    return float(np.mean(conf)), float(np.mean(alike))


def picked(count: int, n: int | None, spread: bool) -> list[int]:
    """Which of ``count`` frames to adapt on: all, the first ``n``, or ``n`` spaced evenly over them."""
    if n is None or n >= count:
        return list(range(count))
    return dataset.spread(count, n) if spread else list(range(n))


p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("model")
p.add_argument("--data", required=True)
p.add_argument("--shifts", default="clean,dusk,white_balance,contrast,blur,noise")
p.add_argument("--severity", type=int, default=3)
p.add_argument("--every", type=int, default=2)
p.add_argument("--json", help="also write the results here")
p.add_argument("--signals", action="store_true", help="label-free signals on the adaptation frames (twice the time)")
p.add_argument("--adapt-frames", type=int, help="adapt on only the first N of the even frames")
p.add_argument("--spread", action="store_true", help="the N frames of --adapt-frames spaced evenly, not the first N")
p.add_argument("--source-share", default="0", help="comma-separated shares of the training statistics to keep, "
               "each a number in [0, 1] or 'rule' (what `sis adapt` keeps)")
p.add_argument("--fit-epochs", type=float, default=0, help="then fit the adapted model to the adaptation frames for "
               "this many passes over them, within `sis adapt`'s least and most steps (fit_steps; scored after "
               "each pass, or at --score-at, and at the end), one run per --fit")
p.add_argument("--fit", default="entropy:norm:1e-4", help="comma-separated LOSS:TRAIN:RATE, LOSS entropy or "
               "pseudo (the adapted model's multi-scale+flip labels where surer than --pseudo-threshold), "
               "TRAIN norm or all")
p.add_argument("--pseudo-threshold", type=float, default=0.9)
p.add_argument("--score-at", help="comma-separated fitting step counts to score the fitted model at, instead of "
               "after each pass (each scoring takes as long as many steps)")
a = p.parse_args()
score_at = {int(k) for k in a.score_at.split(",")} if a.score_at else None
fits = [f.split(":") for f in a.fit.split(",")] if a.fit_epochs else []  # (loss, train, rate), one fit each
folder = zoo.resolve(a.model)
base, cfg = models.load_model(folder)
card = zoo.read_card(folder)
classes = cfg.class_set
void = classes.void if classes.void is not None else 255
frames = val_frames(Path(a.data), None, a.every)
names = [n.strip() for n in a.shifts.split(",")]
parse_shifts(",".join(n for n in names if n != CLEAN) or "all")
shares = [v.strip() for v in a.source_share.split(",")]
source = batchnorm_statistics(base)


def engine_of(m):
    return create_engine("eager", m, cfg, temperature=card.temperature)


plain = engine_of(base)
rows = []
for name in names:
    pairs = [(rgb, lab) if name == CLEAN else shifted(rgb, lab, name, a.severity, i, 0, void)
             for i, (_, rgb, lab) in enumerate(frames)]
    adapt_on, score_on = [rgb for rgb, _ in pairs[0::2]], pairs[1::2]
    adapt_on = [adapt_on[i] for i in picked(len(adapt_on), a.adapt_frames, a.spread)]
    estimated = copy.deepcopy(base)
    t0 = time.perf_counter()
    adapt_batchnorm(estimated, cfg, adapt_on)
    seconds = time.perf_counter() - t0
    before = score_set(plain, score_on, classes, name, a.severity)
    signal0 = label_free(plain, adapt_on) if a.signals else None
    for share in (training_share(len(adapt_on)) if v == "rule" else float(v) for v in shares):
        adapted = copy.deepcopy(estimated)
        blend_statistics(adapted, source, share)
        engine = engine_of(adapted)
        after = score_set(engine, score_on, classes, name, a.severity)
        rows.append({"shift": name, "severity": 0 if name == CLEAN else a.severity, "adapted_on": len(adapt_on),
                     "spread": a.spread, "scored_on": len(score_on), "source_share": share, "before": before.miou, "after": after.miou,
                     "ece_before": before.ece, "ece_after": after.ece, "seconds": seconds})
        said = ""
        if a.signals:
            (c0, f0), (c1, f1) = signal0, label_free(engine, adapt_on)
            rows[-1].update(confidence_before=c0, confidence_after=c1, mirror_alike_before=f0, mirror_alike_after=f1)
            said = f"; on those frames, confidence {100 * (c1 - c0):+.2f}, mirror agreement {100 * (f1 - f0):+.2f}"
        kept = f", training statistics kept {share:.2f}" if len(shares) > 1 or share else ""
        print(f"{name:14} mIoU {100 * before.miou:6.2f} -> {100 * after.miou:6.2f} ({100 * (after.miou - before.miou):+.2f}), "
              f"ECE {100 * before.ece:.2f}% -> {100 * after.ece:.2f}%; "
              f"adapted on {len(adapt_on)} frames in {seconds:.0f} s{kept}{said}", flush=True)
        targets = None
        if any(loss == "pseudo" for loss, _, _ in fits):
            t1 = time.perf_counter()
            teacher = AccurateEngine([engine_of(adapted)], TTA.from_mode("ms"))
            targets = []
            for rgb in adapt_on:
                pred = predict(teacher, at_work_size(rgb, cfg.base_size))
                targets.append(np.where(pred.confidence >= a.pseudo_threshold, pred.labels, 255).astype(np.uint8))
            labelled = float(np.mean([(t != 255).mean() for t in targets]))
            teacher_s = time.perf_counter() - t1
            print(f"{name:14}   pseudo-labels in {teacher_s:.0f} s, {100 * labelled:.0f}% of pixels", flush=True)
        steps = fit_steps(len(adapt_on), a.fit_epochs)
        for loss, train, lr in fits:
            lr = float(lr)
            fitted, clock = copy.deepcopy(adapted), {"start": time.perf_counter(), "scoring": 0.0}
            extra = teacher_s if loss == "pseudo" else 0.0

            def scored(done, fitted=fitted, clock=clock, lr=lr, share=share, loss=loss, train=train, extra=extra):
                due = done in score_at if score_at else done % len(adapt_on) == 0
                if not due and done != steps:
                    return
                t2 = time.perf_counter()
                took = t2 - clock["start"] - clock["scoring"] + extra  # the fitting alone, not the scoring between epochs
                res = score_set(engine_of(fitted), score_on, classes, name, a.severity)
                clock["scoring"] += time.perf_counter() - t2
                rows.append({"shift": name, "severity": 0 if name == CLEAN else a.severity, "adapted_on": len(adapt_on),
                             "source_share": share, "fit": f"{loss}:{train}:{lr:g}", "fit_steps": done,
                             "before": before.miou, "after": res.miou, "ece_before": before.ece, "ece_after": res.ece,
                             "seconds": seconds + took})
                print(f"{name:14}   + {loss} {train} lr {lr:g}, {done} steps: "
                      f"{100 * res.miou:6.2f} ({100 * (res.miou - before.miou):+.2f}), ECE {100 * res.ece:.2f}% "
                      f"in {took:.0f} s more", flush=True)
            fit_to_frames(fitted, cfg, adapt_on, steps, lr, card.temperature,
                          targets if loss == "pseudo" else None, train, progress=scored)
print(f"{folder.name}, severity {a.severity}, {'spread' if a.spread else 'first'} frames, eager fp32, {cpu_model()}")
if a.json:
    Path(a.json).write_text(json.dumps({"model": folder.name, "cpu": cpu_model(), "rows": rows}, indent=1))
