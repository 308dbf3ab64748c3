"""Distillation (sis.training.distill) and training on several splits (the final-model protocol)."""
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from sis import zoo
from sis.classes import CAMVID
from sis.data.augment import SegDataset, build_augment
from sis.data.dataset import Frames, load_split, load_splits
from sis.training.config import TrainConfig, TrainingError
from sis.training.distill import combined_loss, distill_loss, labels_as_targets, teacher_targets
from sis.training.loop import train


def _probs(n=2, c=12, h=5, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(2 * torch.randn(n, c, h, w, generator=g), 1)


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0])
def test_distill_loss_is_zero_only_where_the_student_says_what_the_teacher_says(t):
    teacher = _probs()
    assert distill_loss(torch.log(teacher), teacher, t).item() == pytest.approx(0, abs=1e-5)
    assert distill_loss(torch.log(teacher) + 5.0, teacher, t).item() == pytest.approx(0, abs=1e-5)  # a shift is no change
    assert distill_loss(torch.log(_probs(seed=1)), teacher, t).item() > 0.05


def test_distill_loss_by_hand_and_its_gradient():
    """At T=1: the mean over pixels of sum_c t log(t/s); its gradient per pixel is (softmax(s) - t) / pixels."""
    teacher, logits = _probs(1, 3, 1, 2), torch.randn(1, 3, 1, 2, requires_grad=True)
    s = torch.softmax(logits, 1)
    by_hand = (teacher * (teacher.log() - s.log())).sum(1).mean()
    loss = distill_loss(logits, teacher, 1.0)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    loss.backward()
    assert torch.allclose(logits.grad, (s - teacher).detach() / 2, atol=1e-6)


def test_zero_padding_does_not_count_and_the_labels_alone_without_a_teacher():
    teacher, logits = _probs(1), torch.randn(1, 12, 5, 7)
    padded_t, padded_s = F.pad(teacher, (0, 3, 0, 2)), F.pad(logits, (0, 3, 0, 2), value=9.0)
    assert distill_loss(padded_s, padded_t).item() == pytest.approx(distill_loss(logits, teacher).item(), rel=1e-6)
    labels = torch.randint(0, 11, (1, 5, 7))
    ce = F.cross_entropy(logits, labels, ignore_index=11)
    assert combined_loss(logits, labels, None, 11, None, 0.5, 2.0).item() == pytest.approx(ce.item())
    assert combined_loss(logits, labels, teacher, 11, None, 0.0, 2.0).item() == pytest.approx(ce.item())
    both = combined_loss(logits, labels, teacher, 11, None, 0.25, 2.0).item()
    assert both == pytest.approx(0.75 * ce.item() + 0.25 * distill_loss(logits, teacher, 2.0).item(), rel=1e-6)


def test_soft_targets_ride_through_the_same_crop_rescale_and_flips_as_the_image():
    """A teacher that is the label itself (one-hot): after augmentation its argmax is the mask, and a
    crop's padding (void in the mask) has zero teacher mass."""
    torch.manual_seed(0)
    mask = torch.randint(0, 11, (6, 8)).repeat_interleave(10, 0).repeat_interleave(10, 1)  # 10-pixel blocks
    img = mask.to(torch.uint8).expand(3, -1, -1).clone()
    soft = F.one_hot(mask, 11).permute(2, 0, 1).half()
    frames = Frames(["a"], [img], [mask], CAMVID)
    exact = SegDataset(frames, build_augment("hv", (64, 96), (1.0, 1.0), 11), [soft])
    scaled = SegDataset(frames, build_augment("hv", (64, 96), (0.75, 1.5), 11), [soft])
    for _ in range(6):
        i, m, s = exact[0]
        keep = s.sum(0) > 0.5
        assert s.shape == (11, 64, 96) and torch.equal(keep, m != 11)
        assert torch.equal(s.argmax(0)[keep], m[keep]) and torch.equal(i[0][keep].long(), m[keep])
        i, m, s = scaled[0]
        keep = s.sum(0) > 0.5
        assert torch.allclose(s.sum(0)[keep], torch.ones(()), atol=1e-3)  # still a distribution
        assert (s.argmax(0) == m)[keep & (m != 11)].float().mean() > 0.85  # nearest vs bilinear differ on edges


def test_teacher_labels_every_frame_with_its_probabilities(tiny_data, tiny_model):
    frames = load_split(tiny_data, "train")
    soft = teacher_targets(frames, str(tiny_model), "flip", log=lambda m: None)
    assert len(soft) == len(frames) and soft[0].dtype == torch.float16
    assert soft[0].shape == (11, *frames.images[0].shape[-2:])
    assert torch.allclose(soft[0].float().sum(0), torch.ones(()), atol=2e-2)


