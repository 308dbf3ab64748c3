"""Page logic with Streamlit's AppTest (fragments don't run here: the browser test covers the live curve)."""
import ast
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = sorted((ROOT / "pages").glob("*.py"))


@pytest.fixture
def app_env(tmp_path, monkeypatch, tiny_model):
    """An empty data folder holding one tiny fine-tuned model, so pages run in seconds."""
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(tiny_model, tmp_path / "data" / "models" / "tiny", ignore=shutil.ignore_patterns("checkpoint"))
    return tmp_path / "data"


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    return at


def test_pages_hold_no_torch_or_numpy():
    """Pages are thin: widgets in, one sis call, render out."""
    for page in PAGES:
        tree = ast.parse(page.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"torch", "numpy", "segmentation_models_pytorch", "PIL"}, page.name


def test_every_page_registered():
    router = (ROOT / "streamlit_app.py").read_text()
    for page in PAGES:
        assert f'"pages/{page.name}"' in router


def test_home_lists_models(app_env):
    at = _app()
    assert at.title[0].value == "SIS Studio"
    names = [row for df in at.dataframe for row in df.value["model"].tolist()]
    assert "run:tiny" in names


def _select_run(at):
    at.selectbox(key="seg_model").set_value("run:tiny").run()


def test_segment_sample_with_ground_truth(app_env):
    at = _app("pages/segment.py")
    _select_run(at)
    assert not at.exception, at.exception
    assert any("Against the ground truth: mIoU" in s.value for s in at.subheader)
    assert any("Inference" in c.value and "ms" in c.value for c in at.caption)
    at.slider(key="seg_alpha").set_value(0.2).run()
    assert not at.exception


def _upload(at, name, data, mime="image/png"):
    at.radio(key="seg_source").set_value("Upload").run()
    at.file_uploader(key="seg_upload").upload(name, data, mime).run()
    return at


def _png(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, "PNG")
    return buf.getvalue()


def test_segment_upload_rgba(app_env):
    at = _app("pages/segment.py")
    _select_run(at)
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 3] = 128
    _upload(at, "street.png", _png(rgba))
    assert not at.exception and not at.error
    assert any("alpha composited on white" in c.value for c in at.caption)


@pytest.mark.parametrize("name,data,message", [
    ("notes.png", b"this is text", "is not an image format Pillow can read"),
    ("cut.jpg", None, "truncated or corrupt"),
])
def test_segment_bad_uploads_show_one_sentence(app_env, name, data, message):
    if data is None:
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
        data = buf.getvalue()[:600]
    at = _app("pages/segment.py")
    _select_run(at)
    _upload(at, name, data, "image/jpeg" if name.endswith("jpg") else "image/png")
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value


def test_segment_bomb_refused(app_env):
    from test_infer import bomb_png
    at = _app("pages/segment.py")
    _select_run(at)
    _upload(at, "huge.png", bomb_png(20000, 20000))
    assert not at.exception and "too large" in at.error[0].value


def test_compare_two_models(app_env, tiny_model):
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    at = _app("pages/compare.py")
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    assert not at.exception
    assert any(m.label == "Pixels where the models disagree" and m.value == "0.0%" for m in at.metric)


def test_benchmark_runs_and_records(app_env):
    at = _app("pages/benchmark.py")
    at.multiselect[0].set_value(["pspnet-resnet18"])
    at.selectbox[0].set_value("128x160")
    at.number_input[1].set_value(0)  # warm-up
    at.number_input[2].set_value(1)  # timed steps
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value["model"].tolist() == ["pspnet-resnet18"]
    from sis import store
    assert store.list_bench()[0]["model"] == "pspnet-resnet18"


def test_benchmark_cuda_unavailable_says_why(app_env):
    from sis.runtime import cuda_unavailable_reason
    if cuda_unavailable_reason() is None:
        pytest.skip("this host has CUDA")
    at = _app("pages/benchmark.py")
    at.radio[0].set_value("cuda")
    at.button[0].click().run()
    assert "CUDA is unavailable" in at.error[0].value


def test_finetune_start_twice_and_stop_twice(app_env, tiny_data):
    at = _app("pages/finetune.py")
    at.selectbox[0].set_value("run:tiny")
    at.text_input[0].set_value(str(tiny_data))
    at.number_input[0].set_value(2)
    at.selectbox[1].set_value("192x256")
    at.button[0].click().run()  # Start
    assert not at.exception and not at.error, [e.value for e in at.error]
    at.text_input[0].set_value(str(tiny_data))
    at.button[0].click().run()  # Start again while running
    assert any("already has a fine-tuning job running" in e.value for e in at.error)
    at.button[1].click().run()  # Stop
    at.button[1].click().run()  # Stop again
    assert not at.exception
    from sis import app
    manager = app.startup()
    import time
    for _ in range(240):
        job = next(iter(manager.jobs.values()))
        manager.poll(job.id)
        if not job.active:
            break
        time.sleep(0.5)
    assert job.status in ("stopped", "done"), job.message
    manager.jobs.clear()


