"""Segment (AppTest): photos, samples, bad uploads, engines, the accurate mode, adapting without labels."""
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from apptest import _app, _exif_portrait, _jpeg, _png, _select_run, _unsure_of_everything, _upload, _wait_for_jobs
from PIL import Image

from sis.classes import CAMVID


def test_segment_sample_with_ground_truth(app_env):
    at = _app("pages/segment.py")
    _select_run(at)
    assert not at.exception, at.exception
    assert any("Against the ground truth: mIoU" in s.value for s in at.subheader)
    assert any("Inference" in c.value and "ms" in c.value for c in at.caption)
    at.slider(key="seg_alpha").set_value(0.2).run()
    assert not at.exception


def test_segment_keeps_uploads_across_a_switch_of_source(app_env):
    """Two photos uploaded, the sample frames looked at, Upload picked again: the photos are still there
    (an uploader that is not drawn loses its files), and Clear drops them."""
    rng = np.random.default_rng(1)
    at = _app("pages/segment.py")
    at.radio(key="seg_source").set_value("Upload").run()
    up = at.file_uploader(key="seg_upload")
    for i in range(2):
        up.upload(f"street{i}.png", _png(rng.integers(0, 255, (60, 80, 3), np.uint8)), "image/png")
    up.run()
    assert at.selectbox(key="seg_pick").options == ["street0.png", "street1.png"]
    at.radio(key="seg_source").set_value("Sample frames").run()
    at.radio(key="seg_source").set_value("Upload").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="seg_pick").options == ["street0.png", "street1.png"]
    assert any(c.value.startswith("Still here from before: street0.png, street1.png") for c in at.caption)
    at.button(key="seg_upload:clear").click().run()
    assert "seg_pick" not in [box.key for box in at.selectbox]
    assert not any(c.value.startswith("Still here") for c in at.caption)


def test_segment_upload_rgba(app_env):
    at = _app("pages/segment.py")
    _select_run(at)
    rgba = np.zeros((40, 60, 4), np.uint8)
    rgba[..., 3] = 128
    _upload(at, "street.png", _png(rgba))
    assert not at.exception and not at.error
    assert any("alpha composited on white" in c.value for c in at.caption)