def test_the_teacher_answers_as_the_app_segments_uncalibrated(tiny_data, tiny_model, tmp_path):
    """One path: the teacher sees each frame at its work size, as predict does, so its top class is predict's
    whatever the frame's size; its probabilities are the model's own (temperature 1) whatever the card's
    temperature, one model as an ensemble, so that --distill-temperature alone sets how soft they are."""
    from sis import engines
    from sis.engines.predict import predict
    from sis.zoo.card import update_card
    folder = tmp_path / "hot"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    update_card(folder, calibration={"temperature": 3.0})
    frames = load_split(tiny_data, "train").subset(range(2))
    soft = teacher_targets(frames, str(folder), log=lambda m: None)
    flip = teacher_targets(frames, str(folder), "flip", log=lambda m: None)
    raw, calibrated = engines.load_engine(folder, temperature=1.0), engines.load_engine(folder)
    assert calibrated.temperature == 3.0
    for img, p, f in zip(frames.images, soft, flip):
        rgb = img.permute(1, 2, 0).numpy()
        shown = predict(raw, rgb)
        assert shown.work_size != tuple(img.shape[-2:])  # the tiny frames are segmented at another size
        p = p.float()
        assert (p.argmax(0).numpy() == shown.labels).mean() > 0.9
        assert p.max(0).values.mean().item() == pytest.approx(float(shown.confidence.mean()), abs=0.02)
        hot = float(predict(calibrated, rgb).confidence.mean())
        assert p.max(0).values.mean().item() > hot + 0.05 and f.float().max(0).values.mean().item() > hot + 0.05


def test_teacher_answers_kept_at_half_size_come_back_at_the_frames_size(tiny_data, tiny_model):
    """teacher_scale 0.5: a quarter of the memory, still a distribution, and the dataset draws it at the
    frame's size, close to the full-size answers (they differ on edges only)."""
    frames = load_split(tiny_data, "train")
    full = teacher_targets(frames, str(tiny_model), log=lambda m: None)
    half = teacher_targets(frames, str(tiny_model), log=lambda m: None, scale=0.5)
    h, w = frames.images[0].shape[-2:]
    assert half[0].shape == (11, round(h / 2), round(w / 2)) and half[0].numel() * 4 == full[0].numel()
    assert torch.allclose(half[0].float().sum(0), torch.ones(()), atol=2e-2)
    ds = SegDataset(frames, None, half)
    _, m, s = ds[0]
    assert s.shape == full[0].shape and torch.allclose(s.sum(0), torch.ones(()), atol=2e-2)
    assert (s.argmax(0) == full[0].float().argmax(0)).float().mean() > 0.9
    with pytest.raises(ValueError, match="within 0.1 and 1"):
        teacher_targets(frames, str(tiny_model), log=lambda m: None, scale=2)


def test_a_student_learns_the_teacher(tiny_data, tiny_model, tmp_path):
    """alpha 1: the loss is the divergence from the teacher alone, and it falls; the card says who taught."""
    cfg = TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(tmp_path / "s"), batch_size=3, epochs=6,
                      lr=1e-3, seed=1, device="cpu", val_every=0, flips="", teacher=str(tiny_model),
                      distill_alpha=1.0, distill_temperature=2.0)
    logs = []
    res = train(cfg, log=logs.append)
    losses = [h["loss"] for h in res.history]
    assert res.status == "done" and losses[-1] < 0.7 * losses[0], losses
    assert any(m.startswith("teacher ") and "labelled 6 frames" in m for m in logs)
    card = zoo.card_as_written(tmp_path / "s")
    assert card["recipe"]["teacher"] == str(tiny_model) and f"--teacher {tiny_model}" in card["command"]


def test_labels_as_targets_are_one_hot_and_their_divergence_is_the_labels_cross_entropy():
    labels = torch.tensor([[[0, 3, 11], [10, 255, 2]]])  # 11 and 255: void
    soft = labels_as_targets(labels, 11)
    assert soft.shape == (1, 11, 2, 3) and soft.dtype == torch.float32
    assert torch.equal(soft.sum(1), torch.tensor([[[1.0, 1, 0], [1, 0, 1]]]))
    assert soft[0, 3, 0, 1] == 1 and soft[0, 10, 1, 0] == 1
    logits = torch.randn(1, 11, 2, 3)
    ce = F.cross_entropy(logits, labels.masked_fill(labels == 255, 11), ignore_index=11)
    assert distill_loss(logits, soft).item() == pytest.approx(ce.item(), rel=1e-5)


