"""A training run's end: the starting weights averaged back in, its confidence calibrated, the model folder
and its card written, and a fine-tune's graphs carried from its start; each stage said as it starts."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from sis import zoo
from sis.data.dataset import Frames, load_split
from sis.evaluation.evaluate import evaluate
from sis.packaging.carry import CARRY_STAGES, carried_engines
from sis.training.config import TrainConfig, train_command
from sis.training.data import TrainingData
from sis.zoo import models
from sis.zoo.runtime import amp_dtype, host_info


@dataclass
class Ended:
    """A run after its last step (or its stop), as finish() packs it into a model folder."""
    cfg: TrainConfig
    model: torch.nn.Module
    mcfg: zoo.ModelConfig
    data: TrainingData
    status: str             # done | stopped
    step: int
    history: list[dict]
    val: dict | None        # the last validation's figures, replaced by the averaged model's
    wall: float
    world: int
    device: torch.device


def finish(run: Ended, start: dict | None, say: Callable[[str, int], None], log: Callable[[str], None]) -> dict | None:
    """Write ``run.cfg.out``: the starting weights averaged back in where kept (``start``), the confidence
    calibrated on frames it did not train on, the model and its card, and a fine-tune's carried graphs.
    ``say(stage, stages)`` is told each stage as it starts. Returns the card's val figures."""
    cfg, model, mcfg, data = run.cfg, run.model, run.mcfg, run.data
    # labelled frames it did not train on, if any: its confidence is calibrated, a fine-tune's int8 scored on them
    held_out = (_calibration_set(cfg, data, run.val is not None) if run.status == "done" or cfg.from_folder
                else None)
    calibrates = run.status == "done" and held_out is not None
    stages = 1 + (start is not None) + calibrates + (CARRY_STAGES if cfg.from_folder else 0)

    def finishing(what: str) -> None:
        log(f"finishing: {what}")
        say(what, stages)
    if start is not None:
        finishing(f"averaging {100 * cfg.init_share:.0f}% of the starting model's weights back in" +
                  (f" and scoring it on {len(data.val)} validation frames" if data.val is not None and run.val else ""))
        run.val = mix_in_start(cfg, model, mcfg, start, data, run.val, run.device, log)
    card = _card(run)
    if calibrates:
        finishing(f"calibrating its confidence on {len(held_out[0])} of {held_out[1]}")
        card["calibration"] = cal = _calibration(model, mcfg, *held_out)
        log(f"calibrated on {held_out[1]}: temperature {cal['temperature']:.3f}, ECE "
            f"{100 * cal['ece_before']:.2f}% -> {100 * cal['ece_after']:.2f}%")
    finishing("saving the model")
    out = Path(cfg.out)
    models.save_model(model, mcfg, out, card, half=cfg.save_half)
    if cfg.from_folder:  # its start's graphs, checked for its weights: it need not run eager
        held = data.val if data.val is not None else data.train
        val = run.val
        fast = carried_engines(Path(cfg.init), out, held.images, lambda i: i[None].cpu().numpy(),
                               "its " + ("validation" if data.val is not None else "training") + " frames",
                               labelled=held_out,  # a stopped run's last val may be of earlier weights:
                               eager_miou=val["miou"] if val and run.status == "done" and _fp32_here(cfg, run.device)
                               else None,  # its fp32 graph is then scored instead
                               say=finishing)
        if fast:
            zoo.update_card(out, fast_path=fast)
    return run.val


