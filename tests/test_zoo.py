import json
import time

import pytest
import torch

from sis import zoo
from sis.classes import CAMVID, ClassSet


@pytest.mark.parametrize("name", zoo.list_models())
def test_registry_entry(name):
    spec = zoo.get_spec(name)
    assert name == f"{spec.arch}-{spec.encoder}" and spec.encoder.startswith(("vgg", "resnet"))
    c = zoo.complexity(name)
    assert c["params"] > 1e6 and c["gflops"] > 1
    h, w = c["padded_size"]
    assert h % spec.input_stride == 0 and w % spec.input_stride == 0 and h >= 360 and w >= 480


def test_paper_pairs_and_default():
    pairs = {zoo.MODELS[n].paper for n in zoo.PAPER_MODELS}
    assert pairs == {"VGG_U-Net", "VGG_PSPNet", "ResNet_U-Net", "ResNet_PSPNet"}
    assert zoo.DEFAULT_MODEL in zoo.MODELS


def test_encoder_list_is_smps():
    import segmentation_models_pytorch as smp
    assert set(zoo.ENCODERS) == {e for e in smp.encoders.get_encoder_names() if e.startswith(("vgg", "resnet"))}


def test_serving_imports_no_smp_or_torchvision():
    """The app's server runs exported graphs: smp, timm and torchvision (~200 MB) load only
    when a PyTorch model is built (eager engine, first graph build, training)."""
    import subprocess
    import sys
    code = ("import sys, sis.app, sis.report, sis.backends, sis.bench, sis.catalog, sis.charts, sis.jobs;"
            "print(sorted(m for m in ('segmentation_models_pytorch', 'timm', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(zoo.ModelError, match="unknown model 'unet-foo'; valid names: unet-resnet18"):
        zoo.get_spec("unet-foo")


@pytest.mark.parametrize("name", zoo.PAPER_MODELS)
def test_paper_model_forward_any_padded_size(name):
    model, cfg = zoo.create_model(name)
    s = cfg.input_stride
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 2 * s, 3 * s))
    assert out.shape == (1, 11, 2 * s, 3 * s)


def test_offline_detected_fast(monkeypatch):
    t = time.perf_counter()
    assert zoo.hub_reachable("127.0.0.1", 9, timeout=1.5) is False  # closed port: refused at once
    assert zoo.hub_reachable("10.255.255.1", 443, timeout=1.5) is False  # no HTTPS answer
    assert time.perf_counter() - t < 4.0
    monkeypatch.setenv("SIS_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(zoo.OfflineError, match="need the internet"):
        zoo.create_model("unet-resnet18", init="imagenet")
    assert time.perf_counter() - t < 2.0


def test_offline_real_probe_is_bounded(monkeypatch):
    monkeypatch.delenv("SIS_OFFLINE", raising=False)
    monkeypatch.setattr(zoo, "HUB_HOST", "10.255.255.1")
    t = time.perf_counter()
    with pytest.raises(zoo.OfflineError):
        zoo.create_model("unet-resnet18", init="imagenet")
    assert time.perf_counter() - t < 2.0


def test_save_load_roundtrip_fp16(tmp_path):
    model, cfg = zoo.create_model("pspnet-resnet18")
    zoo.save_model(model, cfg, tmp_path / "m", card={"note": "x"}, half=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "config.json", "model.safetensors"]
    loaded, cfg2 = zoo.load_model(tmp_path / "m")
    assert cfg2 == cfg and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype  # fp16 on disk, fp32 in memory
        torch.testing.assert_close(b.float(), a.float().half().float(), msg=k)
    assert zoo.read_card(tmp_path / "m") == {"note": "x"}


def test_corrupt_weights(tmp_path):
    model, cfg = zoo.create_model("pspnet-resnet18")
    zoo.save_model(model, cfg, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(zoo.ModelError, match="is not a readable safetensors file"):
        zoo.load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(zoo.ModelError, match="weights file .* is missing"):
        zoo.load_model(tmp_path)


def test_weights_of_another_architecture(tmp_path):
    model, cfg = zoo.create_model("pspnet-resnet18")
    zoo.save_model(model, cfg, tmp_path)
    other = zoo.make_config("unet-resnet18")
    (tmp_path / "config.json").write_text(other.to_json())
    with pytest.raises(zoo.ModelError, match="does not match unet-resnet18: .* another architecture"):
        zoo.load_model(tmp_path)


def test_weights_for_another_class_count(tmp_path):
    five = ClassSet(tuple("abcde"), ((0, 0, 0),) * 5)
    model, cfg = zoo.create_model("pspnet-resnet18", five)
    zoo.save_model(model, cfg, tmp_path)
    cfg.classes = CAMVID.to_dict()
    (tmp_path / "config.json").write_text(cfg.to_json())
    with pytest.raises(zoo.ModelError, match="predicts 5 classes but the config says 11"):
        zoo.load_model(tmp_path)


def test_bad_config(tmp_path):
    with pytest.raises(zoo.ModelError, match="not a model folder"):
        zoo.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{]")
    with pytest.raises(zoo.ModelError, match="not a valid model config"):
        zoo.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "unet-resnet18"}))
    with pytest.raises(zoo.ModelError, match="config.json lacks arch"):
        zoo.load_model(tmp_path)


def test_resolve(tmp_path):
    with pytest.raises(zoo.ModelError, match="neither a model folder nor a model name"):
        zoo.resolve("no-such-thing")
    assert zoo.resolve(tmp_path) == tmp_path