def test_with_replay_the_teacher_answers_on_the_replayed_frames_and_labels_teach_the_rest(tiny_data, tiny_model,
                                                                                          tmp_path):
    """What the model knew is kept on the replayed frames by the teacher; the user's frames are ones it got
    wrong, so in each batch their targets are their own labels."""
    from sis.training.data import batch, load_data
    cfg = TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(tmp_path / "m"), batch_size=4, max_steps=3,
                      device="cpu", val_every=0, flips="", teacher=str(tiny_model), replay=str(tiny_data),
                      replay_ratio=0.5, distill_alpha=0.5)
    logs = []
    data = load_data(cfg, torch.device("cpu"), 0, logs.append)
    assert data.dataset.soft is None and len(data.replay.soft) == len(data.replay) == 6
    assert any("the teacher answers on the replayed frames" in m for m in logs)
    replayed = teacher_targets(data.replay.frames, str(tiny_model), log=lambda m: None)
    assert all(torch.equal(a, b) for a, b in zip(data.replay.soft, replayed))
    imgs, masks, soft = batch(cfg, data, list(range(len(data.train))), 0, 0)
    assert soft.shape == (4, 11, *masks.shape[-2:])
    assert torch.equal(soft[:2], labels_as_targets(masks[:2], 11))  # the training frames: their labels
    assert not torch.equal(soft[2:], labels_as_targets(masks[2:], 11))  # the replayed ones: the teacher's answers
    res = train(cfg, log=lambda m: None)
    assert res.status == "done" and all(h["loss"] == h["loss"] for h in res.history)  # finite, not NaN
    assert zoo.card_as_written(tmp_path / "m")["recipe"]["teacher"] == str(tiny_model)


def test_teacher_errors_say_what_is_wrong(tiny_data, tiny_model, tmp_path):
    other = tmp_path / "other"
    import shutil
    shutil.copytree(tiny_data, other)
    names = [f"c{i}" for i in range(11)]  # as many classes as CamVid's, other ones
    (other / "classes.json").write_text(json.dumps({"names": names, "colors": [[i, i, i] for i in range(11)],
                                                    "void": 11}))
    base = dict(model=TINY_MODEL, out=str(tmp_path / "m"), max_steps=1, batch_size=2, device="cpu")
    with pytest.raises(TrainingError, match="the teacher cannot label this data: the teacher predicts Sky"):
        train(TrainConfig(data=str(other), teacher=str(tiny_model), **base), log=lambda m: None)
    with pytest.raises(TrainingError, match="replay ratio is a share of each batch"):  # before the teacher's pass
        train(TrainConfig(data=str(tiny_data), teacher="no-such-model", replay=str(tiny_data), replay_ratio=1.0,
                          **base), log=lambda m: None)
    with pytest.raises(TrainingError, match="kept at a scale within 0.1 and 1, not 0"):
        train(TrainConfig(data=str(tiny_data), teacher=str(tiny_model), teacher_scale=0, **base), log=lambda m: None)
    with pytest.raises(TrainingError, match="temperature must be positive"):
        train(TrainConfig(data=str(tiny_data), teacher=str(tiny_model), distill_temperature=0, **base),
              log=lambda m: None)
    with pytest.raises(zoo.ModelError, match="neither a model folder nor a model name"):
        train(TrainConfig(data=str(tiny_data), teacher="no-such-model", **base), log=lambda m: None)


def test_train_and_val_together_train_on_both_and_do_not_validate(tiny_data, tmp_path):
    frames = load_splits(tiny_data, ("train", "val"))
    assert len(frames) == 9 and frames.names[0] == "train/f000" and frames.names[-1] == "val/f002"
    assert load_splits(tiny_data, ("train", "val"), limit=7).names[-1] == "val/f000"
    logs = []
    res = train(TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(tmp_path / "m"), splits=("train", "val"),
                            epochs=1, batch_size=3, device="cpu"), log=logs.append)
    card = zoo.card_as_written(tmp_path / "m")
    assert res.steps == 3 and res.val is None and card["val"] is None
    assert card["data"]["splits"] == ["train", "val"] and card["data"]["train_frames"] == 9
    assert card["data"]["validation"].startswith("none: the val split is trained on")
    assert "--splits train,val" in card["command"] and "val_miou" not in card["history"][0]
    from sis.vis import report
    assert zoo.read_card(tmp_path / "m").trained_on == "train+val"
    assert report.dashboard_row("m", tmp_path / "m").trained_on == "train+val"


