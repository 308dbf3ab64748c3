import json
import time

import pytest
import torch

from sis import zoo
from sis.classes import CAMVID, ClassSet
from sis.zoo import models


@pytest.mark.parametrize("name", zoo.list_models())
def test_registry_entry(name):
    spec = zoo.get_spec(name)
    assert name == f"{spec.arch}-{spec.encoder}" and spec.encoder.startswith(("vgg", "resnet"))
    c = models.complexity(name)
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


def test_serving_imports_no_torch():
    """The app's server runs exported graphs: torch (~470 MB), smp, timm and torchvision load only
    when a PyTorch model is built or run (eager or bf16 engine, a graph with no template, training)."""
    import subprocess
    import sys
    code = ("import sys, sis.studio.ui, sis.vis.report, sis.engines, sis.engines.predict, sis.data.images, "
            "sis.studio.catalog, sis.vis.charts, sis.studio.jobs, sis.metrics, sis.video;"
            "print(sorted(m for m in ('torch', 'segmentation_models_pytorch', 'timm', 'torchvision') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_name_lists_valid_ones():
    with pytest.raises(zoo.ModelError, match="unknown model 'unet-foo'; valid names: unet-resnet18"):
        zoo.get_spec("unet-foo")


@pytest.mark.parametrize("name", zoo.PAPER_MODELS)
def test_paper_model_forward_any_padded_size(name):
    model, cfg = models.create_model(name)
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
        models.create_model("unet-resnet18", init="imagenet")
    assert time.perf_counter() - t < 2.0


def test_offline_real_probe_is_bounded(monkeypatch):
    monkeypatch.delenv("SIS_OFFLINE", raising=False)
    monkeypatch.setattr(zoo, "HUB_HOST", "10.255.255.1")
    t = time.perf_counter()
    with pytest.raises(zoo.OfflineError):
        models.create_model("unet-resnet18", init="imagenet")
    assert time.perf_counter() - t < 2.0


def test_save_load_roundtrip_fp16(tmp_path):
    model, cfg = models.create_model("pspnet-resnet18")
    models.save_model(model, cfg, tmp_path / "m", card={"note": "x"}, half=True)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["card.json", "config.json", "model.safetensors"]
    loaded, cfg2 = models.load_model(tmp_path / "m")
    assert cfg2 == cfg and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype  # fp16 on disk, fp32 in memory
        torch.testing.assert_close(b.float(), a.float().half().float(), msg=k)
    assert zoo.card_as_written(tmp_path / "m") == {"note": "x"}


def test_corrupt_weights(tmp_path):
    model, cfg = models.create_model("pspnet-resnet18")
    models.save_model(model, cfg, tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(zoo.ModelError, match="is not a readable safetensors file"):
        models.load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(zoo.ModelError, match="weights file .* is missing"):
        models.load_model(tmp_path)


def test_weights_of_another_architecture(tmp_path):
    model, cfg = models.create_model("pspnet-resnet18")
    models.save_model(model, cfg, tmp_path)
    other = zoo.make_config("unet-resnet18")
    (tmp_path / "config.json").write_text(other.to_json())
    with pytest.raises(zoo.ModelError, match="does not match unet-resnet18: .* another architecture"):
        models.load_model(tmp_path)


def test_weights_for_another_class_count(tmp_path):
    five = ClassSet(tuple("abcde"), ((0, 0, 0),) * 5)
    model, cfg = models.create_model("pspnet-resnet18", five)
    models.save_model(model, cfg, tmp_path)
    cfg.classes = CAMVID.to_dict()
    (tmp_path / "config.json").write_text(cfg.to_json())
    with pytest.raises(zoo.ModelError, match="predicts 5 classes but the config says 11"):
        models.load_model(tmp_path)


def test_bad_config(tmp_path):
    with pytest.raises(zoo.ModelError, match="not a model folder"):
        models.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{]")
    with pytest.raises(zoo.ModelError, match="not a valid model config"):
        models.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"name": "unet-resnet18"}))
    with pytest.raises(zoo.ModelError, match="config.json lacks arch"):
        models.load_model(tmp_path)


def test_resolve(tmp_path):
    with pytest.raises(zoo.ModelError, match="neither a model folder nor a model name"):
        zoo.resolve("no-such-thing")
    assert zoo.resolve(tmp_path) == tmp_path


@pytest.mark.parametrize("name", sorted(zoo.shipped_models()))
def test_shipped_folders_load_with_smps_own_api(name, monkeypatch):
    """config.json is a superset of smp's hub config: smp.from_pretrained builds every shipped model
    smp can express, with our outputs; the VGG U-Net's decoder without a center block it cannot."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from sis.zoo.preprocess import forward_logits
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = zoo.shipped_models()[name]
    cfg = zoo.read_config(folder)
    if cfg.smp_kwargs.get("center_block") is False:
        with pytest.raises(RuntimeError, match="decoder.center"):
            smp.from_pretrained(str(folder))
        return
    theirs = smp.from_pretrained(str(folder)).eval()
    ours, _ = models.load_model(folder)
    x = torch.randint(0, 256, (1, 3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = forward_logits(ours, cfg, x, amp=False, channels_last=False)
        b = forward_logits(theirs, cfg, x, amp=False, channels_last=False)
    assert type(theirs).__name__ == zoo.ARCHS[cfg.arch] and torch.equal(a, b)


def test_config_reads_both_layouts(tmp_path):
    """A config.json written before the smp layout (our keys at the top) still reads."""
    cfg = zoo.make_config("unet-resnet18")
    (tmp_path / "config.json").write_text(cfg.to_json())
    assert json.loads((tmp_path / "config.json").read_text())["_model_class"] == "Unet"
    assert zoo.read_config(tmp_path) == cfg
    from dataclasses import asdict
    (tmp_path / "config.json").write_text(json.dumps(dict(asdict(cfg), format_version=1)))
    old = zoo.read_config(tmp_path)
    assert old.name == "unet-resnet18" and old.classes == cfg.classes and old.format_version == 1
