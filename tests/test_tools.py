"""The helper scripts behind the shipped weights (tools/): what the GPU training relies on."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from conftest import ROOT, write_dataset

from sis.data.dataset import load_split
from sis.training.loop import lr_at


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


@pytest.mark.slow
def test_gpu_train_runs_a_plan_of_fixed_and_fitted_jobs(tiny_data, tmp_path):
    """The script a lent GPU runs, rehearsed on the CPU: a job with --epochs runs exactly that; one
    without is timed over 4 epochs and given what fits the budget; the runs come back packed."""
    import subprocess
    import tarfile
    plan = tmp_path / "plan.txt"
    plan.write_text("# a comment\nfixed pspnet-resnet18 --epochs 1 --seed 1\n\nfitted pspnet-resnet18\n")
    out = tmp_path / "out"
    import sys
    env = dict(os.environ, PYTHON=sys.executable, DATA=str(tiny_data), OUT=str(out), RUNS=str(tmp_path / "runs"),
               EXTRA="--device cpu --val-limit 1")
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_train.sh"), "45", str(plan)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fitted: 4 epochs" in r.stdout and "fixed done 1 epochs" in r.stdout and "fitted done 4 epochs" in r.stdout
    packed = tmp_path / "runs.tar"
    packed.write_bytes(b"".join(p.read_bytes() for p in sorted(out.glob("runs.tar.*"))))
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert "fixed/model.safetensors" in names and "fitted/card.json" in names
    assert not any("checkpoint" in n for n in names)
    import json
    with tarfile.open(packed) as tar:
        card = json.load(tar.extractfile("fixed/card.json"))
    assert card["recipe"]["seed"] == 1 and card["recipe"]["crop"] == [352, 480]


def test_seed_spread_by_hand(tiny_model, tiny_data):
    tool = _tool("seed_spread")
    s = tool.spread([64.0, 65.0, 66.5])
    assert s["mean"] == pytest.approx(65.1666667) and s["range"] == 2.5 and s["min"] == 64.0
    assert s["sd"] == pytest.approx(((1.1666667 ** 2 + 0.1666667 ** 2 + 1.3333333 ** 2) / 2) ** 0.5)
    assert tool.spread([70.0])["sd"] is None
    rows = tool.evaluate_runs([tiny_model, tiny_model], str(tiny_data))
    assert rows[0]["miou"] == rows[1]["miou"] and 0 <= rows[0]["miou"] <= 1 and rows[0]["epochs"] is not None


def test_adapt_protocol_sees_the_street_through_a_shift(tiny_data, tmp_path):
    """--shift dusk:3 darkens the user's frames and the near frames alike (the same draw per val index),
    labels untouched; a geometric shift is refused in one sentence."""
    tool = _tool("adapt_protocol")
    assert tool.parse_shift("") is None and tool.parse_shift("dusk") == ("dusk", 3)
    with pytest.raises(SystemExit, match="moves pixels; pick a photometric one"):
        tool.parse_shift("zoom_in:2")
    picked = tool.user_dataset(tiny_data, tmp_path / "user", every=1, n=2, shift=("dusk", 3))
    user = load_split(tmp_path / "user", "train")
    val = load_split(tiny_data, "val")
    near = tool.through(val.subset(picked), ("dusk", 3))
    assert all(torch.equal(a, b) for a, b in zip(user.images, near.images))  # one street, one camera
    assert all(torch.equal(a, b) for a, b in zip(user.masks, val.subset(picked).masks))
    assert all(a.float().mean() < 0.8 * b.float().mean() for a, b in zip(user.images, val.subset(picked).images))
    rest = tool.through(val.subset([i for i in range(len(val)) if i not in picked]), ("dusk", 3))
    street = tool.street_folder(tmp_path / "user", rest, tmp_path / "street")  # what `sis adapt` reads, unlabelled
    assert len(list(street.iterdir())) == len(picked) + len(rest) > len(picked)


def _run_script(name: str, args: list, monkeypatch, capsys) -> str:
    """tools/NAME.py run as ``python tools/NAME.py ARGS`` would run it, in this process (torch's import is
    paid once per test session); its stdout."""
    import runpy
    import sys
    monkeypatch.setattr(sys, "argv", [str(ROOT / "tools" / f"{name}.py"), *map(str, args)])
    capsys.readouterr()
    runpy.run_path(str(ROOT / "tools" / f"{name}.py"), run_name="__main__")
    return capsys.readouterr().out


def test_unlabeled_gain_blends_one_estimate_into_each_share(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    """One adaptation pass, one model per share: a share of 1 is the original (its score exactly the
    'before'), 'rule' is the share `sis adapt` keeps for that many frames."""
    import json

    from sis.adaptation.unlabeled import training_share
    out = tmp_path / "gain.json"
    said = _run_script("unlabeled_gain", [tiny_model, "--data", tiny_data, "--shifts", "clean,dusk", "--every", "1",
                                          "--source-share", "0,rule,1", "--adapt-frames", "2", "--spread",
                                          "--json", out], monkeypatch, capsys)
    rows = json.loads(out.read_text())["rows"]
    assert [(row["shift"], row["adapted_on"]) for row in rows] == [("clean", 2)] * 3 + [("dusk", 2)] * 3
    assert [row["source_share"] for row in rows[:3]] == [0.0, training_share(2), 1.0]
    assert all(row["after"] == row["before"] for row in rows if row["source_share"] == 1.0)
    assert "training statistics kept 0.80" in said
    assert all(row["spread"] for row in rows) and "spread frames" in said


@pytest.mark.slow
def test_unlabeled_gain_fits_the_adapted_model_as_adapt_does(tiny_model, tiny_data, tmp_path, monkeypatch, capsys):
    """--fit-epochs: after the statistics, each --fit in turn from the same adapted model, as many steps as
    `sis adapt` takes for that many frames, scored at --score-at and at the end; pseudo-labels say how much of
    a frame they cover."""
    import json

    from sis.adaptation.unlabeled import fit_steps
    out = tmp_path / "fit.json"
    said = _run_script("unlabeled_gain", [tiny_model, "--data", tiny_data, "--shifts", "dusk", "--every", "1",
                                          "--source-share", "rule", "--adapt-frames", "2", "--fit-epochs", "1",
                                          "--fit", "entropy:norm:1e-4,pseudo:all:1e-5", "--score-at", "10",
                                          "--json", out], monkeypatch, capsys)
    rows = json.loads(out.read_text())["rows"]
    fits = [row for row in rows if "fit" in row]
    steps = fit_steps(2, 1)  # the least `sis adapt` takes, more than one pass over two frames
    assert [(row["fit"], row["fit_steps"]) for row in fits] == [
        (fit, n) for fit in ("entropy:norm:0.0001", "pseudo:all:1e-05") for n in (10, steps)] and steps > 10
    assert all(row["before"] == rows[0]["before"] and 0 <= row["after"] <= 1 and "ece_after" in row for row in fits)
    assert f"+ entropy norm lr 0.0001, {steps} steps:" in said and "% of pixels" in said


def test_ship_engine_table_covers_cards_timed_on_other_hosts():
    """A card shipped where bf16 does not pay has no torch-bf16 figure: the table says '-' there (it crashed)."""
    ship = _tool("ship")

    def card(name, engines):
        return {"model": name, "fast_path": {"default": "onnxruntime-int8", "channels_last_fp32": None, "backends": {
            e: {"median_ms": 10.0 * (i + 1), "speedup_vs_eager": 1.0 + i, "miou_delta": None if e == "eager" else -0.1}
            for i, e in enumerate(engines)}}}
    rows = ship.fast_table([card("a", ["eager", "onnxruntime-int8"]), card("b", ["eager", "torch-bf16"])]).splitlines()
    assert rows[0].startswith("| model | eager | onnxruntime-int8 | torch-bf16 |")
    assert rows[2] == "| a | 10 ms, 1.00x, unchecked | 20 ms, 2.00x, -0.10 | - | - | onnxruntime-int8 |"
    assert rows[3] == "| b | 10 ms, 1.00x, unchecked | - | 20 ms, 2.00x, -0.10 | - | onnxruntime-int8 |"


def test_shipping_new_weights_of_the_same_architecture_can_keep_the_replaced_cards_timings():
    """Accuracy is the new weights'; timings are the old host's, so every shipped card stays timed on one host."""
    ship = _tool("ship")
    old = {"model": "m", "complexity": {"params": 5, "gflops": 2.0}, "latency": {"median_ms": 100.0, "cpu": "A"},
           "fast_path": {"default": "onnxruntime-int8", "cpu": "A", "threads": 2, "channels_last_fp32": {"x": 1},
                         "backends": {"eager": {"median_ms": 100.0, "speedup_vs_eager": 1.0, "miou": 0.70},
                                      "torch-bf16": {"median_ms": 40.0, "speedup_vs_eager": 2.5, "miou": 0.70},
                                      "onnxruntime-int8": {"median_ms": 30.0, "speedup_vs_eager": 3.3, "miou": 0.69,
                                                           "miou_delta": -0.1}}}}
    new = {"model": "m", "complexity": {"params": 5, "gflops": 2.0}, "latency": {"median_ms": 300.0, "cpu": "B"},
           "fast_path": {"default": "onnxruntime-int8", "cpu": "B", "threads": 2, "channels_last_fp32": None,
                         "backends": {"eager": {"median_ms": 300.0, "speedup_vs_eager": 1.0, "miou": 0.72},
                                      "onnxruntime-int8": {"median_ms": 160.0, "speedup_vs_eager": 1.9, "miou": 0.715,
                                                           "miou_delta": -0.5}}}}
    kept = ship.keep_timings(new, old)
    b = kept["fast_path"]["backends"]
    assert b["onnxruntime-int8"] == {"median_ms": 30.0, "speedup_vs_eager": 3.3, "miou": 0.715, "miou_delta": -0.5}
    assert b["eager"]["miou"] == 0.72 and b["eager"]["median_ms"] == 100.0
    assert b["torch-bf16"]["median_ms"] == 40.0 and b["torch-bf16"]["miou_delta"] is None  # unchecked, not the old
    assert kept["fast_path"]["cpu"] == "A" and "B" in kept["fast_path"]["timing_note"]
    assert kept["latency"]["median_ms"] == 100.0
    with pytest.raises(SystemExit, match="architecture changed"):
        ship.keep_timings({**new, "complexity": {"params": 6, "gflops": 2.0}}, old)


@pytest.mark.slow
def test_int8_carry_scores_the_adapted_and_the_starting_int8_graph_on_the_same_frames(tiny_model, tiny_data,
                                                                                     tmp_path, capsys, monkeypatch):
    """Each shift gives every frame's agreement for both models, and pooled over all, fours and pairs spread
    over the frames; a start without activation ranges is refused in one sentence."""
    import json
    import shutil

    from sis.engines import export
    from sis.engines.int8 import RANGES_FILE, quantize_graph
    from sis.packaging.carry import INT8_SLACK
    from sis.zoo import models
    carry = _tool("int8_carry")  # run in this process: torch's import is paid once per test session
    groups = carry.groups
    assert groups(8, 2) == [[0, 4], [1, 5], [2, 6], [3, 7]] and groups(8, 4) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert groups(4, 4) == [[0, 1, 2, 3]] and groups(3, 4) == []
    start = tmp_path / "start"
    shutil.copytree(tiny_model, start, ignore=shutil.ignore_patterns("checkpoint"))
    tool = [str(start), "--data", str(tiny_data)]
    with pytest.raises(SystemExit) as refused:
        carry.main(tool)
    assert refused.value.code == 2 and f"has no {RANGES_FILE}: nothing to carry" in capsys.readouterr().err
    data = write_dataset(tmp_path / "ds", n_train=2, n_val=6)
    tool[-1] = str(data)
    model, cfg = models.load_model(start)
    graph = export.export_graph(model, cfg, (64, 96), tmp_path / "g.onnx")
    quantize_graph(graph, tmp_path / "q.onnx", (64, 96), start / RANGES_FILE)
    out = tmp_path / "carry.json"
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    assert carry.main(tool + ["--shifts", "clean,dusk", "--frames", "4", "--score-every", "1", "--fit-epochs", "0",
                              "--json", str(out)]) == 0
    said = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [(row["shift"], row["frames"], len(row["fours"]), len(row["pairs"])) for row in rows] == \
        [("clean", 4, 1, 2), ("dusk", 4, 1, 2)]
    assert [row["fit_steps"] for row in rows] == [0, 0]  # --fit-epochs 0: the statistics alone
    for row in rows:
        assert all(0 <= v <= 1 for v in row["adapted"] + row["start"])
        assert row["all"] == row["fours"]  # four frames: the one four is all of them
        assert row["check"] == (row["all"][0][0] >= row["all"][0][1] - INT8_SLACK)  # the check takes those four
        assert row["scored_on"] == 2 and all(0 <= v <= 1 for m in row["labelled"].values() for v in m.values())
    assert rows[0]["start"] != rows[1]["start"]  # the shift reached the frames both models were scored on
    assert "adapted" in said and "on 4 frames" in said
    assert carry.main(tool + ["--frames", "4", "--score-every", "1", "--scale-ranges", "0.1", "--json", str(out)]) == 0
    said = capsys.readouterr().out
    kept, clipped = json.loads(out.read_text())["scaled"]
    assert (kept["factor"], clipped["factor"]) == (1.0, 0.1)
    assert clipped["agreement"] < kept["agreement"]  # a tenth of every range clips the activations: unlike eager
    assert "ranges x0.1: int8 labels" in said
