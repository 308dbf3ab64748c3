"""The accurate mode: flip / multi-scale test-time augmentation and ensembles (sis.engines.accurate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REAL_CAMVID, in_process

from sis import engines, zoo
from sis.engines.accurate import TTA, AccurateEngine
from sis.engines.predict import softmax, tempered


class _Fake:
    """An engine whose logits are a fixed function of each pixel's colour (a 1x1 conv): flip-equivariant."""
    name = "fake"
    temperature = 1.0

    def __init__(self, weights: np.ndarray, cfg=None):
        self.w = np.asarray(weights, np.float32)  # (C, 3)
        self.cfg = cfg or zoo.make_config("pspnet-resnet18")
        self.calls: list[tuple[int, int]] = []

    def prepare(self, size):
        pass

    def __call__(self, images):
        self.calls.append(tuple(images.shape[-2:]))
        return np.einsum("ck,nkhw->nchw", self.w, images.astype(np.float32) / 255.0)


@pytest.fixture
def image():
    return np.random.default_rng(0).integers(0, 256, (1, 3, 36, 48), np.uint8)


def _w(seed=0):
    return np.random.default_rng(seed).normal(size=(11, 3)) * 4


def test_flip_of_a_flip_equivariant_model_is_the_plain_prediction(image):
    plain = softmax(_Fake(_w())(image))
    got = np.exp(AccurateEngine([_Fake(_w())], TTA.from_mode("flip"))(image))
    np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-6)


def test_single_scale_one_is_the_plain_prediction_and_runs_once(image):
    fake = _Fake(_w())
    got = np.exp(AccurateEngine([fake], TTA(flip=False, scales=(1.0,)))(image))
    np.testing.assert_allclose(got, softmax(_Fake(_w())(image)), rtol=1e-5, atol=1e-6)
    assert fake.calls == [(36, 48)]


def test_multi_scale_runs_every_scale_and_its_mirror_and_answers_at_the_input_size(image):
    fake = _Fake(_w())
    out = AccurateEngine([fake], TTA.from_mode("ms", (0.5, 1.0, 1.5)))(image)
    assert out.shape == (1, 11, 36, 48)
    assert sorted(fake.calls) == sorted([(18, 24)] * 2 + [(36, 48)] * 2 + [(54, 72)] * 2)
    np.testing.assert_allclose(np.exp(out).sum(1), 1.0, rtol=1e-5)  # still a distribution per pixel


def test_ensemble_averages_probabilities_not_logits():
    """Two one-pixel models with known softmax: A (0.98, 0.01, 0.01), B (0.001, 0.5, 0.499). Averaged
    probabilities are (0.4905, 0.255, 0.2545): class 0. Averaged logits (a geometric mean) would pick
    class 1, since B all but rules class 0 out."""
    cfg = zoo.make_config("pspnet-resnet18")

    class Const:
        name = "const"
        temperature = 1.0

        def __init__(self, p):
            self.logits, self.cfg = np.log(np.asarray(p, np.float32))[None, :, None, None], cfg

        def prepare(self, size):
            pass

        def __call__(self, images):
            return np.broadcast_to(self.logits, (len(images), self.logits.shape[1], *images.shape[-2:])).copy()
    pad = [1e-9] * 8  # eleven classes; the last eight never in play
    a, b = [0.98, 0.01, 0.01] + pad, [0.001, 0.5, 0.499] + pad
    x = np.zeros((1, 3, 1, 1), np.uint8)
    avg = np.exp(AccurateEngine([Const(a), Const(b)])(x))[0, :3, 0, 0]
    np.testing.assert_allclose(avg, [0.4905, 0.255, 0.2545], rtol=1e-4)
    assert avg.argmax() == 0 and (np.log(a[:3]) + np.log(b[:3])).argmax() == 1
    weighted = np.exp(AccurateEngine([Const(a), Const(b)], weights=[1, 3])(x))[0, :3, 0, 0]
    np.testing.assert_allclose(weighted, [(0.98 + 3 * 0.001) / 4, (0.01 + 3 * 0.5) / 4, (0.01 + 3 * 0.499) / 4],
                               rtol=1e-4)


