"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, TINY_MODEL, in_process
from PIL import Image


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "sis", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout,
                          env={"SIS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "SIS_CACHE_DIR": os.environ["SIS_CACHE_DIR"]})


def one_line_error(r, pattern):
    assert r.returncode == 2, r.stderr
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("cmd", ["models", "train", "eval", "predict", "bench", "export", "download", "video"])
def test_help(cmd):
    r = run(cmd, "--help")
    assert r.returncode == 0 and "usage: python -m sis" in r.stdout


class _Terminal:
    """A stderr that says it is a terminal."""
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_is_one_rewritten_line_on_a_terminal_and_a_line_a_tenth_in_a_log(monkeypatch, capsys):
    from sis.cli.progress import StderrProgress
    progress = StderrProgress(lambda i, n: f"adapting: {i}/{n} steps")  # pytest's stderr is no terminal
    for i in range(1, 51):
        progress(i, 50)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"adapting: {i}/50 steps" for i in (1, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50)]
    unknown = StderrProgress(lambda i, n: f"{i}/{n or '?'} frames")
    for i in range(1, 251):
        unknown(i, None)
    assert capsys.readouterr().err.splitlines() == ["1/? frames", "100/? frames", "200/? frames"]
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = StderrProgress(lambda i, n: f"{i}/{n}")
    for i in range(1, 4):
        progress(i, 3)
    progress.close()
    assert terminal.text == "\r1/3\r2/3\r3/3\n"


def test_models_counts_each_architecture_once_and_keeps_the_count(tmp_path, monkeypatch):
    """`sis models` counts FLOPs once per architecture and library versions; a broken file is counted again."""
    from sis import zoo
    from sis.cli.models import registry_complexity
    from sis.zoo import models
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(zoo, "MODELS", {k: zoo.MODELS[k] for k in ("pspnet-resnet18", "unet-vgg11_bn")})
    counted = []
    real = models.complexity
    monkeypatch.setattr(models, "complexity", lambda name: counted.append(name) or real(name))
    first = registry_complexity()
    assert counted == ["pspnet-resnet18", "unet-vgg11_bn"] and first["pspnet-resnet18"] == real("pspnet-resnet18")
    assert registry_complexity() == first and len(counted) == 2  # kept: nothing counted again
    (tmp_path / "complexity.json").write_text("{not json")
    assert registry_complexity() == first and len(counted) == 4


@pytest.mark.slow
def test_models_json_has_one_default():
    rows = json.loads(run("models", "--json").stdout)
    assert {"name", "arch", "encoder", "params", "shipped", "default"} <= rows[0].keys()
    assert sum(r["default"] for r in rows) == 1
    assert {r["name"] for r in rows} >= {"unet-resnet18", "pspnet-vgg16_bn"}


@pytest.mark.slow
def test_bad_arguments(tmp_path, tiny_data, capsys):
    one_line_error(run("train", "--model", "unet-nope", "--data", tiny_data), "unknown model 'unet-nope'")
    one_line_error(run("train", "--model", TINY_MODEL, "--data", tiny_data, "--epochs", "0"),
                   "expected a positive integer")
    one_line_error(in_process(capsys, "train", "--model", TINY_MODEL, "--data", tmp_path / "missing"), "does not exist")
    one_line_error(in_process(capsys, "eval", "--model", "nothing-here", "--data", tiny_data), "neither a model folder nor")
    one_line_error(in_process(capsys, "bench", "--model", TINY_MODEL, "--size", "big"), "size must look like 360x480")
    import torch
    if not torch.cuda.is_available():
        one_line_error(in_process(capsys, "bench", "--model", TINY_MODEL, "--device", "cuda:0", "--repeats", "1"),
                       "device 'cuda:0' is unavailable")


@pytest.mark.slow
def test_eval_json_and_predict(tiny_model, tiny_data, tmp_path):
    r = run("eval", "--model", tiny_model, "--data", tiny_data, "--split", "val", "--json")
    res = json.loads(r.stdout)
    assert {"miou", "pixel_acc", "per_class_iou"} <= res.keys() and len(res["per_class_iou"]) == 11
    img = tiny_data / "val" / "f000.png"
    (tmp_path / "bad.png").write_text("not an image")
    r = run("predict", "--model", tiny_model, "--out", tmp_path / "out", img, tmp_path / "bad.png")
    assert r.returncode == 0 and "skipped: " in r.stderr and "is not a picture this app can open" in r.stderr
    assert Image.open(tmp_path / "out" / "f000_color.png").size == (96, 64)
    labels = np.asarray(Image.open(tmp_path / "out" / "f000_labels.png"))
    assert Image.open(tmp_path / "out" / "f000_labels.png").mode == "L"
    # the coloured mask is its labels in the high-contrast palette by default, in CamVid's own on request
    from sis.classes import CAMVID
    assert (np.asarray(Image.open(tmp_path / "out" / "f000_color.png")) == CAMVID.in_palette().palette()[labels]).all()
    run("predict", "--model", tiny_model, "--out", tmp_path / "own", img, "--palette", "dataset")
    assert (np.asarray(Image.open(tmp_path / "own" / "f000_color.png")) == CAMVID.palette()[labels]).all()
    one_line_error(run("predict", "--model", tiny_model, "--out", tmp_path / "o2", tmp_path / "bad.png"),
                   "is not a picture this app can open")


