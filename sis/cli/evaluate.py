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


def accurate_single(a):
    """One model on the engine ``--engine`` names, else the one chosen for it here."""
    from sis import engines
    return engines.load_engine(model_folders(a.model)[0], a.engine if a.engine not in (None, "auto") else None)


def _without_input_range(engine) -> None:
    """``eval --no-input-range``: ``engine`` (each member of an accurate mode) given frames as they are."""
    for m in getattr(engine, "members", [engine]):
        m.input_range = None


def cmd_shift(a) -> int:
    """``eval --shift``: the model on CamVid val under camera and scene shifts (training.robustness)."""
    from sis.data.shifts import SEVERITIES, ShiftError, list_shifts, parse_shifts
    from dataclasses import asdict

    from sis import zoo
    from sis.training.robustness import ood_auroc, shift_benchmark, spoke_up, val_frames
    shifts = parse_shifts(a.shift)
    if a.write and (shifts != list_shifts() or tuple(a.severities) != SEVERITIES or a.limit or a.work_rule):
        raise ShiftError("--write keeps the whole benchmark in the card: give --shift all at every severity, "
                         "without --limit or --work-rule")
    engine = accurate_engine(a, "cpu") or accurate_single(a)
    if a.no_input_range:
        _without_input_range(engine)
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
    spoke, warned = (spoke_up(rep, unsure), spoke_up(rep, unsure, moved=False)) if unsure else (None, None)
    out["spoke_up"], out["warned"] = (asdict(spoke), asdict(warned)) if spoke else (None, None)
    if a.out:
        from sis.files import atomic_write
        atomic_write(Path(a.out), lambda tmp: tmp.write_text(json.dumps(out, indent=1)))
    if a.write:
        folder = folders[0]
        command = f"python -m sis eval --model {a.model} --data {a.data} --shift all --every {a.every} --seed {a.seed}"
        command += " --no-input-range" if a.no_input_range else ""
        rec = rep.card_record(a.every, command, getattr(engine, "input_range", None) is not None)
        rec["spoke_up"], rec["warned"] = out["spoke_up"], out["warned"]
        kept = zoo.read_card(folder).raw.get("shift_benchmark") or {}
        # the same model without its input range is the baseline the range is judged by: each run keeps the other's
        if a.no_input_range:
            rec = dict(kept, without_input_range=rec)
        elif "without_input_range" in kept:
            rec["without_input_range"] = kept["without_input_range"]
        zoo.update_card(folder, shift_benchmark=rec)
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"{rep.model} on {a.data} [val, {rep.frames} frames, {rep.engine}, seed {rep.seed}]")
    said = f" {'warn@' + str(spoke.severity):>7} {'said@' + str(spoke.severity):>7}" if spoke else ""
    print(f"{'shift':14} " + " ".join(f"{'sev ' + str(s):>7}" for s in a.severities) + f" {'mean':>7}" + said)
    by = rep.by_shift()
    for name in shifts:
        print(f"{name:14} " + " ".join(f"{100 * rep.score(name, s).miou:7.2f}" for s in a.severities) +
              f" {100 * by[name]:7.2f}" +
              (f" {100 * warned.by_shift[name]:6.0f}% {100 * spoke.by_shift[name]:6.0f}%" if spoke else ""))
    print(f"clean mIoU {100 * rep.clean.miou:.2f}; shift benchmark mean {100 * rep.mean:.2f}; "
          f"ECE clean {100 * rep.clean.ece:.2f}, shifted {100 * rep.ece_shifted:.2f}; "
          f"mean confidence flags severity {max(a.severities)} frames at AUROC {out['ood_auroc_severe']:.3f}")
    if spoke:
        print(f"at severity {spoke.severity}, Segment warns that a photo looks unfamiliar on {100 * warned.severe:.0f}% "
              f"of the frames ({100 * warned.clean:.0f}% of the clean ones) and says something, the warning or "
              f"that it moved the photo inside the input range, on {100 * spoke.severe:.0f}% "
              f"({100 * spoke.clean:.0f}% of the clean ones)")
    return 0


