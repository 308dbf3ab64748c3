"""Compare (AppTest): models side by side and the dashboard."""
import shutil

import numpy as np
from apptest import _app, _png


def test_compare_two_models(app_env, tiny_model):
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    at = _app("pages/compare.py")
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    assert not at.exception
    assert any(m.label == "Pixels where the models disagree" and m.value == "0.0%" for m in at.metric)


def test_compare_names_no_sample_frame_while_an_upload_is_compared(app_env, tiny_model):
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    at = _app("pages/compare.py")
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    assert at.selectbox(key="cmp_sample").value
    at.file_uploader(key="cmp_upload").upload("mine.png", _png(np.zeros((40, 60, 3), np.uint8)), "image/png").run()
    assert not at.exception and not [s for s in at.selectbox if s.key == "cmp_sample"]
    assert any(c.value.startswith("Comparing on your photo mine.png") for c in at.caption)


def test_compare_says_which_model_trained_on_val(app_env, tiny_model):
    """The dashboard's 'trained on' column appears once a model trained beyond train, with why its val
    figure is another run's."""
    import json
    at = _app("pages/compare.py")
    assert "trained on" not in at.dataframe[0].value.columns
    folder = app_env / "models" / "tinyall"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    card = json.loads((folder / "card.json").read_text())
    card["recipe"]["splits"] = ["train", "val"]
    (folder / "card.json").write_text(json.dumps(card))
    at = _app("pages/compare.py")
    table = at.dataframe[0].value
    trained_on = dict(zip(table["model"], table["trained on"]))
    assert trained_on["run:tinyall"] == "train+val" and trained_on["run:tiny"] == "train"
    assert {trained_on[m] for m in trained_on if not m.startswith("run:")} == {"train"}  # the shipped models
    assert any("train-only run with the same recipe" in c.value for c in at.caption)


def test_compare_dashboard_shows_how_each_model_holds_up_under_shift(app_env):
    """'under shift' is each card's shift benchmark mean (eval --shift all --write), blank where unmeasured;
    the default model's is measured; 'kitti-dev' each card's figure on the real-street dev set."""
    import math

    from sis import zoo
    at = _app("pages/compare.py")
    table = at.dataframe[0].value
    under = dict(zip(table["model"], table["shift %"]))
    for name, folder in zoo.shipped_models().items():
        mean = zoo.read_card(folder).shift_mean
        assert (under[name] is None or math.isnan(under[name])) if mean is None else under[name] == round(100 * mean, 1)
    assert zoo.read_card(zoo.shipped_models()["unet-vgg11_bn"]).shift_mean is not None
    assert any("13 camera and light shifts" in c.value for c in at.caption)
    # and on real frames of another city: every shipped model is measured there, the tiny run is not
    dev = dict(zip(table["model"], table["kitti-dev %"]))
    for name, folder in zoo.shipped_models().items():
        assert dev[name] == round(100 * zoo.read_card(folder).dev_miou, 1)
    assert dev["run:tiny"] is None or math.isnan(dev["run:tiny"])
    assert any(c.value.startswith("kitti-dev: 22 real labelled street frames") for c in at.caption)


def test_an_ensemble_is_offered_only_where_it_beat_its_best_member(app_env, monkeypatch):
    """pspnet-resnet18 is in no shipped ensemble that beat its best member; a measured pair that did
    appears as a mode of each member's picker and runs both models."""
    from sis.vis import report
    at = _app("pages/segment.py")
    at.selectbox(key="seg_model").set_value("pspnet-resnet18").run()
    assert at.radio(key="seg_mode:pspnet-resnet18").options == ["Fast", "Accurate"]
    better = report.EnsembleNote("pair", ("pspnet-resnet18", "unet-resnet18"), "none", 0.70, "unet-resnet18", 0.68)
    worse = report.EnsembleNote("worse pair", ("pspnet-resnet18", "unet-resnet18"), "ms", 0.66, "unet-resnet18", 0.69)
    monkeypatch.setattr(report, "ensemble_notes", lambda path=None: [better, worse])
    at.run()
    radio = at.radio(key="seg_mode:pspnet-resnet18")
    assert radio.options == ["Fast", "Accurate", "Ensemble: pspnet-resnet18 + unet-resnet18"]
    assert "val mIoU 70.0 (2 models; best alone 68.0)" in str(radio.proto)
    radio.set_value("Ensemble: pspnet-resnet18 + unet-resnet18").run()
    assert not at.exception, at.exception
    res = at.session_state["_seg_last:segment"][1]
    assert res.engine.endswith("(2-model ensemble)") and res.labels.shape == (360, 480)
