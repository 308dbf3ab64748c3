"""Before and after a fine-tune (sis/evaluation/before_after.py): both models scored on the same frames, masks side by side."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, write_dataset

from sis.data.dataset import load_split
from sis.evaluation import before_after
from sis.training.config import TrainConfig
from sis.evaluation.evaluate import evaluate
from sis.training.loop import train
from sis.zoo import models


def _ten_frames_without_val(root):
    write_dataset(root, n_train=10, n_val=0, seed=4)
    shutil.rmtree(root / "val"), shutil.rmtree(root / "valannot")
    return root


def test_before_after_of_an_adaptation_with_held_out_frames_and_base_val(tiny_data, tiny_model, tmp_path):
    user = _ten_frames_without_val(tmp_path / "mine")
    cfg = TrainConfig(model=TINY_MODEL, data=str(user), out=str(tmp_path / "adapted"), init=str(tiny_model),
                      batch_size=2, max_steps=3, val_limit=20, device="cpu", replay=str(tiny_data))
    assert train(cfg, log=lambda m: None).status == "done"
    seen = []
    res = before_after.for_run(cfg, tiny_data, progress=lambda i, n: seen.append((i, n)))
    assert [s.name for s in res.scores] == ["your held-out frames", "camvid_tiny0 val (what the model may forget)"]
    assert [s.frames for s in res.scores] == [2, 3]  # every 5th of 10 held out; the base set's 3 val frames
    assert seen[-1][0] == seen[-1][1] == 2 * (2 + 3 + before_after.SHOWN)
    # each figure is the model's own evaluation on those frames, before (the start) and after (the run's model)
    held = load_split(user, "train")
    held_out = type(held)([held.names[i] for i in (4, 9)], [held.images[i] for i in (4, 9)],
                          [held.masks[i] for i in (4, 9)], held.classes)
    for folder, side in ((tiny_model, "before"), (tmp_path / "adapted", "after")):
        model, mcfg = models.load_model(folder)
        ref = evaluate(model, mcfg, held_out, torch.device("cpu"), batch_size=2)
        assert getattr(res.scores[0], side)["miou"] == pytest.approx(ref["miou"])
    assert res.scores[0].gain == pytest.approx(res.scores[0].after["miou"] - res.scores[0].before["miou"])
    # the first training frames, painted: the label, before, after
    assert [m.frame for m in res.masks] == ["f000", "f001", "f002", "f003"]
    from PIL import Image
    for m in res.masks:
        for png in (m.truth, m.before, m.after):
            assert Image.open(tmp_path / "adapted" / before_after.FOLDER / png).size == (96, 64)
    assert before_after.BeforeAfter.load(tmp_path / "adapted") == res  # kept beside the model
    rows = res.table()
    assert [r["class"] for r in rows] == [*res.classes, "mean (mIoU)"]
    assert rows[-1]["your held-out frames: before"] == round(100 * res.scores[0].before["miou"], 1)


def test_no_comparison_from_random_init_or_when_stopped(tiny_data, tiny_model, tmp_path):
    cfg = TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(tmp_path / "a"), init="random", max_steps=1,
                      batch_size=2, device="cpu")
    assert before_after.for_run(cfg, tiny_data) is None
    assert before_after.BeforeAfter.load(tmp_path / "a") is None
    cfg = TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(tmp_path / "b"), init=str(tiny_model),
                      max_steps=1, batch_size=2, device="cpu", val_limit=2)
    train(cfg, log=lambda m: None)
    assert before_after.for_run(cfg, tiny_data, stop=lambda: True) is None
    assert before_after.BeforeAfter.load(tmp_path / "b") is None  # nothing half kept
    res = before_after.for_run(cfg, tiny_data)  # CamVid-like data: its own val split, no second set
    assert [s.name for s in res.scores] == ["the dataset's val frames"] and res.scores[0].frames == 2
    assert np.isfinite(res.scores[0].after["miou"])