def test_an_ensemble_of_one_model_is_that_model(tiny_model, image):
    single = engines.load_engine(tiny_model, "eager")
    assert engines.load_accurate([tiny_model], name="eager").name == "eager"  # no wrapper at all
    # each member at its own temperature (the tiny model's training fitted it)
    assert single.temperature != 1.0
    np.testing.assert_allclose(np.exp(AccurateEngine([single])(image)), softmax(tempered(single, image)),
                               rtol=1e-5, atol=1e-6)


def test_ensemble_refuses_other_class_lists_and_bad_weights():
    from sis.classes import ClassSet
    five = zoo.make_config("pspnet-resnet18", ClassSet(tuple("abcde"), ((0, 0, 0),) * 5))
    with pytest.raises(ValueError, match="same classes"):
        AccurateEngine([_Fake(_w()), _Fake(_w()[:5], five)])
    with pytest.raises(ValueError, match="weights"):
        AccurateEngine([_Fake(_w()), _Fake(_w())], weights=[1.0])
    with pytest.raises(ValueError, match="unknown test-time augmentation 'zoom'"):
        TTA.from_mode("zoom")


@pytest.mark.slow
def test_eval_tta_and_ensemble_keep_the_json_keys(tiny_model, tiny_data, capsys):
    r = in_process(capsys, "eval", "--model", f"{tiny_model},{tiny_model}", "--data", tiny_data, "--tta", "ms",
                   "--scales", "0.5,1", "--engine", "eager", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"miou", "pixel_acc", "per_class_iou"} <= res.keys() and res["tta"] == "ms"
    assert 0 <= res["miou"] <= 1 and 0 <= res["pixel_acc"] <= 1 and len(res["per_class_iou"]) == 11
    assert res["engine"] == "eager +ms+flip@0.5,1 (2-model ensemble)"
    bad = in_process(capsys, "eval", "--model", tiny_model, "--data", tiny_data, "--tta", "ms", "--scales", "0,1")
    assert bad.returncode == 2 and "scales must look like" in bad.stderr


@pytest.mark.slow
def test_accurate_mode_is_no_worse_on_real_frames():
    """unet-vgg11_bn with multi-scale + flip against its fast path, on 7 val frames spread over the split."""
    if not (REAL_CAMVID / "val").is_dir():
        pytest.skip(f"no CamVid at {REAL_CAMVID}")
    import torch

    from sis.data.dataset import Frames, load_split
    from sis.evaluation.evaluate import evaluate
    folder = zoo.shipped_models()["unet-vgg11_bn"]
    fast = engines.load_engine(folder)
    f = load_split(str(REAL_CAMVID), "val", None, fast.cfg.class_set)
    frames = Frames(f.names[::16], f.images[::16], f.masks[::16], f.classes)
    plain = evaluate(None, fast.cfg, frames, torch.device("cpu"), engine=fast)["miou"]
    accurate = evaluate(None, fast.cfg, frames, torch.device("cpu"), engine=AccurateEngine([fast], TTA.from_mode("ms")))
    assert accurate["miou"] >= plain, (plain, accurate["miou"])


def test_an_ensemble_is_offered_only_where_it_beats_its_best_member(tmp_path):
    from sis.vis import report
    (tmp_path / "e.json").write_text(json.dumps({"ensembles": {"pair": {"members": ["a", "b"], "modes": {
        "none": {"miou": 0.70, "best_member": "a", "best_member_miou": 0.71},
        "ms": {"miou": 0.74, "best_member": "a", "best_member_miou": 0.73}}}}}))
    notes = {n.mode: n for n in report.ensemble_notes(tmp_path / "e.json")}
    assert not notes["none"].offered and notes["ms"].offered and notes["ms"].members == ("a", "b")
    assert report.ensemble_notes(tmp_path / "missing.json") == []


def test_shipped_cards_carry_the_accurate_modes():
    """tools/accuracy_modes.py --write-cards: every shipped card has none / flip / ms with val mIoU and
    per-class IoU, and ms takes longer than none on the same machine."""
    for name, folder in zoo.shipped_models().items():
        modes = zoo.read_card(folder).modes
        assert set(modes) == {"none", "flip", "ms"}, name
        assert all(0 < m.miou < 1 and len(m.per_class_iou) == 11 for m in modes.values()), name
        assert modes["none"].latency_x == 1.0 and modes["ms"].latency_x > modes["flip"].latency_x > 1.0, name
