"""The inference fast path: exact export, int8 engine, accuracy gate, comparison command."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REAL_CAMVID, ROOT, in_process

from sis import engines, zoo
from sis.data.dataset import load_split
from sis.engines import cache, export, int8, policy, templates
from sis.engines.predict import predict
from sis.engines.torch_engines import Bf16Engine, EagerEngine, fold_batchnorm
from sis.bench import compare_engines, compare_train
from sis.evaluation.evaluate import evaluate
from sis.zoo import models
from sis.zoo.models import load_for_inference


@pytest.mark.parametrize("n,bins", [(23, 6), (30, 3), (7, 2), (5, 6), (1, 1)])
def test_pool_matrix_is_adaptive_avg_pool(n, bins):
    x = torch.randn(2, 3, n, n + 4)
    ref = F.adaptive_avg_pool2d(x, bins)
    got = export.pool_matrix(n, bins) @ x @ export.pool_matrix(n + 4, bins).t()
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("name", ["pspnet-resnet18", "unet-vgg11_bn"])
def test_onnx_graph_matches_eager_at_odd_size(name):
    """Normalise, zero padding to the stride, PSP pooling at a size the bins do not divide, crop: all as eager."""
    torch.manual_seed(0)
    model, cfg = models.create_model(name)
    model.eval().requires_grad_(False)
    x = torch.randint(0, 256, (2, 3, 75, 101), dtype=torch.uint8).numpy()
    ref = EagerEngine(model, cfg)(x)
    got = engines.create_engine("onnxruntime", model, cfg)(x)
    assert got.shape == ref.shape == (2, 11, 75, 101) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-3


@pytest.mark.slow
def test_int8_engine_builds_once_and_predicts(tiny_model):
    model, cfg = load_for_inference(tiny_model)
    engine = engines.create_engine("onnxruntime-int8", model, cfg)
    img = np.random.default_rng(0).integers(0, 255, (90, 130, 3), np.uint8)
    pred = predict(engine, img)
    assert pred.labels.shape == (90, 130) and pred.labels.max() < 11
    path = engine.graph_path(pred.work_size)
    assert path.name.endswith(".int8.onnx") and path.is_file()
    stamp = path.stat().st_mtime_ns
    again = engines.create_engine("onnxruntime-int8", model, cfg)  # a new process would find the same file
    again(img.transpose(2, 0, 1).copy()[None])
    assert again.graph_path(pred.work_size).stat().st_mtime_ns == stamp


def _card(**engines_) -> zoo.ModelCard:
    return zoo.ModelCard.from_dict({"fast_path": {"backends": engines_}})


@pytest.fixture
def any_host(monkeypatch):
    """Every engine runs here (graph engines on the CPU only, as everywhere): the policy's rule alone decides."""
    monkeypatch.setattr(policy, "unavailable_reason", lambda name, device="cpu", probe=True:
                        f"{name} runs on the CPU only" if engines.is_graph(name) and device != "cpu" else None)