def test_finetune_missing_folder(app_env, tmp_path):
    at = _app("pages/finetune.py")
    at.text_input[0].set_value(str(tmp_path / "nowhere"))
    at.button[0].click().run()
    assert not at.exception and "does not exist" in at.error[0].value


def _jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _exif_portrait():
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(Image.new("RGB", (80, 40), (90, 90, 90)), exif=exif.tobytes())


@pytest.mark.parametrize("name,make,note,shape", [
    ("dot.png", lambda: _png(np.zeros((1, 1, 3), np.uint8)), None, (1, 1)),
    ("cmyk.jpg", lambda: _jpeg(Image.new("CMYK", (30, 20), (0, 50, 50, 0))), "CMYK converted to RGB", (20, 30)),
    ("deep.png", lambda: _png(np.full((20, 30), 40000, np.uint16)), "16-bit scaled to 8-bit", (20, 30)),
    ("phone.jpg", _exif_portrait, "EXIF orientation 6 applied", (80, 40)),
])
def test_segment_odd_images(app_env, name, make, note, shape):
    at = _app("pages/segment.py")
    _select_run(at)
    _upload(at, name, make(), "image/jpeg" if name.endswith("jpg") else "image/png")
    assert not at.exception and not at.error, [e.value for e in at.error]
    if note:
        assert any(note in c.value for c in at.caption)
    res = at.session_state["_seg_last"][1]
    assert res["labels"].shape == shape == res["image"].shape[:2]  # mask lines up with what is shown