@pytest.mark.parametrize("name,data,message", [
    ("notes.png", b"this is text", "is not a picture this app can open"),
    ("cut.jpg", None, "cut short or damaged"),
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


def test_segment_opens_on_the_first_good_photo_among_broken_ones(app_env):
    """An empty file and a text file before a good photo: one sentence for each, no generic hint, and the
    picker holds the good photos only, opened on the first."""
    rng = np.random.default_rng(2)
    at = _app("pages/segment.py")
    _select_run(at)
    at.radio(key="seg_source").set_value("Upload").run()
    up = at.file_uploader(key="seg_upload")
    up.upload("empty.jpg", b"", "image/jpeg")
    up.upload("notes.png", b"this is text", "image/png")
    for i in range(2):
        up.upload(f"street{i}.png", _png(rng.integers(0, 255, (60, 80, 3), np.uint8)), "image/png")
    up.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["empty.jpg is empty (0 bytes)", "notes.png is not a picture this app can "
                                           "open (it opens JPEG, PNG, WebP, BMP, TIFF and GIF)"]
    assert at.selectbox(key="seg_pick").options == ["street0.png", "street1.png"]
    assert any(c.value.startswith("Inference") for c in at.caption)  # street0.png was segmented
    assert not at.info


def test_segment_with_only_a_broken_upload_says_one_sentence_and_no_hint(app_env):
    at = _app("pages/segment.py")
    _select_run(at)
    _upload(at, "empty.png", b"")
    assert not at.exception and [e.value for e in at.error] == ["empty.png is empty (0 bytes)"] and not at.info


def test_segment_bomb_refused(app_env):
    from conftest import bomb_png
    at = _app("pages/segment.py")
    _select_run(at)
    _upload(at, "huge.png", bomb_png(20000, 20000))
    assert not at.exception and "too large" in at.error[0].value


def test_segment_and_compare_say_when_a_photo_looks_unfamiliar(app_env, tiny_model):
    """Below its card's threshold, each page says so in one sentence that points to the remedies; at or
    above it (the card's threshold 0), nothing is said."""
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    at = _app("pages/segment.py")
    _select_run(at)
    assert not [w for w in at.warning if "is unsure of this" in w.value]
    for name in ("tiny", "tiny2"):
        _unsure_of_everything(app_env / "models" / name)
    at = _app("pages/segment.py")
    _select_run(at)
    said = [w.value for w in at.warning if "is unsure of this" in w.value]
    assert len(said) == 1 and said[0].startswith("run:tiny is unsure of this photo: ")
    assert ", least of its " in said[0] and said[0].endswith("Accurate mode or adapting to a few photos of this street "
                                                              "(Adapt, no labels needed) may help.")
    at = _app("pages/compare.py")
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    said = [w.value for w in at.warning if "are unsure of this" in w.value]
    assert len(said) == 1 and said[0].startswith("2 of these 2 models are unsure of this photo")
    assert "run:tiny2 " in said[0] and "against 100%" in said[0]


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
    res = at.session_state["_seg_last:segment"][1]
    assert res.labels.shape == shape == res.image.shape[:2]  # mask lines up with what is shown


@pytest.mark.slow
def test_segment_uses_the_chosen_engine_and_lets_you_pick_eager(app_env):
    import json
    card = app_env / "models" / "tiny" / "card.json"  # as if the fine-tune had checked its int8 accuracy
    c = json.loads(card.read_text())
    c["fast_path"] = {"backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0}}}
    card.write_text(json.dumps(c))
    at = _app("pages/segment.py")
    _select_run(at)
    assert at.selectbox(key="seg_engine:run:tiny").value == "onnxruntime-int8"
    assert any("on onnxruntime-int8" in c.value for c in at.caption)
    fast_miou = next(s.value for s in at.subheader if "mIoU" in s.value)
    at.selectbox(key="seg_engine:run:tiny").set_value("eager").run()
    assert not at.exception and any("on eager" in c.value for c in at.caption)
    eager_miou = next(s.value for s in at.subheader if "mIoU" in s.value)  # a result on the reference too
    assert fast_miou.startswith("Against the ground truth: mIoU") and eager_miou.startswith(
        "Against the ground truth: mIoU")


def test_segment_follows_this_hosts_engine_comparison(app_env):
    """A comparison kept on this host outranks the card: here it timed int8 slower than eager."""
    import json

    from sis import engines, host, store
    from sis.engines.cache import file_key
    folder = app_env / "models" / "tiny"
    c = json.loads((folder / "card.json").read_text())
    c["fast_path"] = {"backends": {"onnxruntime-int8": {"miou_delta": -0.1, "speedup_vs_eager": 3.0}}}
    (folder / "card.json").write_text(json.dumps(c))
    here = {n: {"speedup_vs_eager": 0.8, "miou_delta": None} for n, why in engines.available().items() if why is None}
    here["eager"]["speedup_vs_eager"] = 1.0
    store.put_engines(host.host_key(), file_key(folder), "pspnet-resnet18", here)
    at = _app("pages/segment.py")
    _select_run(at)
    assert at.selectbox(key="seg_engine:run:tiny").value == "eager"
    assert any("on eager" in c.value for c in at.caption)
    labels = at.selectbox(key="seg_engine:run:tiny").options  # the speeds shown are this host's
    assert "onnxruntime-int8 (0.8x here, -0.10 mIoU)" in labels and "eager — chosen here — reference" in labels


def test_segment_falls_back_to_eager_when_the_engine_fails(app_env, monkeypatch):
    from sis.engines.onnx_engine import GraphEngine

    def broken(self, size):
        raise RuntimeError("no ONNX for you")
    monkeypatch.setattr(GraphEngine, "prepare", broken)
    at = _app("pages/segment.py")
    _select_run(at)
    at.selectbox(key="seg_engine:run:tiny").set_value("onnxruntime-int8").run()
    assert not at.exception
    assert any("no ONNX for you" in w.value and "PyTorch fp32" in w.value for w in at.warning)
    assert any("on eager" in c.value for c in at.caption)


def test_a_bug_outside_the_engine_is_not_hidden_by_the_fallback(app_env, monkeypatch):
    """Only an engine's failures fall back to eager: a bug in painting the result surfaces as the
    error it is, and the image is not segmented again on eager under a misleading note."""
    from sis.vis import report
    calls = []

    def broken(labels, palette):
        calls.append(1)
        raise TypeError("a painting bug")
    at = _app("pages/segment.py")
    monkeypatch.setattr(report, "colorize", broken)
    at.selectbox(key="seg_model").set_value("run:tiny").run()
    assert at.exception and len(calls) == 1  # the old catch-all painted twice: once more after rerunning on eager
    assert not any("PyTorch fp32" in w.value for w in at.warning)


def test_segment_result_keeps_display_size_arrays_and_full_size_downloads(tiny_model):
    """A big photo: the session keeps <= 1600 px arrays; the label PNG download is full size."""
    from sis import engines
    from sis.vis import report
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (2400, 3200, 3), np.uint8))
    res = report.segment(engines.load_engine(tiny_model, "eager"), big)
    assert res.image.shape == (1200, 1600, 3) and res.labels.shape == res.confidence.shape[:2] == (1200, 1600)
    assert res.size == (2400, 3200)
    assert Image.open(io.BytesIO(res.label_png)).size == (3200, 2400)
    assert Image.open(io.BytesIO(report.mask_png(res, CAMVID))).size == (3200, 2400)


@pytest.mark.slow
def test_segment_and_compare_offer_an_accurate_mode(app_env, tiny_model):
    """Accurate = the same engine with multi-scale + flip: a result for the same image, labelled as such;
    shipped models show their measured val mIoU for both modes."""
    from sis import zoo
    at = _app("pages/segment.py")
    _select_run(at)
    fast = at.session_state["_seg_last:segment"][1]
    at.radio(key="seg_mode:run:tiny").set_value("Accurate").run()
    assert not at.exception, at.exception
    acc = at.session_state["_seg_last:segment"][1]
    assert acc.engine.endswith("+ms+flip@0.75,1,1.25,1.5") and acc.labels.shape == fast.labels.shape
    assert any("+ms+flip" in c.value for c in at.caption)
    assert any("Against the ground truth: mIoU" in s.value for s in at.subheader)
    at.selectbox(key="seg_model").set_value("unet-vgg11_bn").run()
    card = zoo.read_card(zoo.shipped_models()["unet-vgg11_bn"])
    radio = at.radio(key="seg_mode:unet-vgg11_bn")
    from sis.vis import report
    offered = [n for n in report.ensemble_notes() if n.offered and "unet-vgg11_bn" in n.members]
    assert radio.options[:2] == ["Fast", "Accurate"] and len(radio.options) == 2 + len(offered)
    assert all(o.startswith("Ensemble: ") and "unet-vgg11_bn" in o for o in radio.options[2:])
    assert f"val mIoU {100 * card.modes['ms'].miou:.1f}, about" in str(radio.proto)
    assert f"val mIoU {100 * card.val_miou:.1f}" in str(radio.proto)
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    at = _app("pages/compare.py")
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    at.radio(key="cmp_mode").set_value("Accurate").run()
    assert not at.exception, at.exception
    assert any(m.label == "Pixels where the models disagree" and m.value == "0.0%" for m in at.metric)


def test_segment_names_its_downloads_after_the_photo_and_paints_only_the_chosen_classes(app_env, monkeypatch):
    from streamlit.delta_generator import DeltaGenerator

    from sis.vis import report
    names, painted = [], []
    button = DeltaGenerator.download_button
    monkeypatch.setattr(DeltaGenerator, "download_button", lambda self, label, data, file_name=None, *a, **k:
                        names.append(file_name) or button(self, label, data, file_name, *a, **k))
    real = report.paint
    monkeypatch.setattr(report, "paint", lambda res, classes, alpha, visible=None:
                        painted.append((alpha, list(visible))) or real(res, classes, alpha, visible))
    at = _app("pages/segment.py")
    _select_run(at)
    name = at.selectbox(key="seg_sample").value
    assert sorted(names[-2:]) == [f"{name}_labels.png", f"{name}_mask_color.png"]
    painted.clear()
    at.multiselect(key="seg_classes").set_value(["Road", "Car"]).run()
    assert (1.0, [3, 8]) in painted  # the "Predicted classes" picture too, not only the overlay
    _upload(at, "my street.png", _png(np.zeros((40, 60, 3), np.uint8)))
    assert sorted(names[-2:]) == ["my street_labels.png", "my street_mask_color.png"]


def test_an_adapted_model_knows_the_model_it_came_from(app_env):
    """catalog.adapted_from: a shipped model or a run's start by its card's init "adapted:NAME", None for a
    shipped model, a fine-tune, or a start no longer offered."""
    from sis import zoo
    from sis.studio import catalog
    entries = catalog.available_models()
    tiny = entries["run:tiny"]
    assert catalog.adapted_from(entries["unet-vgg11_bn"], entries) is None  # shipped
    assert catalog.adapted_from(tiny, entries) is None  # trained, not adapted
    zoo.update_card(tiny.folder, init="adapted:unet-vgg11_bn")
    assert catalog.adapted_from(tiny, entries) == entries["unet-vgg11_bn"]
    zoo.update_card(tiny.folder, init="adapted:tiny")
    assert catalog.adapted_from(tiny, entries) == tiny  # a run's start is named by its folder
    zoo.update_card(tiny.folder, init="adapted:gone")
    assert catalog.adapted_from(tiny, entries) is None


def test_adapt_is_offered_from_as_many_photos_as_it_needs(app_env):
    """Two photos: no Adapt button that could only refuse them, a line saying how many it takes."""
    from conftest import make_frame

    from sis.adaptation.unlabeled import MIN_FRAMES
    rng = np.random.default_rng(1)
    at = _app("pages/segment.py")
    _select_run(at)
    at.radio(key="seg_source").set_value("Upload").run()
    up = at.file_uploader(key="seg_upload")
    for i in range(2):
        up.upload(f"street{i}.png", _png(make_frame(rng, 60, 80)[0]), "image/png")
    up.run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.key == "seg_adapt"]
    assert any(f"With {MIN_FRAMES} or more photos of one street" in c.value for c in at.caption)


