"""Checkpoints that a stopped or cut run resumes from exactly: weights, optimizer, RNG, history."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sis import zoo
from sis.files import partial, remove
from sis.training.config import TrainingError
from sis.zoo import models


# ------------------------------------------------------------------ checkpoints
def save_checkpoint(folder: Path, model, optimizer, meta: dict) -> None:
    """model + optimizer tensors as safetensors, the rest as JSON; written then renamed."""
    tmp = folder.with_name(folder.name + ".tmp")
    with partial(tmp, folder):  # a failed write (full disk) leaves the last checkpoint as it was
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp / "model.safetensors"))
        osd = optimizer.state_dict()
        tensors, state_meta = {}, {}
        for pid, st in osd["state"].items():
            state_meta[str(pid)] = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    state_meta[str(pid)][k] = v
        tensors["rng.cpu"] = torch.get_rng_state()
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta = dict(meta, param_groups=osd["param_groups"], state_meta=state_meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    remove(old)


def load_checkpoint(folder: Path, model, optimizer, cfg: zoo.ModelConfig) -> dict:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        models.apply_state(model, models.load_state(folder / "model.safetensors"), cfg, str(folder))
        tensors = load_file(str(folder / "optimizer.safetensors"))
    except (OSError, json.JSONDecodeError, zoo.ModelError) as e:
        raise TrainingError(f"cannot resume from {folder}: {e}; delete it to start afresh") from None
    if meta.get("model") != cfg.name:
        raise TrainingError(f"checkpoint {folder} is for {meta.get('model')}, not {cfg.name}")
    state: dict = {}
    for key, v in tensors.items():
        if key == "rng.cpu":
            continue
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for pid, extra in meta["state_meta"].items():
        state.setdefault(int(pid), {}).update(extra)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    return meta