def test_segment_uses_the_fast_path_and_lets_you_pick_eager(app_env):
    import json
    card = app_env / "models" / "tiny" / "card.json"  # as if the fine-tune had checked its int8 accuracy
    c = json.loads(card.read_text())
    c["fast_path"] = {"backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0}}}
    card.write_text(json.dumps(c))
    at = _app("pages/segment.py")
    _select_run(at)
    assert at.selectbox(key="seg_backend:run:tiny").value == "onnxruntime-int8"
    assert any("on onnxruntime-int8" in c.value for c in at.caption)
    fast_miou = next(s.value for s in at.subheader if "mIoU" in s.value)
    at.selectbox(key="seg_backend:run:tiny").set_value("eager").run()
    assert not at.exception and any("on eager" in c.value for c in at.caption)
    assert next(s.value for s in at.subheader if "mIoU" in s.value)  # a result on the reference too
    assert fast_miou


def test_segment_follows_this_hosts_engine_comparison(app_env):
    """A comparison kept on this host outranks the card: here it timed int8 slower than eager."""
    import json

    from sis import backends, runtime, store
    folder = app_env / "models" / "tiny"
    c = json.loads((folder / "card.json").read_text())
    c["fast_path"] = {"backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0}}}
    (folder / "card.json").write_text(json.dumps(c))
    here = {n: {"speedup_vs_eager": 0.8, "miou_delta": None} for n, why in backends.available().items() if why is None}
    here["eager"]["speedup_vs_eager"] = 1.0
    store.put_engines(runtime.host_key(), backends.file_key(folder), "pspnet-resnet18", here)
    at = _app("pages/segment.py")
    _select_run(at)
    assert at.selectbox(key="seg_backend:run:tiny").value == "eager"
    assert any("on eager" in c.value for c in at.caption)
    labels = at.selectbox(key="seg_backend:run:tiny").options  # the speeds shown are this host's
    assert "onnxruntime-int8 (0.8x here, -0.10 mIoU)" in labels and "eager — fast path — reference" in labels


def test_zoo_table_shows_this_hosts_fast_path(app_env):
    from sis import backends, runtime, store
    folder = app_env / "models" / "tiny"
    c = json.loads((folder / "card.json").read_text())
    c["fast_path"] = {"default": "onnxruntime-int8",
                      "backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0, "median_ms": 30.0}}}
    (folder / "card.json").write_text(json.dumps(c))
    at = _app()
    row = at.dataframe[0].value.set_index("model").loc["run:tiny"]
    assert row["fast path"] == "onnxruntime-int8" and row["CPU ms (fast path)"] == 30 and row["timed"] == "when shipped"
    here = {n: {"speedup_vs_eager": 0.5, "median_ms": 200.0, "miou_delta": None}
            for n, why in backends.available().items() if why is None}
    here["eager"] = {"speedup_vs_eager": 1.0, "median_ms": 100.0, "miou_delta": 0.0}
    store.put_engines(runtime.host_key(), backends.file_key(folder), "pspnet-resnet18", here)
    at = _app()
    row = at.dataframe[0].value.set_index("model").loc["run:tiny"]
    assert row["fast path"] == "eager" and row["CPU ms (fast path)"] == 100 and row["timed"] == "this host"


def test_small_hosts_keep_to_graph_engines(app_env, monkeypatch):
    """A kept comparison where torch-bf16 won does not make a 1 GB server load PyTorch models."""
    from sis import app, backends, catalog, runtime, store
    entry = catalog.available_models()["run:tiny"]
    c = json.loads((entry.folder / "card.json").read_text())
    c["fast_path"] = {"backends": {n: {"miou_delta": 0.0, "speedup_vs_eager": 1.5} for n in backends.BACKENDS}}
    (entry.folder / "card.json").write_text(json.dumps(c))
    here = {n: {"speedup_vs_eager": s, "miou_delta": None}
            for n, s in (("eager", 1.0), ("torch-bf16", 5.0), ("onnxruntime", 1.2), ("onnxruntime-int8", 2.0))}
    store.put_engines(runtime.host_key(), backends.file_key(entry.folder), "pspnet-resnet18", here)
    monkeypatch.setattr(backends, "unavailable_reason", lambda name, device="cpu": None)  # any host
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", "1024")
    assert set(app.measured_engines(entry)) == {"eager", "onnxruntime", "onnxruntime-int8"}
    assert app.default_backend(entry) == "onnxruntime-int8"
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", "16384")
    assert app.default_backend(entry) == "torch-bf16"


def test_segment_falls_back_to_eager_when_the_engine_fails(app_env, monkeypatch):
    from sis import backends

    def broken(self, size):
        raise RuntimeError("no ONNX for you")
    monkeypatch.setattr(backends.GraphRunner, "prepare", broken)
    at = _app("pages/segment.py")
    _select_run(at)
    at.selectbox(key="seg_backend:run:tiny").set_value("onnxruntime-int8").run()
    assert not at.exception
    assert any("no ONNX for you" in w.value and "PyTorch fp32" in w.value for w in at.warning)
    assert any("on eager" in c.value for c in at.caption)


def test_benchmark_compares_engines(app_env):
    at = _app("pages/benchmark.py")
    at.selectbox(key="eng_size").set_value("240x320")
    next(b for b in at.button if b.label == "Compare engines").click().run()
    assert not at.exception, at.exception
    engines = at.dataframe[0].value["engine"].tolist()
    assert engines[0] == "eager" and "onnxruntime-int8" in engines
    from sis import store
    assert any(r["mode"] == "infer:onnxruntime-int8" for r in store.list_bench())


def test_finetune_zip_without_labels_says_so(app_env, tiny_data):
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted((tiny_data / "train").iterdir()):
            z.write(p, f"train/{p.name}")
    at = _app("pages/finetune.py")
    at.file_uploader[0].upload("street.zip", buf.getvalue(), "application/zip")
    at.button[0].click().run()
    assert not at.exception
    assert len(at.error) == 1 and "no labels (no trainannot/ folder)" in at.error[0].value
    at.file_uploader[0].upload("notes.zip", b"not a zip", "application/zip")
    at.button[0].click().run()
    assert "not a valid zip file" in at.error[0].value


def test_segment_result_keeps_display_size_arrays_and_full_size_downloads(tiny_model):
    """A big photo: the session keeps <= 1600 px arrays; the label PNG download is full size."""
    from sis import report
    from sis.infer import load_for_inference
    model, cfg = load_for_inference(tiny_model)
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), np.uint8))
    res = report.segment(model, cfg, big)
    assert res["image"].shape == (1200, 1600, 3) and res["labels"].shape == res["confidence"].shape[:2] == (1200, 1600)
    assert res["size"] == (2400, 3200)
    assert Image.open(io.BytesIO(res["label_png"])).size == (3200, 2400)
    assert Image.open(io.BytesIO(res["mask_png"])).size == (3200, 2400)


def test_model_picker_labels_carry_val_miou(app_env):
    """The picker names each model's val mIoU from its card, so the most accurate is easy to find."""
    from sis import zoo
    at = _app("pages/segment.py")
    labels = at.selectbox(key="seg_model").options
    for name, folder in zoo.shipped_models().items():
        miou = zoo.read_card(folder)["val"]["miou"]
        assert any(o.startswith(name) and f"val mIoU {100 * miou:.1f}" in o for o in labels), (name, labels)
    assert any(o.startswith("tiny (fine-tuned here) · val mIoU") for o in labels), labels