def cmd_eval(a) -> int:
    if a.shift:
        return cmd_shift(a)
    from sis import zoo
    from sis.data.dataset import load_split
    from sis.training.evaluate import evaluate
    from sis.zoo import models
    from sis.zoo.runtime import pick_device
    device = pick_device(a.device)
    folders = model_folders(a.model)
    engine = accurate_engine(a, device.type)
    if engine is None:  # the reference: the PyTorch model itself, fp32 unless --amp
        model, cfg = models.load_model(folders[0])
        model = model.to(device)
    else:
        model, cfg = None, engine.cfg
    frames = load_split(a.data, a.split, a.limit, cfg.class_set)
    # the reference model gets its card's input range as the engines do (an accurate engine's members apply theirs)
    rng = None if a.no_input_range or engine is not None else zoo.read_card(folders[0]).input_range
    if a.no_input_range and engine is not None:
        _without_input_range(engine)
    res = evaluate(model, cfg, frames, device, amp=a.amp, batch_size=a.batch_size, engine=engine, input_range=rng)
    res.update(model=",".join(cfg.name if engine is None else n for n in getattr(engine, "member_names", [cfg.name])),
               folder=",".join(map(str, folders)), split=a.split, amp=a.amp, tta=a.tta,
               engine="eager" if engine is None else engine.name)
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{res['model']} on {a.data} [{a.split}, {res['frames']} frames, {res['engine']}]")
    for n, v in res["per_class_iou"].items():
        print(f"  {n:12} IoU {'   -' if v is None else f'{100 * v:5.2f}'}")
    print(f"mIoU {100 * res['miou']:.2f}  pixel acc {100 * res['pixel_acc']:.2f}  "
          f"mean class acc {100 * res['mean_class_acc']:.2f}")
    return 0


def cmd_calibrate(a) -> int:
    """``calibrate``: fit the model's softmax temperature on val through its engine here; --write keeps it in
    the card (``calibration``), where every engine loaded from the folder then applies it."""
    from sis.training.calibrate import calibrate
    from sis.training.robustness import val_frames
    folder = model_folders(a.model)[0]
    if a.input_range:
        return _fit_input_range(a, folder)
    engine = accurate_single(a)
    engine.temperature = 1.0  # fitted from the raw logits, whatever the card holds now
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


def _fit_input_range(a, folder: Path) -> int:
    """``calibrate --input-range``: the colour, contrast, brightness, sharpness and noise range of the frames the model
    trained on (``data.input_range``); --write keeps it in the card, and every engine then brings photos inside it."""
    from sis import zoo
    from sis.data.dataset import list_pairs, read_rgb
    from sis.data.input_range import fit_input_range
    splits = zoo.read_card(folder).splits
    paths = [i for sp in splits for i, _ in list_pairs(Path(a.data), sp)][::a.every][:a.limit]
    rng = fit_input_range((read_rgb(p) for p in paths), f"{'+'.join(splits)} of {Path(a.data).name}")
    out = rng.to_dict() | {"command": f"python -m sis calibrate --model {a.model} --data {a.data} --input-range"}
    return _keep(a, folder, "input_range", out,
                 f"{folder.name}: input range over {rng.frames} frames of {rng.source}: luminance "
                 f"{rng.luminance[0]:.3f}-{rng.luminance[1]:.3f}, contrast {rng.contrast[0]:.3f}-{rng.contrast[1]:.3f} "
                 f"(median {rng.contrast_median:.3f}), "
                 f"red/green {rng.red_green[0]:.3f}-{rng.red_green[1]:.3f}, blue/green "
                 f"{rng.blue_green[0]:.3f}-{rng.blue_green[1]:.3f}"
                 + (f", sharpness {rng.sharpness[0]:.3f}-{rng.sharpness[1]:.3f}" if rng.sharpness else "")
                 + (f", noise {255 * rng.noise[0]:.1f}-{255 * rng.noise[1]:.1f} levels" if rng.noise else "")
                 + (f", blockiness {rng.blockiness[0]:.3f}-{rng.blockiness[1]:.3f}" if rng.blockiness else ""))