def test_policy_respects_the_accuracy_gate(any_host):
    assert policy.decide(zoo.ModelCard()).name == "eager"  # on a CPU, a faster engine only after a passed check
    failed = policy.decide(_card(**{"onnxruntime-int8": {"miou_delta": -0.8, "speedup_vs_eager": 3.0}}))
    assert failed.name == "eager" and "moved -0.80 points" in failed.passed_over["onnxruntime-int8"]
    passed = _card(**{"onnxruntime-int8": {"miou_delta": -0.3, "speedup_vs_eager": 3.0},
                      "torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 1.8}})
    choice = policy.decide(passed)
    assert choice.name == "onnxruntime-int8" and choice.figure.speedup == 3.0 and not choice.figure.timed_here
    assert choice.passed_over["torch-bf16"] == "slower than onnxruntime-int8 (1.8x against 3.0x)"
    assert choice.passed_over["onnxruntime"].startswith("no speed recorded")
    # the fastest passing one wins; a passing engine that was slower than eager is never chosen
    slow_int8 = _card(**{"onnxruntime-int8": {"miou_delta": 0.1, "speedup_vs_eager": 1.5},
                         "torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 1.8}})
    assert policy.decide(slow_int8).name == "torch-bf16"
    slower = policy.decide(_card(**{"torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 0.64}}))
    assert slower.name == "eager" and slower.passed_over["torch-bf16"] == "not faster than eager (0.64x)"
    assert policy.decide(zoo.ModelCard(), device="cuda").name == "torch-bf16"
    cuda_failed = _card(**{"torch-bf16": {"miou_delta": -0.9, "speedup_vs_eager": 2.0}})
    assert policy.decide(cuda_failed, device="cuda").name == "eager"


def test_small_hosts_keep_to_graph_engines(any_host):
    """Under host.SMALL_HOST_MB a PyTorch model beside the graphs does not fit: torch-bf16 is passed
    over even where it is the fastest, with the reason."""
    card = _card(**{"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 2.5},
                    "torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 3.5}})
    assert policy.decide(card).name == "torch-bf16"
    small = policy.decide(card, small_host=True)
    assert small.name == "onnxruntime-int8" and "keeps to graph engines" in small.passed_over["torch-bf16"]
    assert policy.decide(zoo.ModelCard(), small_host=True).name == "eager"  # nothing checked: the reference


def test_an_unavailable_engine_is_passed_over_with_its_reason(monkeypatch):
    card = _card(**{"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 2.5}})
    monkeypatch.setattr(policy, "unavailable_reason",
                        lambda name, device="cpu", probe=True: "the 'onnxruntime' package is not installed"
                        if name.startswith("onnx") else None)
    choice = policy.decide(card)
    assert choice.name == "eager" and choice.runnable == ["eager", "torch-bf16"]
    assert choice.passed_over["onnxruntime-int8"] == "unavailable: the 'onnxruntime' package is not installed"


def test_bf16_is_probed_only_where_it_would_win(monkeypatch):
    """Timing bf16 on this CPU imports torch: the policy asks only when bf16 would be chosen."""
    probed = []

    def reason(name, device="cpu", probe=True):
        if name == "torch-bf16" and probe:
            probed.append(name)
            return "bf16 measured 0.64x of fp32 on this CPU (a probe conv), so it is not used"
        return None
    monkeypatch.setattr(policy, "unavailable_reason", reason)
    slower = _card(**{"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0},
                      "torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 2.0}})
    assert policy.decide(slower).name == "onnxruntime-int8" and probed == []
    faster = _card(**{"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0},
                      "torch-bf16": {"miou_delta": 0.0, "speedup_vs_eager": 4.0}})
    choice = policy.decide(faster)
    assert probed == ["torch-bf16"] and choice.name == "onnxruntime-int8"
    assert choice.passed_over["torch-bf16"].startswith("unavailable: bf16 measured 0.64x")


@pytest.mark.parametrize("forced", ["0", "1"])
def test_cpu_bf16_only_where_measured_faster(monkeypatch, forced):
    from sis.zoo import runtime
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    monkeypatch.setenv("SIS_CPU_BF16", forced)
    runtime.cpu_bf16_speedup.cache_clear()
    try:
        on = runtime.amp_dtype(torch.device("cpu")) == torch.bfloat16
        assert on == (forced == "1")
        why = engines.unavailable_reason("torch-bf16")
        assert (why is None) if on else ("SIS_CPU_BF16=0" in why)
        speed = runtime.cpu_bf16_speedup()  # still the probe's measurement, not a made-up figure
        assert speed is not None and speed > 0 and speed not in (2.0, 0.0)
    finally:
        monkeypatch.delenv("SIS_CPU_BF16")
        runtime.cpu_bf16_speedup.cache_clear()


def test_cpu_bf16_probe_measures():
    from sis import host
    from sis.zoo import runtime
    speed = runtime.cpu_bf16_speedup()
    if not host.cpu_has_bf16():
        assert speed is None  # no bf16 instructions: nothing to time
    else:  # a ratio of two measured times
        assert speed is not None and 0.05 < speed < 50


def test_unknown_and_unavailable_engines_say_why():
    with pytest.raises(engines.EngineError, match="unknown engine 'tensorrt'"):
        engines.create_engine("tensorrt", torch.nn.Identity(), zoo.make_config("unet-resnet18"))
    assert "CPU only" in engines.unavailable_reason("onnxruntime-int8", "cuda")


@pytest.mark.slow
def test_compare_engines_command_json(tiny_model, tiny_data, capsys):
    out = in_process(capsys, "bench", "--compare-engines", "--model", tiny_model, "--data", tiny_data, "--size", "64x96",
                     "--repeats", "2", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["reference"] == "eager" and set(res["engines"]) >= {"eager", "onnxruntime", "onnxruntime-int8"}
    for name, b in res["engines"].items():
        assert set(b) >= {"median_ms", "images_per_s", "speedup_vs_eager", "miou_delta"}
        assert b["median_ms"] > 0 and b["images_per_s"] == pytest.approx(1000 / b["median_ms"])
    assert res["engines"]["eager"]["speedup_vs_eager"] == 1.0 and res["engines"]["eager"]["miou_delta"] == 0.0
    cl = res["channels_last_fp32"]  # the yardstick timed in the same rounds as the reference
    assert cl["median_ms"] > 0 and cl["speedup_vs_eager"] == pytest.approx(res["engines"]["eager"]["median_ms"]
                                                                        / cl["median_ms"])
    # fp32 ONNX is the same function as eager: same val mIoU on the same frames
    assert abs(res["engines"]["onnxruntime"]["miou_delta"]) < 0.05


@pytest.mark.slow
def test_compare_train_reports_both_paths_and_loss_curves(tiny_data):
    res = compare_train("pspnet-resnet18", str(tiny_data), batch=2, size=(64, 96), warmup=1, repeats=1,
                        loss_steps=3)
    assert res["eager_ms"] > 0 and res["fast_ms"] > 0 and res["speedup"] == res["eager_ms"] / res["fast_ms"]
    assert len(res["loss_curves"]["eager"]) == len(res["loss_curves"]["fast"]) == 3
    assert all(np.isfinite(res["loss_curves"]["fast"]))


@pytest.fixture(scope="module")
def val_spread():
    """13 real val frames, every 8th: all of val's sequences, not the first few seconds of one."""
    from sis.classes import CAMVID
    from sis.data.dataset import Frames
    if not (REAL_CAMVID / "val").is_dir():
        pytest.skip(f"no CamVid at {REAL_CAMVID}")
    f = load_split(str(REAL_CAMVID), "val", None, CAMVID)
    return Frames(f.names[::8], f.images[::8], f.masks[::8], f.classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.PAPER_MODELS)
def test_chosen_engine_keeps_val_miou_on_real_frames(name, val_spread):
    """Each shipped model on the engine its card's check chose: within 0.5 point of eager fp32 on real val frames."""
    if name not in zoo.shipped_models():
        pytest.fail(f"{name} is not shipped in weights/")
    folder = zoo.shipped_models()[name]
    model, cfg = load_for_inference(folder)
    chosen = policy.decide(zoo.read_card(folder)).name
    assert chosen != "eager"
    frames = val_spread
    ref = evaluate(model, cfg, frames, torch.device("cpu"), amp=False)["miou"]
    got = evaluate(None, cfg, frames, torch.device("cpu"), amp=False,
                   engine=engines.create_engine(chosen, model, cfg, folder=folder))["miou"]
    assert abs(100 * (got - ref)) <= engines.MAX_MIOU_DELTA, (chosen, ref, got)


def test_compare_engines_on_shipped_default_records_speed(tmp_path):
    res = compare_engines(zoo.DEFAULT_MODEL, None, ["onnxruntime-int8"], (120, 160), warmup=1, repeats=2)
    assert list(res["engines"]) == ["eager", "onnxruntime-int8"] and res["val_frames"] == 0
    assert res["engines"]["onnxruntime-int8"]["miou"] is None and res["engines"]["onnxruntime-int8"]["median_ms"] > 0


def test_compare_engines_accuracy_alone_times_nothing(tiny_model, tiny_data, monkeypatch):
    """timed=False (weights whose timings are kept from the replaced card): val mIoU per engine, no timing rounds."""
    from sis import bench as B

    def no_timing(*a, **k):
        raise AssertionError("timed although timed=False")
    monkeypatch.setattr(B, "_interleaved", no_timing)
    res = compare_engines(str(tiny_model), str(tiny_data), ["onnxruntime"], (64, 96), timed=False)
    assert res["default"] is None and res["channels_last_fp32"] is None and res["val_frames"] > 0
    for b in res["engines"].values():
        assert b["median_ms"] is None and 0 <= b["miou"] <= 1
    assert abs(res["engines"]["onnxruntime"]["miou_delta"]) < 0.05 and res["engines"]["eager"]["miou_delta"] == 0


def test_int8_reuses_calibrated_ranges_for_new_sizes(tiny_model, monkeypatch):
    """Calibration runs once per model; another image size (or a shipped int8_ranges.json) skips it."""
    engine = engines.load_engine(tiny_model, "onnxruntime-int8")
    engine.prepare((64, 96))
    assert engine.ranges_path().is_file() and engine.model is None

    def no_frames(size, folder=None):
        raise AssertionError("calibration ran again")
    monkeypatch.setattr(int8, "calibration_images", no_frames)
    out = engine(np.zeros((1, 3, 96, 64), np.uint8))
    assert out.shape == (1, 11, 96, 64)


def test_int8_graph_is_cached_by_its_ranges_as_well_as_its_weights(tiny_model, tmp_path, monkeypatch):
    """The same weights quantised with other ranges (an adapted model's carried ones, a tool's scaled ones)
    build a graph of their own, not the one cached for the first ranges."""
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    size, x = (64, 96), np.random.default_rng(0).integers(0, 255, (1, 3, 64, 96), np.uint8)
    calibrated = engines.load_engine(folder, "onnxruntime-int8")
    plain, first = calibrated(x), calibrated.cached_path(size)
    shutil.copyfile(calibrated.ranges_path(), folder / int8.RANGES_FILE)  # shipped beside the weights
    own = engines.load_engine(folder, "onnxruntime-int8")
    second = own.cached_path(size)
    assert second != first and first.is_file()
    assert np.array_equal(own(x), plain)  # the same ranges, a file of its own: the same graph
    ranges = json.loads((folder / int8.RANGES_FILE).read_text())
    for tensor in ranges["data"].values():  # ONNX Runtime's calibration cache: every activation's min and max
        for end in ("lowest", "highest"):
            tensor[end]["data"] = [v / 4 for v in tensor[end]["data"]]
    (folder / int8.RANGES_FILE).write_text(json.dumps(ranges))
    narrow = engines.load_engine(folder, "onnxruntime-int8")
    assert narrow.cached_path(size) not in (second, first)
    assert not np.array_equal(narrow(x), plain) and second.is_file()


def test_template_rebuilds_the_exported_graph_and_refuses_other_weights(tiny_model, tmp_path, monkeypatch):
    """A shipped template + the folder's weights give the exported graph back, exactly; a template
    made for other weights is not used."""
    import shutil

    import onnxruntime as ort
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    model, cfg = models.load_model(folder)
    size = (64, 96)
    graph = export.export_graph(model, cfg, size, tmp_path / "g.onnx")
    tpl = templates.write_template(graph, folder, size)
    assert tpl.stat().st_size < graph.stat().st_size / 4  # the weights stay in model.safetensors
    assert templates.fill_template(folder, size, tmp_path / "filled.onnx")
    x = np.random.default_rng(0).uniform(0, 255, (1, 3, *size)).astype(np.float32)
    a, b = (ort.InferenceSession(str(p)).run(None, {"image": x})[0] for p in (graph, tmp_path / "filled.onnx"))
    assert np.array_equal(a, b)
    assert not templates.fill_template(folder, (32, 32), tmp_path / "none.onnx")  # no template for that size
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")  # other weights/config
    assert not templates.fill_template(folder, size, tmp_path / "stale.onnx")
    assert not (tmp_path / "stale.onnx").exists()
    tpl.write_bytes(b"not an onnx file")  # a damaged template: the engine exports instead
    assert not templates.fill_template(folder, size, tmp_path / "damaged.onnx")


def test_an_adapted_model_carries_its_starting_models_templates(tiny_model, tmp_path, monkeypatch):
    """A model whose BatchNorm tensors changed (an adaptation) gets its start's templates keyed to its own
    weights: filled from them they give its own exported graph, not its start's; a template made for other
    weights than the start's is not carried."""
    import shutil

    import onnxruntime as ort
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    start, adapted = tmp_path / "start", tmp_path / "adapted"
    shutil.copytree(tiny_model, start, ignore=shutil.ignore_patterns("checkpoint"))
    model, cfg = models.load_model(start)
    size = (64, 96)
    templates.write_template(export.export_graph(model, cfg, size, tmp_path / "g.onnx"), start, size)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.add_(0.5)
                m.weight.mul_(1.5)
    models.save_model(model, cfg, adapted)
    assert templates.carry_templates(start, adapted) == 1
    assert templates.fill_template(adapted, size, tmp_path / "filled.onnx")
    own = export.export_graph(model, cfg, size, tmp_path / "own.onnx")
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, *size)).astype(np.float32)
    a, b, c = (ort.InferenceSession(str(p)).run(None, {"image": x})[0]
               for p in (own, tmp_path / "filled.onnx", tmp_path / "g.onnx"))
    assert np.allclose(a, b, atol=1e-4) and not np.allclose(a, c, atol=1e-2)
    (start / "config.json").write_text((start / "config.json").read_text() + " ")  # its template is now stale
    assert templates.carry_templates(start, adapted) == 0


def _fresh_process(code: str, cache) -> list[str]:
    """The lines ``code`` prints in a new Python process with an empty graph cache at ``cache``."""
    env = dict(__import__("os").environ, SIS_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()


@pytest.mark.slow
def test_shipped_models_build_their_graphs_without_torch(tmp_path):
    """A first start, a landscape and a portrait photo on a PSPNet and a U-Net (tests/pages/test_pages.py runs all four
    at 360x480): the int8 graphs come from the shipped templates, so torch, smp, timm and torchvision
    are never imported."""
    code = ("import sys; from sis import engines, zoo\n"
            "from sis.engines.cache import cache_dir\n"
            "for name in ('pspnet-resnet18', 'unet-vgg11_bn'):\n"
            "    engine = engines.load_engine(zoo.shipped_models()[name], 'onnxruntime-int8')\n"
            "    engine.prepare((360, 480)); engine.prepare((480, 360))\n"
            "print(sorted(m for m in ('torch', 'segmentation_models_pytorch', 'timm', 'torchvision') "
            "if m in sys.modules))\n"
            "print(len(list(cache_dir().glob('*.int8.onnx'))))")
    imported, graphs = _fresh_process(code, tmp_path)[-2:]
    assert imported == "[]" and int(graphs) == 4


@pytest.mark.parametrize("name", sorted(zoo.shipped_models()))
def test_shipped_templates_cover_common_photo_shapes(name):
    """Every shipped model carries a small template for 4:3, 16:9 and 3:2 photos both ways and for the accurate
    mode's scales of 360x480, made for its current weights, holding none of the tensors model.safetensors has."""
    import onnx
    from safetensors import safe_open
    folder = zoo.shipped_models()[name]
    cfg = zoo.read_config(folder)
    sizes = templates.template_sizes(cfg)
    assert sizes[:2] == [(360, 480), (480, 360)] and (312, 554) in sizes and (509, 339) in sizes
    assert {(270, 360), (450, 600), (540, 720)} <= set(sizes)  # the accurate mode's scales of 360x480
    assert len(sizes) == 9
    assert sorted(p.name for p in folder.glob("graph-*.onnx")) == sorted(f"graph-{h}x{w}.onnx" for h, w in sizes)
    with safe_open(str(folder / "model.safetensors"), "np") as f:
        weights = set(f.keys())
    for size in sizes:
        t = onnx.load(str(templates.template_path(folder, size)))
        meta = {p.key: p.value for p in t.metadata_props}
        assert meta["sis_weights_key"] == cache.file_key(folder)
        assert not {templates.weight_name(i.name) for i in t.graph.initializer} & weights
        assert templates.template_path(folder, size).stat().st_size < 100_000


def test_cache_bound_removes_least_recently_used_graphs(tmp_path, monkeypatch):
    import os
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path))
    for i, name in enumerate(["a.onnx", "b.onnx", "c.int8.onnx", "d.onnx"]):
        (tmp_path / name).write_bytes(b"x" * 2**20)  # 1 MiB each, last used in this order
        os.utime(tmp_path / name, (1000 + i, 1000 + i))
    (tmp_path / "m.int8_ranges.json").write_text("{}")
    (tmp_path / "e.123.tmp.onnx").write_bytes(b"x")  # another process's build in flight: left alone
    (tmp_path / "f.9.pre.onnx").write_bytes(b"x")
    os.utime(tmp_path / "f.9.pre.onnx", (1, 1))  # ... and one of a process that died long ago
    removed = cache.prune_cache(keep=[tmp_path / "a.onnx"], limit_mb=3)
    assert sorted(p.name for p in removed) == ["b.onnx", "f.9.pre.onnx"]  # oldest first, a is in use
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "c.int8.onnx", "d.onnx", "e.123.tmp.onnx",
                                                          "m.int8_ranges.json"]
    monkeypatch.setenv("SIS_CACHE_MAX_MB", "0")
    assert sorted(p.name for p in cache.prune_cache()) == ["a.onnx", "c.int8.onnx", "d.onnx"]


def test_graph_engine_keeps_few_sizes_loaded_and_the_cache_bounded(tiny_model, tmp_path, monkeypatch):
    """Each upload aspect ratio builds a graph; memory holds SIS_GRAPH_SESSIONS of them and the disk
    cache its bound, and an evicted size comes back right."""
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SIS_GRAPH_SESSIONS", "2")
    monkeypatch.setenv("SIS_CACHE_MAX_MB", "0")  # keep only what is loaded
    model, cfg = load_for_inference(tiny_model)
    engine = engines.create_engine("onnxruntime", model, cfg)
    sizes = [(64, 96), (96, 64), (64, 64)]
    x = {s: np.random.default_rng(0).integers(0, 256, (1, 3, *s), dtype=np.uint8) for s in sizes}
    first = engine(x[sizes[0]])
    for s in sizes[1:]:
        engine(x[s])
    assert list(engine._sessions) == sizes[1:]
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted(engine.cached_path(s).name for s in sizes[1:])
    again = engine(x[sizes[0]])  # evicted from memory and disk: built again, same logits
    assert np.array_equal(again, first)
    assert list(engine._sessions) == [sizes[2], sizes[0]]


def test_this_hosts_measurement_picks_the_engine(any_host):
    """The card's speeds were timed where the model shipped; a comparison kept on this host wins."""
    card = _card(**{"onnxruntime-int8": {"miou_delta": -0.01, "speedup_vs_eager": 3.6},
                    "torch-bf16": {"miou_delta": 0.01, "speedup_vs_eager": 2.0}})
    assert policy.decide(card).name == "onnxruntime-int8"
    rec = zoo.EngineRecord
    here = {"eager": rec(speedup=1.0), "onnxruntime-int8": rec(speedup=2.9),  # no val frames: the card's delta
            "torch-bf16": rec(speedup=3.4)}
    choice = policy.decide(card, here)
    assert choice.name == "torch-bf16" and choice.figure.timed_here and choice.figure.miou_delta == 0.01
    here["torch-bf16"] = rec(speedup=3.4, miou_delta=-0.7)  # this host's own val check failed
    assert policy.decide(card, here).name == "onnxruntime-int8"
    assert policy.decide(zoo.ModelCard(), here).name == "eager"  # no accuracy check anywhere
    only_eager = policy.decide(card, {"eager": rec(speedup=1.0)})
    assert only_eager.name == "eager"
    assert only_eager.passed_over["onnxruntime-int8"] == "not timed in this host's kept engine comparison"


def test_judge_comparison_keeps_full_base_size_comparisons(tiny_model, tmp_path, monkeypatch):
    from sis import host
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path))
    here = [n for n, why in engines.available().items() if why is None]
    timed = {n: {"median_ms": 10.0 + i, "speedup_vs_eager": 1.0 + i, "miou_delta": 0.0} for i, n in enumerate(here)}
    res = {"folder": str(tiny_model), "model": "pspnet-resnet18", "size": [360, 480], "engines": timed,
           "repeats": 5, "host": {"host_key": host.host_key()}}
    assert policy.kept_comparison(tiny_model) is None
    assert policy.judge_comparison(dict(res, size=[240, 320])).kind == "size"  # another size: its ranking may differ
    assert policy.judge_comparison(dict(res, repeats=2)).kind == "rounds"  # too few rounds to rank engines
    assert policy.judge_comparison(dict(res, engines={"eager": timed["eager"]})).kind == "engines"  # not every engine timed
    busy = dict(res, others_cpu_share=0.5)  # timed beside another program: every engine slowed
    assert policy.judge_comparison(busy).kind == "busy" and not busy["kept_for_this_host"]
    said = policy.why_not_kept(busy)
    assert said.kind == "busy" and said.sentence.startswith("other programs used 50% of the CPU while it ran")
    said = policy.why_not_kept(dict(res, size=[240, 320]))
    assert said.kind == "size" and said.sentence.startswith("it was timed at 240x320, not at")
    assert policy.why_not_kept(dict(res, others_cpu_share=policy.BUSY_SHARE)) is None
    assert policy.kept_comparison(tiny_model) is None
    assert policy.judge_comparison(res) is None and res["kept_for_this_host"]
    kept = policy.kept_comparison(tiny_model)
    assert {n: r.speedup for n, r in kept.items()} == {n: t["speedup_vs_eager"] for n, t in timed.items()}
    # the slowest-numbered engine here timed fastest: the policy follows this host's figures
    assert policy.choose_engine(tiny_model).name == (here[-1] if len(here) > 1 else "eager")


def test_host_key_is_the_same_in_every_process():
    code = "from sis import host; print(host.host_key(), host.hostname_hash())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                           env=dict(__import__("os").environ, PYTHONHASHSEED=str(seed))).stdout for seed in (1, 2)}
    assert len(outs) == 1 and len(outs.pop().split()[0]) == 12


@pytest.mark.parametrize("name", ["pspnet-resnet18", "unet-vgg11_bn"])
def test_fold_batchnorm_is_exact_in_fp32(name):
    torch.manual_seed(0)
    model, cfg = models.create_model(name)
    for m in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8).numpy()
    ref, got = EagerEngine(model, cfg)(x), EagerEngine(folded, cfg)(x)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_bf16_engine_falls_back_to_autocast_when_the_fold_is_wrong(monkeypatch):
    from sis.engines import torch_engines
    model, cfg = models.create_model("pspnet-resnet18")
    model.eval()

    def broken(m):
        bad = copy.deepcopy(m)
        next(bad.parameters()).data.add_(1.0)
        return bad
    monkeypatch.setattr(torch_engines, "fold_batchnorm", broken)
    engine = Bf16Engine(model, cfg)
    assert engine._bf16_net() is None and engine.autocast  # autocast over the shared model instead


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.PAPER_MODELS)
def test_bf16_path_keeps_val_miou_on_real_frames(name, val_spread):
    """Folded pure-bf16 inference, where this CPU has it: within 0.5 point of eager fp32 on real val frames."""
    why = engines.unavailable_reason("torch-bf16")
    if why:
        pytest.skip(why)
    model, cfg = load_for_inference(zoo.shipped_models()[name])
    engine = engines.create_engine("torch-bf16", model, cfg)
    assert engine._bf16_net() is not None
    ref = evaluate(model, cfg, val_spread, torch.device("cpu"), amp=False)["miou"]
    got = evaluate(None, cfg, val_spread, torch.device("cpu"), amp=False, engine=engine)["miou"]
    assert abs(100 * (got - ref)) <= engines.MAX_MIOU_DELTA, (ref, got)


def test_bf16_engine_can_own_and_drop_the_fp32_model():
    """The app's bf16 engine keeps only its folded bf16 copy: same logits, no fp32 weights held."""
    torch.manual_seed(0)
    model, cfg = models.create_model("pspnet-resnet18")
    model.eval()
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8).numpy()
    shared = Bf16Engine(model, cfg)
    owner = Bf16Engine(copy.deepcopy(model), cfg, keep_model=False)
    a, b = shared(x), owner(x)
    assert owner.model is None and shared.model is model
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == (1, 11, 64, 96)


def test_engine_choice_is_remembered_until_a_comparison_is_kept(tiny_model, tmp_path, monkeypatch):
    """choose_engine decides once per version of the model's files and of the kept comparisons: asking
    again opens no database; a comparison kept by another process is seen on the next ask."""
    import json
    import os
    import sqlite3
    import subprocess
    import sys

    from sis import engines, host
    from sis.engines import policy
    from sis.engines.cache import file_key
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path / "data"))
    first = policy.choose_engine(tiny_model)
    opened = []
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    assert policy.choose_engine(tiny_model) is first and policy.choose_engine(tiny_model) is first
    assert opened == []
    here = {n: {"speedup_vs_eager": 1.0, "median_ms": 50.0, "miou_delta": 0.0}
            for n, why in engines.available().items() if why is None}
    code = ("import sys, json; from sis import store; store.put_engines(sys.argv[1], sys.argv[2], "
            "'pspnet-resnet18', json.loads(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, host.host_key(), file_key(tiny_model), json.dumps(here)],
                   check=True, env=dict(os.environ))
    again = policy.choose_engine(tiny_model)
    assert again is not first and opened
    assert set(again.figures) == set(here) and all(f.timed_here and f.median_ms == 50.0 for f in again.figures.values())


def test_busy_meter_sees_another_process_use_the_cpu():
    """BusyMeter: another process spinning a core shows as a share of the machine's CPU (this process's
    own time is not counted: a sleep here is not 'busy'). Others' load can only add to it."""
    import subprocess
    import sys
    import time

    import psutil

    from sis.host import BusyMeter, others_share
    # by hand: 2 cores for 1 s; the machine was busy 1.5 s of CPU, of which 0.5 s was this process
    assert others_share(busy_s=1.5, own_s=0.5, wall_s=1.0, cores=2) == pytest.approx(0.5)
    assert others_share(busy_s=0.4, own_s=0.5, wall_s=1.0, cores=2) == 0.0
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        time.sleep(0.3)
        with BusyMeter() as busy:
            time.sleep(1.0)
    finally:
        spin.kill()
    assert busy.others_share > 0.3 / psutil.cpu_count(logical=True)


def test_graph_engine_refuses_to_build_from_a_folder_changed_since_it_loaded(tiny_model, tmp_path, monkeypatch):
    """A graph is cached under the weights' key from load time: once the folder holds other weights (a model
    shipped or saved again under its name), a new size is refused in one sentence instead of caching the
    new weights under the old key; sizes already built keep answering."""
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    engine = engines.load_engine(folder, "onnxruntime")
    x = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 96), dtype=np.uint8)
    before = engine(x)
    model, cfg = models.load_model(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    models.save_model(model, cfg, folder, zoo.card_as_written(folder))
    with pytest.raises(engines.EngineError, match="has other weights than when"):
        engine(np.zeros((1, 3, 96, 64), np.uint8))
    assert not list((tmp_path / "cache").glob("*96x64*"))
    assert np.array_equal(engine(x), before)
    shutil.rmtree(folder)
    with pytest.raises(engines.EngineError, match="is gone since"):
        engine(np.zeros((1, 3, 64, 64), np.uint8))
