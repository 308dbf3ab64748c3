"""The helper scripts behind the shipped weights (tools/): what the GPU training relies on."""
from __future__ import annotations

import importlib.util

import torch

from conftest import ROOT
from sis.data import load_split
from sis.train import lr_at


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_stage_keeps_labels_and_frames_close(tiny_data, tmp_path):
    size = _tool("gpu_stage").stage(tiny_data, tmp_path / "staged")
    assert size > 0
    for split in ("train", "val"):
        src, dst = load_split(tiny_data, split), load_split(tmp_path / "staged", split)
        assert dst.names == src.names
        assert all(torch.equal(a, b) for a, b in zip(src.masks, dst.masks))  # labels bit for bit
        err = max((a.float() - b.float()).abs().mean().item() for a, b in zip(src.images, dst.images))
        assert 0 < err < 2.0  # JPEG q97: lossy, but by about a grey level


def test_warmup_steps_do_not_depend_on_run_length():
    """gpu_train.sh times 4 epochs inside the warm-up, then resumes them into the full run."""
    for sched in ("poly", "cosine"):
        short = [lr_at(s, 184, 2e-3, sched, 200) for s in range(184)]
        long = [lr_at(s, 9000, 2e-3, sched, 200) for s in range(184)]
        assert short == long
    assert lr_at(300, 400, 2e-3, "poly", 200) != lr_at(300, 9000, 2e-3, "poly", 200)  # after it, they do