@pytest.mark.slow
def test_shipping_a_train_and_val_run_reports_its_train_only_runs_val(tiny_data, tiny_model, tmp_path, monkeypatch):
    """The card's val is the reference run's; the shipped weights' own val figures are kept as val_seen."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("ship", ROOT / "tools" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    both = tmp_path / "runs" / TINY_MODEL
    train(TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(both), splits=("train", "val"), max_steps=2,
                      batch_size=2, device="cpu"), log=lambda m: None)
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path / "weights")
    timed = ship.compare_engines  # two timing rounds, not twenty: this test reads the val figures, not the speeds
    monkeypatch.setattr(ship, "compare_engines", lambda *a, **k: timed(*a, **{**k, "repeats": 2}))
    from sis.engines import templates
    every = templates.template_sizes  # two photo shapes' templates, not all 25 (test_engines checks the shipped set)
    monkeypatch.setattr(templates, "template_sizes", lambda cfg: every(cfg)[:2])
    with pytest.raises(SystemExit, match="give --reference"):
        ship.ship(both, str(tiny_data))
    with pytest.raises(SystemExit, match="for runs that trained on val"):
        ship.ship(tiny_model, str(tiny_data), reference=both)
    # a model shipped before under that name: the new card keeps its figures, to read before and after
    shutil.copytree(tiny_model, tmp_path / "weights" / TINY_MODEL, ignore=shutil.ignore_patterns("checkpoint"))
    zoo.update_card(tmp_path / "weights" / TINY_MODEL, shift_benchmark={"mean": 0.25, "command": "eval --shift all"},
                    real_frames={"kitti-dev": {"miou": 0.3, "frames": 22}})
    old_val = zoo.read_card(tmp_path / "weights" / TINY_MODEL).val_miou
    card = ship.ship(both, str(tiny_data), reference=tiny_model)
    assert card["replaced"]["val_miou"] == old_val and card["replaced"]["shift_benchmark"]["mean"] == 0.25
    assert card["replaced"]["real_frames"]["kitti-dev"]["miou"] == 0.3
    assert "shift_benchmark" not in card and "real_frames" not in card  # measured anew, never inherited
    ref_val = ship._val(tiny_model, str(tiny_data))
    assert card["val"]["miou"] == ref_val["miou"] and card["val_seen"]["miou"] == \
        ship._val(tmp_path / "weights" / TINY_MODEL, str(tiny_data))["miou"]  # the shipped fp16 file's
    assert card["reference"]["run"] == str(tiny_model) and "trained on train+val" in card["reference"]["note"]
    shipped = zoo.read_card(tmp_path / "weights" / TINY_MODEL)
    assert shipped.trained_on == "train+val" and shipped.val_miou == ref_val["miou"] and shipped.val_note
    sizes = every(zoo.read_config(tmp_path / "weights" / TINY_MODEL))[:2]  # its templates, made for the shipped weights
    assert sorted(p.name for p in (tmp_path / "weights" / TINY_MODEL).glob("graph-*.onnx")) == \
        sorted(templates.template_path(tmp_path / "weights" / TINY_MODEL, s).name for s in sizes)


def test_shipping_a_continued_run_keeps_its_parents_measured_adaptation(tiny_model, tmp_path):
    """A robust fine-tune of a shipped model keeps the few-frame policy measured on that model (a frozen
    encoder), saying it was measured on the earlier stage; a run without a parent's policy adds none."""
    import importlib.util

    from conftest import ROOT
    spec = importlib.util.spec_from_file_location("ship", ROOT / "tools" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    parent = tmp_path / "parent"
    shutil.copytree(tiny_model, parent, ignore=shutil.ignore_patterns("checkpoint"))
    child = {**zoo.card_as_written(parent), "recipe": {"init": str(parent)}}
    assert ship.lineage(child)["adaptation"] is None
    zoo.update_card(parent, adaptation={"freeze_encoder": True, "why": "measured: docs/correct.md"})
    kept = ship.lineage(child)["adaptation"]
    assert kept == {"freeze_encoder": True, "why": "measured: docs/correct.md", "measured_on_stage": {"freeze_encoder": 1}}
    grandchild = {**child, "stages": None, "recipe": {"init": str(tmp_path / "child")}}
    (tmp_path / "child").mkdir()
    zoo.write_card(tmp_path / "child", {**ship.lineage(child), "recipe": {"init": str(parent)}})
    assert ship.lineage(grandchild)["adaptation"]["measured_on_stage"] == {"freeze_encoder": 1}  # not re-stamped on stage 3
    own = {"freeze_encoder": False, "why": "measured again"}
    assert ship.lineage({**child, "adaptation": own})["adaptation"] == own
