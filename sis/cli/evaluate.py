"""``python -m sis eval``: a model, an ensemble or an accurate mode scored on a split."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def model_folders(model: str) -> list[Path]:
    """``--model``: one registry name or folder, or several joined by commas (an ensemble)."""
    from sis import zoo
    return [zoo.resolve(m.strip()) for m in model.split(",") if m.strip()]


def accurate_engine(a, device: str = "cpu", default_engine: str | None = None):
    """The engine ``--model/--engine/--tta/--scales/--weights`` ask for, or None for a plain model."""
    from sis import engines
    folders = model_folders(a.model or "")
    name = None if getattr(a, "engine", "auto") in (None, "auto") else a.engine
    if len(folders) == 1 and a.tta == "none" and a.weights is None and name is None and default_engine is None:
        return None
    if a.weights is not None and len(a.weights) != len(folders):
        raise engines.EngineError(f"--weights gives {len(a.weights)} numbers for {len(folders)} models")
    return engines.load_accurate(folders, engines.TTA.from_mode(a.tta, a.scales), name or default_engine, device,
                                 a.weights, log=lambda m: print(m, file=sys.stderr))


def accurate_single(a, temperature: float | None = None):
    """One model on the engine ``--engine`` names, else the one chosen for it here (at the card's temperature
    unless ``temperature`` is given)."""
    from sis import engines
    return engines.load_engine(model_folders(a.model)[0], a.engine if a.engine not in (None, "auto") else None,
                               temperature=temperature)


def cmd_shift(a) -> int:
    """``eval --shift``: the model on CamVid val under camera and scene shifts (evaluation.robustness)."""
    from sis.data.shifts import SEVERITIES, ShiftError, list_shifts, parse_shifts
    from dataclasses import asdict

    from sis import zoo
    from sis.evaluation.robustness import ood_auroc, shift_benchmark, val_frames, warning_rate
    shifts = parse_shifts(a.shift)
    if a.write and (shifts != list_shifts() or tuple(a.severities) != SEVERITIES or a.limit or a.work_rule):
        raise ShiftError("--write keeps the whole benchmark in the card: give --shift all at every severity, "
                         "without --limit or --work-rule")
    engine = accurate_engine(a, "cpu") or accurate_single(a)
    if a.write and hasattr(engine, "member_names"):
        raise ShiftError("--write is for one model in its fast mode, not an ensemble or an accurate mode")
    frames = val_frames(Path(a.data), a.limit, a.every)

    def progress(what, i, n):
        print(f"[{i}/{n}] {what}", file=sys.stderr)
    rep = shift_benchmark(engine, frames, shifts, a.severities, a.seed, ",".join(getattr(
        engine, "member_names", [engine.cfg.name])), progress, a.work_rule)
    out = rep.to_dict()
    out["ood_auroc_severe"] = ood_auroc(rep, max(a.severities))
    folders = model_folders(a.model)
    # what Segment would say of each frame, by the one model's card (an ensemble's page asks each member)
    unsure = zoo.read_card(folders[0]).unsure if len(folders) == 1 else None
    warned = warning_rate(rep, unsure) if unsure else None
    out["warned"] = asdict(warned) if warned else None
    if a.out:
        from sis.files import atomic_write
        atomic_write(Path(a.out), lambda tmp: tmp.write_text(json.dumps(out, indent=1)))
    if a.write:
        folder = folders[0]
        command = f"python -m sis eval --model {a.model} --data {a.data} --shift all --every {a.every} --seed {a.seed}"
        rec = rep.card_record(a.every, command)
        rec["warned"] = out["warned"]
        zoo.update_card(folder, shift_benchmark=rec)
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{rep.model} on {a.data} [val, {rep.frames} frames, {rep.engine}, seed {rep.seed}]")
    said = f" {'warn@' + str(warned.severity):>7}" if warned else ""
    print(f"{'shift':14} " + " ".join(f"{'sev ' + str(s):>7}" for s in a.severities) + f" {'mean':>7}" + said)
    by = rep.by_shift()
    for name in shifts:
        print(f"{name:14} " + " ".join(f"{100 * rep.score(name, s).miou:7.2f}" for s in a.severities) +
              f" {100 * by[name]:7.2f}" +
              (f" {100 * warned.by_shift[name]:6.0f}%" if warned else ""))
    print(f"clean mIoU {100 * rep.clean.miou:.2f}; shift benchmark mean {100 * rep.mean:.2f}; "
          f"ECE clean {100 * rep.clean.ece:.2f}, shifted {100 * rep.ece_shifted:.2f}; "
          f"mean confidence flags severity {max(a.severities)} frames at AUROC {out['ood_auroc_severe']:.3f}")
    if warned:
        print(f"at severity {warned.severity}, Segment warns that a photo looks unfamiliar on {100 * warned.severe:.0f}% "
              f"of the frames ({100 * warned.clean:.0f}% of the clean ones)")
    return 0


def cmd_eval(a) -> int:
    if a.shift:
        return cmd_shift(a)
    from sis.data.dataset import load_split
    from sis.engines import AccurateEngine
    from sis.evaluation.evaluate import evaluate
    from sis.zoo import models
    from sis.zoo.runtime import pick_device
    device = pick_device(a.device)
    folders = model_folders(a.model)
    if a.write:
        _check_real_frames(a, folders)
    engine = accurate_engine(a, device.type)
    if engine is None:  # the reference: the PyTorch model itself, fp32 unless --amp
        model, cfg = models.load_model(folders[0])
        model = model.to(device)
    else:
        model, cfg = None, engine.cfg
    frames = load_split(a.data, a.split, a.limit, cfg.class_set)
    res = evaluate(model, cfg, frames, device, amp=a.amp, batch_size=a.batch_size, engine=engine, rule=a.work_rule)
    names = engine.member_names if isinstance(engine, AccurateEngine) else [cfg.name]  # None: the model itself
    res.update(model=",".join(names),
               folder=",".join(map(str, folders)), split=a.split, amp=a.amp, tta=a.tta,
               engine="eager" if engine is None else engine.name)
    if a.write:
        _keep_real_frames(a, folders[0], res)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{res['model']} on {a.data} [{a.split}, {res['frames']} frames, {res['engine']}]")
    for n, v in res["per_class_iou"].items():
        print(f"  {n:12} IoU {'   -' if v is None else f'{100 * v:5.2f}'}")
    print(f"mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}  "
          f"mean class acc {100 * res['mean_class_acc']:.2f}")
    return 0


def _check_real_frames(a, folders: list[Path]) -> None:
    """``eval --write`` on a split: one model's reference figures on a whole dataset it did not train on."""
    from sis import zoo
    from sis.engines import EngineError
    if len(folders) != 1 or a.tta != "none" or a.engine not in (None, "auto") or a.amp or a.work_rule:
        raise EngineError("--write keeps one model's own figures (fp32, as the app serves it): give one model, "
                          "without --tta, --engine, --amp or --work-rule")
    if a.limit:
        raise EngineError("--write keeps the figures of the whole split: drop --limit")
    trained = zoo.read_card(folders[0]).trained_data
    if trained and Path(trained).resolve() == Path(a.data).resolve():
        raise EngineError(f"{folders[0].name} trained on {a.data}: its figures there are its card's val, not a "
                          f"dataset it has not seen")


