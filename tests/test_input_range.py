"""The input range: fitted by hand on synthetic frames, photos brought inside it, the card and engines carrying it."""
import json
import shutil

import numpy as np
import pytest
from conftest import REAL_CAMVID, ROOT, in_process

from sis import zoo
from sis.data.input_range import LUMA, InputRange, fit_input_range, frame_stats, into_range, outside
from sis.engines.predict import calibrated, in_range

RANGE = InputRange(luminance=(0.2, 0.7), contrast=(0.4, 1.2), red_green=(0.85, 1.05), blue_green=(0.95, 1.1))


def _scene(seed=0, h=60, w=80) -> np.ndarray:
    """A neutral street-like frame: grey-ish, mid brightness, ordinary contrast (inside RANGE)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.1, 0.9, (h, w, 1)).astype(np.float32)
    tint = np.array([0.97, 1.0, 1.02], np.float32)
    return np.clip(np.rint(base * tint * 255 * 0.85), 0, 255).astype(np.uint8)


def test_frame_stats_by_hand():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0] = (200, 100, 50)   # top row
    rgb[1] = (100, 100, 100)  # bottom row
    s = frame_stats(rgb)
    assert s.red_green == pytest.approx(150 / 100) and s.blue_green == pytest.approx(75 / 100)
    y_top = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    y_bot = 100 / 255
    assert s.luminance == pytest.approx((y_top + y_bot) / 2, rel=1e-5)
    assert s.contrast == pytest.approx(abs(y_top - y_bot) / 2 / s.luminance, rel=1e-4)


def test_fit_takes_each_statistics_minimum_and_maximum():
    frames = [_scene(i) for i in range(5)]
    rng = fit_input_range(frames, "five scenes")
    stats = [frame_stats(f) for f in frames]
    assert rng.luminance == (min(s.luminance for s in stats), max(s.luminance for s in stats))
    assert rng.red_green == (min(s.red_green for s in stats), max(s.red_green for s in stats))
    assert rng.frames == 5 and rng.source == "five scenes"
    assert all(into_range(f, rng) is f for f in frames)  # every training frame is inside its own range
    with pytest.raises(ValueError, match="at least one frame"):
        fit_input_range([])


def test_a_frame_inside_is_returned_untouched():
    rgb = _scene()
    assert not outside(frame_stats(rgb), RANGE)
    assert into_range(rgb, RANGE) is rgb and into_range(rgb, None) is rgb


def test_a_warm_cast_is_taken_back_to_the_edge_and_the_brightness_kept():
    rgb = _scene()
    warm = np.clip(rgb * np.array([1.4, 1.0, 0.65]), 0, 255).astype(np.uint8)
    s = frame_stats(warm)
    assert outside(s, RANGE) == ("a warm colour cast",)
    out = frame_stats(into_range(warm, RANGE))
    assert out.red_green == pytest.approx(RANGE.red_green[1], abs=0.01)
    assert out.blue_green == pytest.approx(RANGE.blue_green[0], abs=0.01)
    assert out.luminance == pytest.approx(s.luminance, abs=0.01)


def test_a_flat_frame_is_stretched_to_the_median_training_contrast():
    """A frame flatter than every training frame goes to a typical one's contrast (the median), not to the
    flattest one's; a card fitted before the median was kept stretches to the minimum, as it did."""
    rgb = _scene().astype(np.float32)
    flat = np.rint((rgb - rgb.mean()) * 0.25 + rgb.mean()).astype(np.uint8)
    assert "low contrast" in outside(frame_stats(flat), RANGE)
    typical = InputRange(RANGE.luminance, RANGE.contrast, RANGE.red_green, RANGE.blue_green, contrast_median=0.6)
    out = frame_stats(into_range(flat, typical))
    assert out.contrast == pytest.approx(0.6, abs=0.02)
    assert out.luminance == pytest.approx(frame_stats(flat).luminance, abs=0.01)
    assert frame_stats(into_range(flat, RANGE)).contrast == pytest.approx(RANGE.contrast[0], abs=0.02)
    assert InputRange.from_dict(json.loads(json.dumps(typical.to_dict()))) == typical
    assert InputRange.from_dict(RANGE.to_dict()).contrast_median is None


