"""The shift benchmark: shifts by hand on small frames, its determinism, and the CLI."""
import json
import shutil

import numpy as np
import pytest
from conftest import make_frame

from sis.data import shifts
from sis.data.shifts import SHIFTS, ShiftError, shifted

VOID = 11


@pytest.fixture
def frame():
    return make_frame(np.random.default_rng(0), 60, 80)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_every_shift_is_deterministic_and_well_formed(frame, name):
    rgb, lab = frame
    for sev in shifts.SEVERITIES:
        a, la = shifted(rgb, lab, name, sev, frame=3, void=VOID)
        b, lb = shifted(rgb, lab, name, sev, frame=3, void=VOID)
        assert a.dtype == np.uint8 and la.dtype == np.uint8 and a.shape[:2] == la.shape
        assert np.array_equal(a, b) and np.array_equal(la, lb)  # two runs agree exactly
        if not SHIFTS[name].geometric:
            assert np.array_equal(la, lab) and a.shape == rgb.shape  # colour only: the labels stay


def test_noise_depends_on_the_frame_and_seed_only(frame):
    rgb, lab = frame
    a = shifted(rgb, lab, "noise", 2, frame=0)[0]
    assert not np.array_equal(a, shifted(rgb, lab, "noise", 2, frame=1)[0])
    assert not np.array_equal(a, shifted(rgb, lab, "noise", 2, frame=0, seed=1)[0])


def test_photometric_shifts_by_hand():
    grey = np.full((4, 4, 3), 100, np.uint8)
    lab = np.zeros((4, 4), np.uint8)
    assert (shifted(grey, lab, "exposure", 1, 0)[0] == 140).all()  # 100 x 1.4
    assert (shifted(grey, lab, "gamma", 2, 0)[0] == round(255 * (100 / 255) ** 2.0)).all()
    assert (shifted(grey, lab, "saturation", 3, 0)[0] == 100).all()  # a grey pixel has no colour to boost
    ramp = np.tile(np.arange(0, 200, 50, dtype=np.uint8)[None, :, None], (4, 1, 3))
    flat = shifted(ramp, lab, "contrast", 1, 0)[0].astype(int)
    assert flat[0, :, 0].tolist() == [30, 60, 90, 120]  # (x - 75) * 0.6 + 75
    cast = shifted(grey, lab, "white_balance", 2, 0)[0].astype(int)
    assert cast[0, 0, 0] != cast[0, 0, 2] and abs(cast.mean() - 100) <= 1  # a cast; the brightness kept
    darker = [shifted(grey, lab, "dusk", s, 0)[0].mean() for s in shifts.SEVERITIES]
    assert darker[0] > darker[1] > darker[2]


def test_geometric_shifts_move_the_labels_with_the_image():
    rgb = np.zeros((360, 480, 3), np.uint8)
    lab = np.zeros((360, 480), np.uint8)
    lab[:, 240:] = 3
    wide, lw = shifted(rgb, lab, "aspect", 1, 0, void=VOID)  # 16:9 keeps the width
    assert wide.shape[:2] == lw.shape == (270, 480)
    assert shifted(rgb, lab, "aspect", 2, 0, void=VOID)[1].shape == (206, 480)  # 21:9
    tall = shifted(rgb, lab, "aspect", 3, 0, void=VOID)[1]  # 3:4 keeps the height
    assert tall.shape == (360, 270) and (tall[:, :135] == 0).all() and (tall[:, 135:] == 3).all()  # x0 = 105
    _, out = shifted(rgb, lab, "zoom_out", 3, 0, void=VOID)  # the frame at half size, centred
    assert out.shape == lab.shape and (out[:90] == VOID).all() and (out[:, :120] == VOID).all()
    assert (out[90:270, 120:240] == 0).all() and (out[90:270, 240:360] == 3).all()
    _, zin = shifted(rgb, lab, "zoom_in", 3, 0, void=VOID)  # the centre half, enlarged: the edge moves nowhere
    assert (zin[:, :240] == 0).all() and (zin[:, 240:] == 3).all()
    img, bon = shifted(np.full((360, 480, 3), 200, np.uint8), lab, "bonnet", 2, 0, void=VOID)
    assert (bon[-1] == VOID).all() and (bon[:250] == lab[:250]).all() and img[-1, 240].max() < 150


