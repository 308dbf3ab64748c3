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


def cmd_eval(a) -> int:
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
    res = evaluate(model, cfg, frames, device, amp=a.amp, batch_size=a.batch_size, engine=engine)
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