@pytest.mark.slow
def test_adapt_a_model_to_a_few_uploaded_photos_without_labels(app_env):
    """Four photos of one street on Segment: one button adapts the model in a worker into a new model
    folder; the original folder is unchanged."""
    from sis import zoo
    rng = np.random.default_rng(0)
    at = _app("pages/segment.py")
    _select_run(at)
    at.radio(key="seg_source").set_value("Upload").run()
    from conftest import make_frame
    files = [(f"street{i}.png", _png(make_frame(rng, 60, 80)[0])) for i in range(4)]
    up = at.file_uploader(key="seg_upload")
    for name, data in files:
        up.upload(name, data, "image/png")
    up.run()
    assert not at.exception, at.exception
    original = (app_env / "models" / "tiny" / "model.safetensors").read_bytes()
    at.button(key="seg_adapt").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    manager = _wait_for_jobs()
    (job,) = [j for j in manager.jobs.values() if j.kind == "adapt"]
    assert job.status == "done", job.message
    new = Path(job.out)  # under the manager's models folder (the process's first data folder in this suite)
    assert new.name.startswith("tiny-adapted-to-4-photos-") and (new / "model.safetensors").is_file()
    assert zoo.card_as_written(new)["unlabeled"]["frames"] == 4
    assert (app_env / "models" / "tiny" / "model.safetensors").read_bytes() == original
    assert job.result["frames"] == 4 and job.result["fit_steps"] == job.result["fit_planned"] == 40
    at.run()  # the page's next run shows where the new model is and how much of the training city it kept
    said = " ".join(m.value for m in at.success)
    assert "Adapted on 4 frames" in said and "keeping 67% of the training city's statistics, then 40 fitting steps" \
        in said, said
    if new.parent != app_env / "models":  # the manager writes to its own first data folder: the picker reads this one
        shutil.copytree(new, app_env / "models" / new.name)
    at.run()
    at.button(key="seg_adapt:use").click().run()  # one more click segments the photos with the adapted model
    assert not at.exception, at.exception
    assert at.selectbox(key="seg_model").value == f"run:{new.name}"
    assert f"{new.name} (adapted here, no labels)" in at.selectbox(key="seg_model").options  # no val figure of its own
    assert any(c.value.startswith(f"Now using run:{new.name}.") for c in at.caption), [c.value for c in at.caption]
    assert not [b for b in at.button if b.key == "seg_adapt:use"]
    at.toggle(key="seg_beside").set_value(True).run()  # the model it was adapted from, on the same photo
    assert not at.exception, at.exception
    assert at.toggle(key="seg_beside").label.startswith("Show run:tiny, the model it was adapted from")
    changed = [c.value for c in at.caption if c.value.startswith("Adapting changed the label of ")]
    assert len(changed) == 1 and changed[0].endswith("% of this photo's pixels."), [c.value for c in at.caption]
    manager.jobs.clear()