def _keep_real_frames(a, folder: Path, res: dict) -> None:
    """The figures of ``res`` in the card's ``real_frames``, under the dataset folder's name."""
    from sis import zoo
    name = Path(a.data).resolve().name
    rec = {"miou": res["miou"], "per_class_iou": res["per_class_iou"], "pixel_acc": res["pixel_acc"],
           "frames": res["frames"], "split": a.split,
           "command": f"python -m sis eval --model {a.model} --data {a.data} --split {a.split}"}
    zoo.keep_real_frames(folder, name, rec)
    print(f"kept in {folder / 'card.json'} as real_frames.{name}", file=sys.stderr)


def cmd_calibrate(a) -> int:
    """``calibrate``: fit the model's softmax temperature on val through its engine here; --write keeps it in
    the card (``calibration``), where every engine loaded from the folder then applies it."""
    from sis.evaluation.calibrate import calibrate
    from sis.evaluation.robustness import val_frames
    folder = model_folders(a.model)[0]
    engine = accurate_single(a, temperature=1.0)  # fitted from the raw logits, whatever the card holds now
    cal = calibrate(engine, val_frames(Path(a.data), a.limit, a.every), a.seed)
    out = cal.to_dict() | {"fitted_on": f"val of {Path(a.data).name} ({cal.frames} frames, {cal.pixels} pixels)",
                           "reference": f"the val frames of {Path(a.data).name}"}
    return _keep(a, folder, "calibration", out,
                 f"{folder.name} on {cal.engine}: temperature {cal.temperature:.3f}; ECE {100 * cal.ece_before:.2f} -> "
                 f"{100 * cal.ece_after:.2f}; NLL {cal.nll_before:.4f} -> {cal.nll_after:.4f}; a photo is flagged below "
                 f"{100 * cal.low_confidence:.1f}% mean confidence")


def _keep(a, folder: Path, section: str, out: dict, line: str) -> int:
    """A fit's ``out`` into the card's ``section`` with --write; printed as JSON with --json, else as ``line``."""
    from sis import zoo
    if a.write:
        zoo.update_card(folder, **{section: out})
        line += f"; written to {folder / 'card.json'}"
    print(json.dumps(out) if a.json else line)
    return 0