def test_unknown_shift_or_severity_says_what_is_valid(frame):
    rgb, lab = frame
    with pytest.raises(ShiftError, match="unknown shift 'fog'; valid shifts: exposure, contrast"):
        shifted(rgb, lab, "fog", 1, 0)
    with pytest.raises(ShiftError, match="severity must be one of 1, 2, 3"):
        shifted(rgb, lab, "blur", 4, 0)
    assert shifts.parse_shifts("all") == list(SHIFTS) and shifts.parse_shifts("blur, jpeg") == ["blur", "jpeg"]


class _Constant:
    """An engine that answers class ``k`` everywhere with probability ~0.9 (logits by hand)."""
    name = "constant"
    temperature = 1.0

    def __init__(self, cfg, k):
        self.cfg, self.k = cfg, k

    def prepare(self, size):
        pass

    def __call__(self, x):
        n, _, h, w = x.shape
        logits = np.zeros((n, self.cfg.class_set.num_classes, h, w), np.float32)
        logits[:, self.k] = np.log(0.9 * (self.cfg.class_set.num_classes - 1) / 0.1)
        return logits


def test_benchmark_scores_by_hand_and_twice_the_same():
    """A constant answer scores the same under every photometric shift: IoU of that class = its share of
    the labelled pixels, and the ECE is |0.9 - that share|."""
    from sis import zoo
    from sis.evaluation.robustness import shift_benchmark
    cfg = zoo.make_config("pspnet-resnet18")
    rng = np.random.default_rng(1)
    frames = []
    for i in range(3):
        rgb, lab = make_frame(rng, 40, 60)
        frames.append((f"f{i}", rgb, lab))
    labels = np.stack([f[2] for f in frames])
    k = int(np.bincount(labels[labels != VOID]).argmax())
    share = float((labels == k).sum() / (labels != VOID).sum())
    rep = shift_benchmark(_Constant(cfg, k), frames, ["blur", "jpeg"], (1, 3))
    assert rep.clean.per_class_iou[cfg.class_set.names[k]] == pytest.approx(share)
    assert rep.clean.ece == pytest.approx(abs(0.9 - share), abs=1e-4)
    assert [(s.shift, s.severity) for s in rep.scores] == [("blur", 1), ("blur", 3), ("jpeg", 1), ("jpeg", 3)]
    assert all(s.miou == pytest.approx(rep.clean.miou) for s in rep.scores)
    assert rep.mean == pytest.approx(rep.clean.miou) and set(rep.by_shift()) == {"blur", "jpeg"}
    again = shift_benchmark(_Constant(cfg, k), frames, ["blur", "jpeg"], (1, 3))

    def figures(r):  # all but the timings
        d = r.to_dict()
        return [d["mean"], d["by_shift"], {k: v for k, v in d["clean"].items() if k != "ms"},
                [{k: v for k, v in sc.items() if k != "ms"} for sc in d["scores"]]]
    assert figures(again) == figures(rep)


def test_how_often_the_page_warns_counts_low_confidence_by_hand():
    """A frame is warned of when the card finds its confidence low; shares are taken at the severest level,
    every shift together and each apart."""
    from sis.evaluation.robustness import ShiftReport, ShiftScore, warning_rate
    from sis.zoo.card import ModelCard

    def score(shift, sev, conf):
        return ShiftScore(shift, sev, 0.5, 0.9, 0.0, {}, conf, 1.0)
    rep = ShiftReport("m", "e", 4, 0, score("clean", 0, [0.95, 0.97, 0.8, 0.96]),
                      [score("blur", 1, [0.5] * 4),  # not the severest level: not counted
                       score("blur", 3, [0.95, 0.7, 0.96, 0.97]),
                       score("jpeg", 3, [0.7, 0.6, 0.5, 0.99])])
    warned = warning_rate(rep, ModelCard(low_confidence=0.9).unsure)
    assert warned.severity == 3 and warned.clean == 0.25
    assert warned.by_shift == {"blur": 0.25, "jpeg": 0.75} and warned.severe == 0.5
    assert warning_rate(rep, ModelCard().unsure).severe == 0.0  # no line: never