def mix_in_start(cfg, model, mcfg, start: dict, data, val, device, log) -> dict | None:
    """Average the starting weights back in at ``cfg.init_share`` (weight-space ensembling, Wortsman et al.,
    CVPR 2022: the fine-tune's gain, less of what it forgot; docs/correct.md); val scored again, so
    the card describes the model saved. BatchNorm's counters stay the fine-tune's."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():  # start is this model's own state before training: same keys, same shapes
                v.mul_(1 - cfg.init_share).add_(start[k].to(v.device, v.dtype), alpha=cfg.init_share)
    if data.val is None or val is None:
        log(f"kept {100 * cfg.init_share:.0f}% of {Path(cfg.init).name}'s weights")
        return val
    mixed = evaluate(model, mcfg, data.val, device, amp=False)  # the card's figure, in fp32 as the last val
    log(f"kept {100 * cfg.init_share:.0f}% of {Path(cfg.init).name}'s weights: val mIoU {val['miou']:.4f} -> "
        f"{mixed['miou']:.4f}")
    return mixed


def _fp32_here(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether a finished run's val figure is eager fp32 on the CPU for the weights it saves (its last val
    runs without autocast; no fp16 save): an engine's val figure may then be taken against it."""
    return device.type == "cpu" and not cfg.save_half


def _card(run: Ended) -> dict:
    """The card written beside the weights: what was trained, how, on what, and how it scored."""
    cfg, mcfg, data, history, device = run.cfg, run.mcfg, run.data, run.history, run.device
    classes = data.classes
    return {
        "model": mcfg.name, "paper_pair": zoo.MODELS[mcfg.name].paper, "init": mcfg.init,
        "classes": list(classes.names), "palette": [list(c) for c in classes.colors], "void": classes.void,
        "status": run.status, "steps": run.step, "epochs_run": len([h for h in history if not h.get("partial")]),
        "wall_time_s": round(run.wall, 1), "history": history,
        "val": run.val, "recipe": cfg.to_dict(), "command": train_command(cfg), "world_size": run.world,
        "complexity": models.config_complexity(mcfg),
        "precision": str(amp_dtype(device)) if cfg.amp and amp_dtype(device) else "fp32",
        "hardware": host_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {"root": str(cfg.data), "splits": list(cfg.splits), "train_frames": len(data.train),
                 "val_frames": len(data.val) if data.val is not None else 0, "validation": data.validation,
                 "replay": {"root": str(cfg.replay), "frames": len(data.replay), "per_batch": data.n_replay}
                 if data.replay else None},
    }


CALIBRATION_REPLAY_FRAMES = 34  # of the replay dataset's val split, spread evenly: a third of CamVid's, seconds


def _calibration_set(cfg: TrainConfig, data: TrainingData, validated: bool) -> tuple[Frames, str] | None:
    """The frames a finished run is calibrated on, and what they are in words: its own val frames where it
    validated at the end; else the val split of the dataset it replayed (a few corrected frames have no val
    of their own, and the replayed one is what the model must still know); else none."""
    if validated:
        return data.val, "the frames its training run held out for validation"
    replay = Path(cfg.replay) if cfg.replay else None
    if replay is None or not (replay / "val").is_dir():
        return None
    return (load_split(replay, "val", CALIBRATION_REPLAY_FRAMES, data.classes, evenly=True),
            f"the val frames of {replay.name}")


def _calibration(model: torch.nn.Module, mcfg: zoo.ModelConfig, frames: Frames, reference: str) -> dict:
    """The finished run's softmax temperature and unfamiliarity threshold, fitted on ``frames`` as
    ``sis calibrate`` fits a shipped model's: a fine-tune's confidence then means what it says on the
    pages, instead of the raw logits' or the model it started from (whose temperature is not its own)."""
    from sis.engines import REFERENCE, create_engine
    from sis.evaluation.calibrate import calibrate
    model.eval()
    engine = create_engine(REFERENCE, model, mcfg, next(model.parameters()).device.type)
    pairs = [(n, im.permute(1, 2, 0).cpu().numpy(), m.cpu().numpy().astype("uint8"))
             for n, im, m in zip(frames.names, frames.images, frames.masks)]
    cal = calibrate(engine, pairs)
    return cal.to_dict() | {"fitted_on": f"{reference} ({cal.frames} frames, {cal.pixels} pixels), at the end of "
                                         f"training", "reference": reference}