@pytest.mark.slow
def test_adapt_a_model_to_an_uploaded_clip_takes_two_frames_a_second(app_env, tmp_path):
    """A 4-second clip at 10 fps on Video: the button adapts on one frame in five, spread over the whole
    clip (clip_stride), and the page says so."""
    from conftest import clip_frames, write_clip

    from sis.adaptation.unlabeled import clip_stride
    clip = write_clip(tmp_path / "drive.mp4", clip_frames(40, 48, 64), fps=10)
    at = _app("pages/video.py")
    at.selectbox(key="vid_model").set_value("run:tiny").run()
    at.radio(key="vid_source").set_value("Upload").run()
    at.file_uploader(key="vid_upload").upload("drive.mp4", clip.read_bytes(), "video/mp4").run()
    at.button(key="vid_adapt").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    manager = _wait_for_jobs()
    (job,) = [j for j in manager.jobs.values() if j.kind == "adapt"]
    assert job.status == "done", job.message
    assert clip_stride(40, 10.0) == 5 and (job.result["frames"], job.result["stride"]) == (8, 5)
    assert Path(job.out).name.startswith("tiny-adapted-to-drive-")  # named after the clip, not a time alone
    at.run()
    said = " ".join(m.value for m in at.success)
    assert "Adapted on 8 frames (one in 5 of the clip)" in said, said
    if Path(job.out).parent != app_env / "models":
        shutil.copytree(job.out, app_env / "models" / Path(job.out).name)
    at.run()
    at.button(key="vid_adapt:use").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="vid_model").value == f"run:{Path(job.out).name}"
    manager.jobs.clear()