def test_the_fitted_range_keeps_the_median_contrast_and_a_union_the_lower():
    from sis.data.input_range import union
    frames = [np.rint((_scene().astype(np.float32) - 128) * k + 128).clip(0, 255).astype(np.uint8)
              for k in (0.5, 0.7, 1.0)]
    rng = fit_input_range(frames)
    assert rng.contrast_median == pytest.approx(frame_stats(frames[1]).contrast)
    assert rng.contrast[0] < rng.contrast_median < rng.contrast[1]
    assert union(rng, fit_input_range(frames[:1])).contrast_median == fit_input_range(frames[:1]).contrast_median
    assert union(rng, RANGE).contrast_median == rng.contrast_median  # a card without one leaves the other's


def test_a_dark_frame_is_brightened_to_the_edge_and_a_contrasted_one_has_its_midtones_lifted():
    from dataclasses import replace
    dark = (_scene().astype(np.float32) * 0.3).astype(np.uint8)
    assert outside(frame_stats(dark), RANGE) == ("a dark exposure",)
    assert frame_stats(into_range(dark, RANGE)).luminance == pytest.approx(RANGE.luminance[0], abs=0.01)
    harsh = np.zeros((60, 80, 3), np.uint8)
    harsh[::4] = 255  # a quarter of the rows white, the rest black: contrast 1.73, brightness 0.25 (inside)
    s = frame_stats(harsh)
    assert s.contrast > RANGE.contrast[1] and RANGE.luminance[0] <= s.luminance
    assert outside(s, RANGE) == ("deep shadows",)
    assert np.array_equal(into_range(harsh, RANGE), harsh)  # blacks and whites alone: no midtone to lift
    shadows = np.rint(255 * (_scene() / 255.0) ** 2.6).astype(np.uint8)  # a gamma of 2.6 darkens the midtones
    rng = replace(RANGE, contrast=(0.4, 0.8), contrast_median=0.6)  # the scene itself reads 0.46
    s = frame_stats(shadows)
    assert s.contrast > rng.contrast[1] and "deep shadows" in outside(s, rng)
    out = into_range(shadows, rng)
    assert frame_stats(out).contrast == pytest.approx(rng.contrast_median, abs=0.02)  # to a typical frame's
    y0, y1 = shadows.astype(np.float32) @ LUMA, out.astype(np.float32) @ LUMA
    assert (np.diff(y1.ravel()[np.argsort(y0.ravel(), kind="stable")]) >= -1).all()  # a curve: the order of tones kept
    assert np.abs(out.astype(int) - _scene()).mean() < np.abs(shadows.astype(int) - _scene()).mean()


SHARP = InputRange(RANGE.luminance, RANGE.contrast, RANGE.red_green, RANGE.blue_green, sharpness=(0.11, 0.9))