@pytest.mark.slow
def test_cli_shift_benchmark_on_a_folder_without_a_card(tiny_model, tiny_data, tmp_path, capsys):
    """`eval --shift` runs on the model's engine here, writes its JSON, and needs no card."""
    from sis.cli import main
    folder = tmp_path / "nocard"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint", "card.json"))
    out = tmp_path / "shift.json"
    assert main(["eval", "--model", str(folder), "--data", str(tiny_data), "--shift", "blur,aspect",
                 "--severities", "1,3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shift benchmark mean" in text and "aspect" in text
    rep = json.loads(out.read_text())
    assert rep["frames"] == 3 and set(rep["by_shift"]) == {"blur", "aspect"} and len(rep["scores"]) == 4
    assert main(["eval", "--model", str(folder), "--data", str(tiny_data), "--shift", "fog"]) == 2
    assert "unknown shift 'fog'" in capsys.readouterr().err


def test_eval_segments_each_frame_at_the_apps_work_size(tiny_model):
    """evaluation.evaluate runs a frame at the size the app would (engines.predict.work_size) and scores it
    at its own: a 2:1 frame reaches the engine at 294x588, its score covers every pixel of the frame."""
    import torch

    from sis.classes import CAMVID
    from sis.data.dataset import Frames
    from sis.evaluation.evaluate import evaluate
    from sis.zoo import models
    model, cfg = models.load_model(tiny_model)
    seen = []

    def engine(x):
        seen.append(x.shape[-2:])
        return np.zeros((len(x), CAMVID.num_classes, *x.shape[-2:]), np.float32)
    rgb, lab = make_frame(np.random.default_rng(0), 400, 800)
    frames = Frames(["wide"], [torch.from_numpy(rgb.transpose(2, 0, 1).copy())], [torch.from_numpy(lab.astype(np.int64))],
                    CAMVID)
    res = evaluate(None, cfg, frames, torch.device("cpu"), engine=engine)
    assert seen == [(294, 588)] and res["frames"] == 1
    share = (lab == 0).sum() / (lab != VOID).sum()  # everything answered as class 0
    assert res["pixel_acc"] == pytest.approx(share)


@pytest.mark.slow
def test_cli_shift_benchmark_writes_the_whole_benchmark_into_the_card(tiny_model, tiny_data, tmp_path, capsys):
    """`eval --shift all --write` keeps mean, per-shift figures and their command in card.json (other keys kept);
    a part of the benchmark or an ensemble is refused in one sentence and writes nothing."""
    from sis import zoo
    from sis.cli import main
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    before = zoo.card_as_written(folder)
    for args in (["--shift", "blur"], ["--shift", "all", "--severities", "3"], ["--shift", "all", "--limit", "1"]):
        assert main(["eval", "--model", str(folder), "--data", str(tiny_data), *args, "--write"]) == 2
        assert "--write keeps the whole benchmark" in capsys.readouterr().err
    assert main(["eval", "--model", f"{folder},{folder}", "--data", str(tiny_data), "--shift", "all", "--write"]) == 2
    assert "not an ensemble" in capsys.readouterr().err
    assert zoo.card_as_written(folder) == before
    out = tmp_path / "rep.json"
    assert main(["eval", "--model", str(folder), "--data", str(tiny_data), "--shift", "all", "--every", "2",
                 "--write", "--out", str(out)]) == 0
    rep, card = json.loads(out.read_text()), zoo.read_card(folder)
    rec = zoo.card_as_written(folder)["shift_benchmark"]
    assert rec["mean"] == pytest.approx(rep["mean"]) and rec["by_shift"] == pytest.approx(rep["by_shift"])
    assert rec["ood_auroc_severe"] == pytest.approx(rep["ood_auroc_severe"]) and rec["frames"] == rep["frames"]
    assert rec["every"] == 2 and "--shift all --every 2" in rec["command"] and card.shift_mean == pytest.approx(rep["mean"])
    assert rec["warned"] == rep["warned"] and set(rep["warned"]["by_shift"]) == set(rep["by_shift"])
    assert "Segment warns" in capsys.readouterr().out
    assert {k: v for k, v in zoo.card_as_written(folder).items() if k != "shift_benchmark"} == before
