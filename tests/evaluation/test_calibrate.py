"""Calibration: the temperature fit by hand, its use in predict, and the unfamiliar-photo sentence."""
import numpy as np
import pytest

from sis import zoo
from sis.engines.predict import predict, softmax
from sis.evaluation.calibrate import calibrate, fit_temperature


def test_fit_recovers_the_temperature_that_made_the_labels():
    """Labels drawn from softmax(z) and logits 3 z: the best temperature is 3."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (20000, 5)).astype(np.float32)
    p = softmax(z, axis=1)
    labels = (p.cumsum(1) > rng.random((len(z), 1))).argmax(1)
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(z, labels) == pytest.approx(1.0, rel=0.05)


class _Overconfident:
    """A two-class engine whose logits are 4x those of a calibrated one: class 0 where the pixel's red
    is > 127, logit gap 4 (confidence 0.98) where the labels agree with it only 73% of the time (gap 1)."""
    name = "fake"
    temperature = 1.0

    def __init__(self, cfg):
        self.cfg = cfg

    def prepare(self, size):
        pass

    def __call__(self, x):
        n, _, h, w = x.shape
        out = np.zeros((n, 2, h, w), np.float32)
        red = x[:, 0] > 127
        out[:, 0] = np.where(red, 4.0, 0.0)
        out[:, 1] = np.where(red, 0.0, 4.0)
        return out


def test_calibrate_on_an_overconfident_engine_and_predict_applies_it():
    from sis.classes import ClassSet
    cfg = zoo.make_config("pspnet-resnet18", ClassSet(("a", "b"), ((0, 0, 0), (255, 255, 255)), 255))
    rng = np.random.default_rng(1)
    frames = []
    for i in range(4):
        rgb = rng.integers(0, 256, (360, 480, 3)).astype(np.uint8)  # the base size: no resize blurs the colours
        truth = np.where(rgb[..., 0] > 127, 0, 1).astype(np.uint8)
        flip = rng.random(truth.shape) > 1 / (1 + np.exp(-1.0))  # wrong with probability ~0.27
        frames.append((f"f{i}", rgb, np.where(flip, 1 - truth, truth).astype(np.uint8)))
    engine = _Overconfident(cfg)
    cal = calibrate(engine, frames, pixels_per_frame=2000)
    assert cal.temperature == pytest.approx(4.0, rel=0.15)
    assert cal.ece_after < cal.ece_before / 3 and cal.nll_after < cal.nll_before
    before = predict(engine, frames[0][1]).confidence.mean()
    engine.temperature = cal.temperature
    after = predict(engine, frames[0][1]).confidence.mean()
    assert before == pytest.approx(1 / (1 + np.exp(-4)), rel=1e-3) and after == pytest.approx(0.73, abs=0.03)
    assert cal.low_confidence == pytest.approx(after, abs=0.02)


def test_an_unfamiliar_photo_is_said_in_one_sentence(tmp_path):
    from sis.vis.report import advice, unfamiliarity
    card = zoo.update_card(tmp_path, calibration={"temperature": 2.0, "low_confidence": 0.8, "low_percentile": 5})
    assert zoo.read_card(tmp_path).temperature == 2.0 and card.low_confidence == 0.8
    said = unfamiliarity(0.62, card, "unet-vgg11_bn", unsure_of=("Pavement", "Building"))
    assert said == ("unet-vgg11_bn is unsure of this photo: 62% mean confidence, below the 80% that 95% of CamVid's "
                    "own val frames reach, least of its Pavement and Building; Accurate mode or adapting to a few "
                    "photos of this street (Adapt, no labels needed) may help.")
    assert len(said.split()) < 45
    assert unfamiliarity(0.85, card, "x") is None and unfamiliarity(0.1, zoo.ModelCard(), "x") is None
    assert "79.6% mean confidence, below the 80.0%" in unfamiliarity(0.796, card, "x")  # never "80%, below 80%"
    tuned = zoo.update_card(tmp_path, calibration={"temperature": 1.2, "low_confidence": 0.7, "low_percentile": 5,
                                                   "reference": "the frames its training run held out for validation"})
    assert "below the 70% that 95% of the frames its training run held out for validation reach;" in \
        unfamiliarity(0.5, tuned, "mine")
    # the advice fits the page: no Accurate mode where it is on or on Video, no Adapt after adapting
    assert "Accurate" not in advice("photo", accurate=True) and "Adapt" in advice("photo", accurate=True)
    assert advice("clip") == "adapting to this clip (Adapt, no labels needed) may help"
    assert "Adapt" not in advice("photo", adapted=True) and "Correct" in advice("clip", adapted=True)
    assert unfamiliarity(0.5, card, "x", "clip", help_=advice("clip")).endswith("adapting to this clip (Adapt, "
                                                                               "no labels needed) may help.")


def test_the_classes_a_model_is_least_sure_of_by_hand():
    """Among classes on at least 5% of the pixels, the lowest mean confidence first."""
    from sis.vis.report import least_sure
    labels = np.array([[0] * 10 + [1] * 6 + [2] * 3 + [3] * 1] * 5)  # shares 50%, 30%, 15%, 5%
    conf = np.where(labels == 0, 0.9, np.where(labels == 1, 0.5, np.where(labels == 2, 0.7, 0.1)))
    names = ("Sky", "Building", "Pole", "Road")
    assert least_sure(labels, conf, names) == ("Road", "Building")
    assert least_sure(labels, conf, names, min_share=0.1) == ("Building", "Pole")
    assert least_sure(labels, conf, names, k=1, min_share=0.5) == ("Sky",)


def test_several_models_unsure_of_one_photo_are_said_in_one_sentence(tmp_path):
    from sis.vis.report import unfamiliar_to
    sure = zoo.ModelCard()  # no calibration: never says a photo is unfamiliar
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = zoo.update_card(tmp_path / "a", calibration={"temperature": 1.0, "low_confidence": 0.8, "low_percentile": 5})
    b = zoo.update_card(tmp_path / "b", calibration={"temperature": 1.0, "low_confidence": 0.7, "low_percentile": 5})
    assert unfamiliar_to([("a", 0.9, a), ("b", 0.75, b), ("c", 0.1, sure)]) is None
    one = unfamiliar_to([("a", 0.5, a), ("b", 0.75, b)], what="clip")
    assert one.startswith("a is unsure of this clip: 50% mean confidence, below the 80%")
    two = unfamiliar_to([("a", 0.5, a), ("b", 0.6, b), ("c", 0.1, sure)])
    assert two == ("2 of these 3 models are unsure of this photo (a 50% against 80%, b 60% against 70%): expect "
                   "mistakes, most where they disagree.")