def _street(h=120, w=160) -> np.ndarray:
    """Blocks with hard edges (as buildings and cars give): sharp, inside RANGE's colour and brightness."""
    blocks = np.random.default_rng(3).uniform(0.05, 0.95, (h // 20, w // 20)).astype(np.float32)
    y = np.kron(blocks, np.ones((20, 20), np.float32))[..., None] * np.array([0.97, 1.0, 1.02], np.float32)
    return np.rint(y * 255).astype(np.uint8)


def test_a_blurred_frame_is_sharpened_to_the_softest_training_frame_and_a_noisy_one_never_smoothed():
    from PIL import Image, ImageFilter
    street = _street()
    assert not outside(frame_stats(street), SHARP) and into_range(street, SHARP) is street
    soft = np.asarray(Image.fromarray(street).filter(ImageFilter.GaussianBlur(4)))
    s = frame_stats(soft)
    assert s.sharpness < SHARP.sharpness[0] and outside(s, SHARP) == ("blurred detail",)
    out = into_range(soft, SHARP)
    after = frame_stats(out)
    assert after.sharpness == pytest.approx(SHARP.sharpness[0], rel=0.05)
    assert after.luminance == pytest.approx(s.luminance, abs=0.01)
    assert np.abs(out.astype(int) - street).mean() < np.abs(soft.astype(int) - street).mean()  # nearer the sharp one
    noisy = np.clip(street + np.random.default_rng(0).normal(0, 40, street.shape), 0, 255).astype(np.uint8)
    assert frame_stats(noisy).sharpness > SHARP.sharpness[1] and into_range(noisy, SHARP) is noisy


def test_a_frame_softer_than_any_training_frame_is_given_to_the_model_smaller():
    """Sharpening stops at the softest training frame; the rest of the blur shrinks with the frame: the model
    is given it at 0.75 or 0.5 of its work size (the softer, the smaller), its logits back at the work size."""
    from dataclasses import replace
    from types import SimpleNamespace

    from PIL import Image, ImageFilter

    from sis.data.input_range import soft_scale
    from sis.engines.predict import predict, work_logits
    street = _street()
    rng = replace(SHARP, sharpness=(frame_stats(street).sharpness, 0.9))  # the street is the softest it knows
    soft = {r: np.asarray(Image.fromarray(street).filter(ImageFilter.GaussianBlur(r))) for r in (1, 4)}
    assert soft_scale(street, rng) == 1.0 and soft_scale(soft[1], rng) == 0.75 and soft_scale(soft[4], rng) == 0.5
    assert soft_scale(soft[4], None) == soft_scale(soft[4], RANGE) == 1.0  # no range, or one without sharpness
    assert soft_scale(np.full((40, 60, 3), 128, np.uint8), rng) == 1.0  # nothing to measure is never soft
    eng = _Recorder(rng)
    eng.cfg = SimpleNamespace(base_size=(120, 160), class_set=SimpleNamespace(names=["a", "b"]), name="rec")
    eng.name, eng.prepared = "rec", []
    eng.prepare = eng.prepared.append
    work = work_logits(eng, soft[4])
    assert eng.seen.shape == (1, 3, 60, 80) and work.logits.shape == (2, 120, 160)
    assert work.seen.shape == (120, 160, 3) and work.moved == ("blurred detail",)  # the photo's words, not the smaller one's
    big = np.asarray(Image.fromarray(soft[4]).resize((320, 240), Image.BILINEAR))
    p = predict(eng, big)
    assert p.given_size == (60, 80) and p.work_size == (120, 160) and p.labels.shape == (240, 320)
    assert eng.prepared == [(60, 80)] and p.moved == ("blurred detail",)
    assert predict(eng, street).given_size == (120, 160) and eng.seen.shape == (1, 3, 120, 160)


def test_predict_reads_a_photos_sharpness_once(monkeypatch):
    """predict makes the frame the model is given once, builds its graph for that size, and hands it on."""
    from types import SimpleNamespace

    import sis.engines.predict as P
    reads = []
    real = P.soft_scale
    monkeypatch.setattr(P, "soft_scale", lambda x, rng: reads.append(x.shape) or real(x, rng))
    street = _street()
    eng = _Recorder(_softest_at(street))
    eng.cfg = SimpleNamespace(base_size=(120, 160), class_set=SimpleNamespace(names=["a", "b"]), name="rec")
    eng.name, eng.prepare = "rec", lambda size: None
    P.predict(eng, street)
    assert reads == [(120, 160, 3)]


def _softest_at(street):
    from dataclasses import replace
    return replace(SHARP, sharpness=(frame_stats(street).sharpness, 0.9))


def test_evaluation_gives_a_soft_frame_to_the_model_at_the_apps_smaller_size():
    from dataclasses import replace
    from types import SimpleNamespace

    import torch
    from PIL import Image, ImageFilter

    from sis.classes import CAMVID
    from sis.data.dataset import Frames
    from sis.training.evaluate import evaluate
    street = _street()
    rng = replace(SHARP, sharpness=(frame_stats(street).sharpness, 0.9))
    soft = np.asarray(Image.fromarray(street).filter(ImageFilter.GaussianBlur(4)))
    imgs = [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in (street, soft, street)]
    frames = Frames(["a", "b", "c"], imgs, [torch.zeros(120, 160, dtype=torch.int64)] * 3, CAMVID)
    sizes = []

    class Engine(_Recorder):
        def __call__(self, x):
            sizes.append((len(x), *x.shape[-2:]))
            return np.zeros((len(x), CAMVID.num_classes, *x.shape[-2:]), np.float32)
    cfg = SimpleNamespace(base_size=(120, 160))
    out = evaluate(None, cfg, frames, torch.device("cpu"), engine=Engine(rng), input_range=rng)
    assert sorted(sizes) == [(1, 60, 80), (2, 120, 160)] and out["frames"] == 3
    sizes.clear()
    evaluate(None, cfg, frames, torch.device("cpu"), engine=Engine(rng))  # no range given: as they are
    assert sizes == [(3, 120, 160)]


@pytest.mark.filterwarnings("error")  # no division by an empty channel, no NaN cast to uint8
def test_frames_with_nothing_to_balance_or_measure_pass_through_whole():
    """A 1-pixel black dot, a flat grey frame, a pure blue one: no cast a gain could undo, no sharpness to read."""
    dot, grey = np.zeros((1, 1, 3), np.uint8), np.full((40, 60, 3), 128, np.uint8)
    blue = np.zeros((40, 60, 3), np.uint8)
    blue[..., 2] = np.random.default_rng(0).integers(60, 200, (40, 60))
    for rgb in (dot, grey, blue):
        s = frame_stats(rgb)
        assert s.red_green == s.blue_green == 1.0
        assert not {"a warm colour cast", "a cool colour cast", "blurred detail"} & set(outside(s, SHARP))
        out = into_range(rgb, SHARP)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert fit_input_range([grey]).sharpness is None and fit_input_range([grey, _street()]).sharpness is not None


def test_a_card_fitted_before_sharpness_was_measured_never_sharpens():
    from PIL import Image, ImageFilter
    old = {k: v for k, v in json.loads(json.dumps(SHARP.to_dict())).items() if k != "sharpness"}
    rng = InputRange.from_dict(old)
    assert rng == RANGE and rng.sharpness is None
    soft = np.asarray(Image.fromarray(_street()).filter(ImageFilter.GaussianBlur(4)))
    assert not outside(frame_stats(soft), rng) and into_range(soft, rng) is soft
    assert InputRange.from_dict(json.loads(json.dumps(SHARP.to_dict()))) == SHARP
    from sis.data.input_range import union
    assert union(rng, SHARP).sharpness == SHARP.sharpness == union(SHARP, rng).sharpness


GRAINY = InputRange(RANGE.luminance, RANGE.contrast, RANGE.red_green, RANGE.blue_green, sharpness=(0.11, 2.0),
                    noise=(0.001, 0.012))


def _grain(rgb: np.ndarray, sd: float, seed: int = 0) -> np.ndarray:
    """``rgb`` with grey grain of ``sd`` (in [0, 1] units): the same in each channel, so luma's noise is ``sd``."""
    g = np.random.default_rng(seed).normal(0, sd, rgb.shape[:2])[..., None]
    return np.clip(rgb.astype(np.float32) / 255 + g, 0, 1)


def test_noise_level_reads_the_grain_and_not_the_edges():
    street = _street(240, 320)
    assert frame_stats(street).noise < 0.002  # hard edges everywhere, no grain
    for sd in (0.01, 0.03, 0.06):
        assert frame_stats(_grain(street, sd)).noise == pytest.approx(sd, rel=0.15)
    assert np.isnan(frame_stats(np.zeros((2, 9, 3), np.uint8)).noise)


def test_a_frame_grainier_than_any_training_frame_is_smoothed_and_its_edges_kept():
    street = _street()
    noisy = np.rint(_grain(street, 12 / 255) * 255).astype(np.uint8)
    s = frame_stats(noisy)
    assert outside(frame_stats(street), GRAINY) == () and outside(s, GRAINY) == ("heavy sensor noise",)
    out = into_range(noisy, GRAINY)
    assert frame_stats(out).noise < s.noise / 3
    assert np.abs(out.astype(int) - street).mean() < np.abs(noisy.astype(int) - street).mean() / 2
    step = lambda im: np.abs(im[:, 19].astype(int) - im[:, 20].astype(int)).mean()  # across a block's edge
    assert step(out) > 0.8 * step(street)
    assert frame_stats(out).luminance == pytest.approx(s.luminance, abs=0.01)
    # grain drawn apart in each channel (colour speckle, as the shift benchmark's) goes as well
    speckle = np.random.default_rng(1).normal(0, 12 / 255, street.shape)
    colour = np.rint(np.clip(street / 255 + speckle, 0, 1) * 255).astype(np.uint8)
    out = into_range(colour, GRAINY)
    assert frame_stats(out).noise < frame_stats(colour).noise / 3
    assert np.abs(out.astype(int) - street).mean() < np.abs(colour.astype(int) - street).mean() / 2
    old = InputRange.from_dict({k: v for k, v in GRAINY.to_dict().items() if k != "noise"})
    assert old.noise is None and into_range(noisy, old) is noisy  # a card fitted before noise was measured
    assert InputRange.from_dict(json.loads(json.dumps(GRAINY.to_dict()))) == GRAINY
    from sis.data.input_range import union
    assert union(old, GRAINY).noise == GRAINY.noise == union(GRAINY, old).noise
    assert fit_input_range([street, noisy]).noise == (frame_stats(street).noise, s.noise)


def _jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_a_frame_blockier_than_any_training_frame_has_its_colour_smoothed_and_its_luma_kept():
    from PIL import Image
    from sis.data.input_range import union
    photo = np.asarray(Image.open(ROOT / "assets" / "samples" / "0016E5_07959.jpg").convert("RGB"))
    blocky = InputRange(RANGE.luminance, RANGE.contrast, RANGE.red_green, RANGE.blue_green, blockiness=(1.0, 1.22))
    assert not outside(frame_stats(photo), blocky) and into_range(photo, blocky) is photo
    heavy = _jpeg(photo, 8)
    s = frame_stats(heavy)
    assert s.blockiness > 2 and outside(s, blocky) == ("heavy compression blocks",)
    out = into_range(heavy, blocky)
    ycc = lambda im: np.asarray(Image.fromarray(im).convert("YCbCr")).astype(int)
    assert np.abs(ycc(out)[..., 0] - ycc(heavy)[..., 0]).mean() < 0.5  # luma, coded finer, is left alone
    chroma_err = lambda im: np.abs(ycc(im)[..., 1:] - ycc(photo)[..., 1:]).mean()
    assert chroma_err(out) < 0.9 * chroma_err(heavy)  # the colour patches go toward the original's colour
    # resized since it was compressed (as a phone photo is to its work size): the grid is gone, nothing moves
    resized = np.asarray(Image.fromarray(heavy).resize((370, 277), Image.BILINEAR))
    assert frame_stats(resized).blockiness < 1.15 and into_range(resized, blocky) is resized
    assert np.isnan(frame_stats(np.full((40, 60, 3), 90, np.uint8)).blockiness)  # flat: nothing to measure
    assert np.isnan(frame_stats(heavy[:12, :12]).blockiness)                     # under two blocks
    old = InputRange.from_dict({k: v for k, v in blocky.to_dict().items() if k != "blockiness"})
    assert old.blockiness is None and into_range(heavy, old) is heavy  # a card fitted before blocking was measured
    assert InputRange.from_dict(json.loads(json.dumps(blocky.to_dict()))) == blocky
    assert union(old, blocky).blockiness == blocky.blockiness == union(blocky, old).blockiness
    assert fit_input_range([photo, heavy]).blockiness == (frame_stats(photo).blockiness, s.blockiness)


def test_what_was_moved_is_read_once_and_reaches_the_prediction_through_any_engine():
    from types import SimpleNamespace

    from sis.engines.accurate import AccurateEngine
    from sis.engines.predict import predict, work_logits
    cool = np.clip(_street() * np.array([0.6, 1.0, 1.5]), 0, 255).astype(np.uint8)
    single = _Recorder(SHARP)
    single.cfg = SimpleNamespace(base_size=(120, 160), class_set=SimpleNamespace(names=["a", "b"]), name="rec")
    single.name, single.prepare = "rec", lambda size: None
    work = work_logits(single, cool)
    assert work.moved == ("a cool colour cast",) and work.seen.shape == cool.shape
    assert frame_stats(single.seen[0].transpose(1, 2, 0)).blue_green == pytest.approx(SHARP.blue_green[1], abs=0.01)
    assert predict(single, cool).moved == ("a cool colour cast",) and predict(single, _street()).moved == ()
    both = AccurateEngine([single])  # its members move the frame; the words come from its first member's range
    assert work_logits(both, cool).moved == ("a cool colour cast",)


def test_an_accurate_mode_moves_a_photo_at_its_work_size_not_at_each_scale():
    """Sharpness is per pixel: a sharp photo enlarged 1.5x for a pass reads softer than its range, yet
    must not be sharpened; the range is applied once, at the size the range was measured at."""
    from dataclasses import replace
    from types import SimpleNamespace

    from sis.data.images import resize_images, scaled_size
    from sis.engines.accurate import TTA, AccurateEngine
    street = _street()
    rng = replace(SHARP, sharpness=(0.9 * frame_stats(street).sharpness, 0.9))
    big = resize_images(street.transpose(2, 0, 1)[None], scaled_size(street.shape[:2], 1.5))[0]
    assert frame_stats(big.transpose(1, 2, 0)).sharpness < rng.sharpness[0]  # the case itself

    class Every(_Recorder):
        def __call__(self, x):
            self.all = getattr(self, "all", []) + [x]
            return super().__call__(x)
    member = Every(rng)
    member.cfg = SimpleNamespace(class_set=SimpleNamespace(names=["a", "b"]), name="rec")
    member.name = "rec"
    AccurateEngine([member], TTA(False, (1.0, 1.5)))(street.transpose(2, 0, 1)[None])
    assert np.array_equal(member.all[0][0], street.transpose(2, 0, 1)) and np.array_equal(member.all[1][0], big)


def test_the_range_reads_from_a_card_and_garbage_reads_as_none():
    d = json.loads(json.dumps(RANGE.to_dict()))  # as card.json keeps it (lists, not tuples)
    assert InputRange.from_dict(d) == RANGE
    for bad in (None, {}, {"luminance": "bright"}, [1, 2], "x"):
        assert InputRange.from_dict(bad) is None
    card = zoo.ModelCard.from_dict({"input_range": d})
    assert card.input_range == RANGE and zoo.ModelCard.from_dict({}).input_range is None


class _Recorder:
    """An engine that keeps what it was given: the input range is applied before the engine sees a frame."""
    temperature = 2.0

    def __init__(self, rng):
        self.input_range, self.seen = rng, None

    def __call__(self, x):
        self.seen = x
        return np.ones((len(x), 2, *x.shape[-2:]), np.float32)


def test_engines_see_the_photo_inside_their_range_and_the_logits_are_calibrated():
    warm = np.clip(_scene() * np.array([1.4, 1.0, 0.65]), 0, 255).astype(np.uint8)
    batch = warm.transpose(2, 0, 1)[None]
    eng = _Recorder(RANGE)
    logits = calibrated(eng, batch)
    assert np.allclose(logits, 0.5)
    fixed = frame_stats(eng.seen[0].transpose(1, 2, 0))
    assert fixed.red_green == pytest.approx(RANGE.red_green[1], abs=0.01)
    eng = _Recorder(None)
    calibrated(eng, batch)
    assert eng.seen is batch
    assert in_range(batch, None) is batch


def test_update_card_never_replaces_an_unreadable_card(tmp_path):
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        zoo.update_card(tmp_path, input_range=RANGE.to_dict())
    assert (tmp_path / "card.json").read_text() == "{not json"


def test_every_shipped_model_carries_its_training_range():
    for name in zoo.list_models():
        folder = ROOT / "weights" / name
        if (folder / "card.json").is_file():
            rng = zoo.read_card(folder).input_range
            assert rng is not None and rng.frames == 367 and rng.contrast_median is not None, name
            assert 1.0 < rng.blockiness[0] < rng.blockiness[1] < 1.3  # no training frame is visibly blocky
            assert rng.contrast[0] < rng.contrast_median < rng.contrast[1]
            assert rng.red_green[0] < 1 < rng.blue_green[1]


def test_calibrate_input_range_writes_the_card_and_eval_can_go_without(tiny_model, tiny_data, tmp_path, capsys):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    r = in_process(capsys, "calibrate", "--model", folder, "--data", tiny_data, "--input-range", "--write")
    assert r.returncode == 0, r.stderr[-1500:]
    card = zoo.read_card(folder)
    assert card.input_range is not None and card.input_range.frames == 6 and card.val_miou is not None
    runs = {}
    for flag in ([], ["--no-input-range"]):
        r = in_process(capsys, "eval", "--model", folder, "--data", tiny_data, "--json", *flag)
        assert r.returncode == 0, r.stderr[-1500:]
        runs[bool(flag)] = json.loads(r.stdout)["miou"]
    assert all(0 <= v <= 1 for v in runs.values())


@pytest.mark.skipif(not (REAL_CAMVID / "val").is_dir(), reason=f"no CamVid at {REAL_CAMVID}")
def test_camvid_val_lies_inside_the_shipped_range_so_its_scores_do_not_move():
    from sis.data.dataset import list_pairs, read_rgb
    rng = zoo.read_card(ROOT / "weights" / zoo.DEFAULT_MODEL).input_range
    for img, _ in list_pairs(REAL_CAMVID, "val")[::5]:
        rgb = read_rgb(img)
        assert into_range(rgb, rng) is rgb, img.name


def test_a_trained_model_keeps_the_range_of_its_training_frames(tiny_model, tiny_data):
    from sis.data.dataset import list_pairs, read_rgb
    card = zoo.read_card(tiny_model)
    frames = [read_rgb(i) for i, _ in list_pairs(tiny_data, "train")]
    fitted, kept = fit_input_range(frames, f"train of {tiny_data.name}").to_dict(), card.input_range.to_dict()
    assert kept.pop("source") == fitted.pop("source") and kept.pop("frames") == fitted.pop("frames") == 6
    assert kept == {k: pytest.approx(v, rel=1e-4) for k, v in fitted.items()}  # float32 sums, another order


def test_predict_says_which_photos_were_moved_inside_the_range(tiny_model, tmp_path, capsys):
    from PIL import Image

    from sis.cli import main
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    zoo.update_card(folder, input_range=RANGE.to_dict() | {"source": "train of tiny"})
    grey = _scene(h=360, w=480)  # at the model's work size: what the engine reads is what was saved
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.clip(grey * np.array([0.6, 1.0, 1.5]), 0, 255).astype(np.uint8)).save(tmp_path / "cool.png")
    assert main(["predict", "--model", str(folder), "--out", str(tmp_path / "out"),
                 str(tmp_path / "grey.png"), str(tmp_path / "cool.png")]) == 0
    lines = {ln.split(" -> ")[0].rsplit("/", 1)[-1]: ln for ln in capsys.readouterr().out.splitlines() if " -> " in ln}
    assert "moved inside" not in lines["grey.png"]
    assert "moved inside the model's input range: a cool colour cast" in lines["cool.png"]


def test_union_spans_both_and_a_fine_tune_keeps_what_its_start_saw(tiny_model, data_copy, tmp_path):
    from conftest import TINY_MODEL

    from sis.data.input_range import union
    from sis.training.config import TrainConfig
    from sis.training.loop import train
    narrow = InputRange((0.3, 0.4), (0.5, 0.6), (0.9, 0.95), (1.0, 1.05), 3, "a")
    both = union(RANGE, narrow)
    assert both.luminance == RANGE.luminance and both.frames == RANGE.frames + 3 and union(narrow, None) == narrow
    wide = InputRange((0.01, 0.99), (0.01, 3.0), (0.5, 2.0), (0.5, 2.0), 367, "train of camvid")
    init = tmp_path / "init"
    shutil.copytree(tiny_model, init, ignore=shutil.ignore_patterns("checkpoint"))
    zoo.update_card(init, input_range=wide.to_dict())
    out = tmp_path / "ft"
    train(TrainConfig(model=TINY_MODEL, data=str(data_copy), init=str(init), out=str(out), max_steps=1,
                      batch_size=2, threads=None), log=lambda m: None)
    kept = zoo.read_card(out).input_range
    assert kept.luminance == wide.luminance and kept.frames == 367 + 3
    assert kept.red_green[0] == wide.red_green[0] and kept.red_green[1] >= wide.red_green[1]  # the frames' own reach further
    assert kept.source.startswith("train of camvid and train of ")