def test_wrong_checkpoint_folder(tiny_model, tmp_path, tiny_data):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model / "config.json").read_text())
    (bad / "model.safetensors").write_bytes(b"\x00" * 100)
    one_line_error(run("eval", "--model", bad, "--data", tiny_data), "not a readable safetensors file")


@pytest.mark.slow
def test_bench_json(tmp_path):
    out = tmp_path / "b.json"
    r = run("bench", "--model", TINY_MODEL, "--mode", "train", "--batch", "2", "--size", "64x96",
            "--warmup", "1", "--repeats", "2", "--json", "--out", out)
    res = json.loads(r.stdout)
    assert res == json.loads(out.read_text())
    assert res["mode"] == "train" and len(res["times_ms"]) == 2 and res["median_ms"] > 0
    assert res["images_per_s"] == pytest.approx(2000 / res["median_ms"])
    assert res["host"]["cores_logical"] >= 1 and res["peak_rss_mb"] > 0


@pytest.mark.slow
def test_export_onnx_pspnet_parity(tiny_model, tmp_path):
    pytest.importorskip("onnxruntime")
    r = run("export", "--model", tiny_model, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.returncode == 0, r.stderr
    assert "input 1x3x360x480" in r.stdout  # exactly the work size: PSP pooling exported as exact matrices
    diff = float(r.stdout.split("max abs diff ")[1].split(",")[0])
    assert diff < 1e-3


def test_train_command_round_trips_through_the_parser():
    """Cards record `command`: parsing it back gives the same TrainConfig."""
    import shlex

    from sis.cli.parser import build_parser
    from sis.cli.train import train_config
    from sis.training.config import TrainConfig, train_command
    cfgs = [TrainConfig(model="unet-resnet18", data="/data/cam vid", out="runs/x"),
            TrainConfig(model="pspnet-vgg11_bn", data="d", out="o", init="weights/pspnet-vgg11_bn", epochs=7,
                        max_steps=100, batch_size=4, crop=(352, 480), scale=(0.75, 1.5), flips="", lr=2e-3,
                        optimizer="adamw", weight_decay=1e-4, schedule="poly", warmup_steps=200,
                        class_weighting="sqrt-median", freeze_encoder=True, seed=3, device="cpu", amp=False,
                        channels_last=False, train_limit=5, val_limit=2, val_every=2, resume=False,
                        save_half=True, threads=3, splits=("train", "val"), teacher="weights/unet-vgg11_bn,x",
                        teacher_tta="flip", distill_alpha=0.7, distill_temperature=2.0, teacher_scale=0.5),
            # fine-tuning a folder: augmentation left at TrainConfig's defaults (full frames, paper flips)
            # must not turn into the folder's recipe when the command is run again
            TrainConfig(model="pspnet-resnet18", data="mine", out="o", init="weights/pspnet-resnet18", max_steps=200,
                        replay="../shared/camvid", replay_ratio=0.25, replay_limit=40)]
    for cfg in cfgs:
        cmd = train_command(cfg)
        assert cmd.startswith("python -m sis train ")
        back = train_config(build_parser().parse_args(shlex.split(cmd)[3:]))
        assert back == cfg, cmd
        assert train_command(cfg.to_dict() | {"crop": list(cfg.crop) if cfg.crop else None,
                                              "scale": list(cfg.scale)}) == cmd  # a card's JSON recipe
    assert "--crop full --scale 1.0,1.0 --flips hv" in train_command(cfgs[2])
    assert train_command(cfgs[2]).endswith("--train-encoder")  # spelled out for a folder, whose card may freeze it


def test_every_training_option_is_written_once():
    """The parser's train options and train_command both come from training.config.FLAGS: every
    TrainConfig field but the three positional-like ones has exactly one flag there, and the parser has it."""
    from dataclasses import fields

    from sis.cli.parser import build_parser
    from sis.training.config import FLAGS, TrainConfig
    assert set(FLAGS) == {f.name for f in fields(TrainConfig)} - {"model", "data", "out"}
    train = next(a for a in build_parser()._subparsers._group_actions[0].choices["train"]._actions
                 if a.dest == "init").container
    spelled = {o for a in train._actions for o in a.option_strings}
    assert {f.name for f in FLAGS.values()} | {f.off for f in FLAGS.values() if f.off} <= spelled


def test_fine_tuning_unet_resnet18_freezes_its_encoder_unless_told():
    """Its card measured that a few frames teach it more, and it forgets other streets less, with the encoder
    frozen (docs/correct.md); the other shipped models train their encoder."""
    from sis.cli.parser import build_parser
    from sis.cli.train import train_config
    args = "train --init weights/{} --data d --max-steps 5".split()
    for name, frozen in [("unet-resnet18", True), ("pspnet-resnet18", False), ("unet-vgg11_bn", False)]:
        a = build_parser().parse_args([x.format(name) for x in args])
        assert train_config(a).freeze_encoder is frozen, name
    a = build_parser().parse_args([x.format("unet-resnet18") for x in args] + ["--train-encoder"])
    assert train_config(a).freeze_encoder is False
    a = build_parser().parse_args([x.format("pspnet-resnet18") for x in args] + ["--freeze-encoder"])
    assert train_config(a).freeze_encoder is True
