import os
import re
import subprocess
import sys
import threading

import pytest
import torch

from sis import models, zoo
from sis.train import TrainConfig, TrainingError, lr_at, train

from conftest import ROOT, TINY_MODEL


def test_lr_schedules():
    assert lr_at(5, 10, 1.0, "constant") == 1.0
    assert lr_at(0, 10, 1.0, "poly") == 1.0
    assert lr_at(5, 10, 1.0, "poly") == pytest.approx(0.5 ** 0.9)
    assert lr_at(5, 10, 1.0, "cosine") == pytest.approx(0.5)
    assert lr_at(10, 10, 1.0, "cosine") == pytest.approx(0.0)
    assert lr_at(1, 10, 1.0, "poly", warmup=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_at(0, 1, 1.0, "step")


def _cfg(data, out, **kw):
    # the loop's logic on the CPU, also on a machine with a GPU: bitwise repeatability and exact
    # resume hold there, not on CUDA (cuDNN autotuning and atomics; seen on an H100, where these
    # 2-24-step runs also landed elsewhere than the figures measured here)
    base = dict(model=TINY_MODEL, data=str(data), out=str(out), batch_size=2, val_limit=2, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_train_writes_loadable_model_and_history(tiny_data, tmp_path):
    seen = []
    res = train(_cfg(tiny_data, tmp_path / "m", epochs=2), callback=seen.append, log=lambda m: None)
    assert res["status"] == "done" and res["steps"] == 6  # 6 frames / batch 2 * 2 epochs
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    assert all("val_miou" in h and 0 <= h["pixel_acc"] <= 1 for h in res["history"])
    steps = [p.step for p in seen if p.phase == "train"]
    assert steps == list(range(1, 7)) and seen[-1].phase == "done"
    model, cfg = models.load_model(tmp_path / "m")
    card = zoo.read_card(tmp_path / "m").raw
    assert card["epochs_run"] == 2 and card["classes"][0] == "Sky" and card["recipe"]["lr"] == 2e-4
    assert (tmp_path / "m" / "checkpoint" / "model.safetensors").is_file()


@pytest.mark.slow
def test_learns_synthetic_data(tiny_data, tmp_path):
    # U-Net: its BatchNorm running stats settle within a few steps (the dilated PSPNet's lag behind)
    # lr 3e-4: at 1e-3 the 24-step result swung with the thread count and precision (val loss
    # 1.7 to 8.2); at 3e-4 it measured 1.70-1.79 val loss, 0.44-0.49 pixel acc, train loss
    # 2.62 -> 1.87-1.90, for 1 and 2 threads, fp32 and bf16
    res = train(_cfg(tiny_data, tmp_path / "m", max_steps=24, lr=3e-4, val_every=0, model="unet-resnet18"),
                log=lambda m: None)
    first, last = res["history"][0], res["history"][-1]
    assert last["loss"] < 0.8 * first["loss"]
    from sis.data import load_split
    from sis.evaluate import evaluate
    model, cfg = models.load_model(tmp_path / "m")
    frames = load_split(tiny_data, "val")
    val = evaluate(model, cfg, frames, torch.device("cpu"))
    torch.manual_seed(3)
    untrained = evaluate(models.create_model("unet-resnet18")[0], cfg, frames, torch.device("cpu"))
    # untrained: pixel acc 0.14, loss 2.51
    assert val["loss"] < untrained["loss"] and val["pixel_acc"] > 2 * untrained["pixel_acc"]


@pytest.mark.slow
def test_deterministic_with_seed(tiny_data, tmp_path):
    a = train(_cfg(tiny_data, tmp_path / "a", max_steps=2, val_every=0), log=lambda m: None)
    b = train(_cfg(tiny_data, tmp_path / "b", max_steps=2, val_every=0), log=lambda m: None)
    c = train(_cfg(tiny_data, tmp_path / "c", max_steps=2, val_every=0, seed=4), log=lambda m: None)
    assert a["digest"] == b["digest"] != c["digest"]


class StopAfter:
    def __init__(self, n):
        self.n, self.calls = n, 0

    def __call__(self, p):
        self.calls += p.phase == "train"

    def is_set(self):
        return self.calls >= self.n


@pytest.mark.slow
def test_stop_within_one_batch_then_resume(tiny_data, tmp_path):
    stop = StopAfter(2)
    res = train(_cfg(tiny_data, tmp_path / "m", epochs=3, val_every=0), callback=stop, stop=stop,
                log=lambda m: None)
    assert res["status"] == "stopped" and res["steps"] == 2
    assert zoo.read_card(tmp_path / "m").raw["status"] == "stopped"  # the model so far is saved
    res2 = train(_cfg(tiny_data, tmp_path / "m", epochs=3, val_every=0), log=lambda m: None)
    assert res2["status"] == "done" and res2["steps"] == 9
    # resuming gives the same weights as an uninterrupted run
    ref = train(_cfg(tiny_data, tmp_path / "ref", epochs=3, val_every=0), log=lambda m: None)
    assert res2["digest"] == ref["digest"]


def test_nan_loss_stops_with_message(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="loss became (nan|inf)"):
        train(_cfg(tiny_data, tmp_path / "m", max_steps=6, lr=1e30, val_every=0), log=lambda m: None)


def test_resume_from_wrong_model_checkpoint(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "m", max_steps=1, val_every=0), log=lambda m: None)
    with pytest.raises(TrainingError, match="cannot resume"):
        train(_cfg(tiny_data, tmp_path / "m", max_steps=1, val_every=0, model="unet-resnet18"),
              log=lambda m: None)


def test_finetune_from_folder_with_new_classes(tiny_model, data_copy, tmp_path):
    import json
    (data_copy / "classes.json").write_text(json.dumps(
        {"names": [f"c{i}" for i in range(12)], "colors": [[i, i, i] for i in range(12)], "void": None}))
    res = train(_cfg(data_copy, tmp_path / "ft", init=str(tiny_model), max_steps=1, val_every=0),
                log=lambda m: None)
    model, cfg = models.load_model(tmp_path / "ft")
    assert cfg.class_set.num_classes == 12 and cfg.init.startswith("finetune:")


def test_freeze_encoder_keeps_encoder_weights(tiny_data, tmp_path):
    train(_cfg(tiny_data, tmp_path / "f", max_steps=2, val_every=0, freeze_encoder=True, init="random"),
          log=lambda m: None)
    model, _ = models.load_model(tmp_path / "f")
    fresh, _ = models.create_model(TINY_MODEL)  # same seed -> same random init
    torch.manual_seed(3)
    fresh, _ = models.create_model(TINY_MODEL)
    enc = {k: v for k, v in model.state_dict().items() if k.startswith("encoder") and "running" not in k
           and "num_batches" not in k}
    ref = fresh.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in enc.items())
    assert not all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if k.startswith("decoder"))


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_identical_weights(tiny_data, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
           "-m", "sis", "train", "--model", TINY_MODEL, "--data", str(tiny_data), "--out", str(tmp_path / "d"),
           "--max-steps", "2", "--batch-size", "2", "--val-limit", "2", "--device", "cpu", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    digests = dict(re.findall(r"rank (\d) weights (\w+)", r.stderr))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"]
    assert zoo.read_card(tmp_path / "d").raw["world_size"] == 2
