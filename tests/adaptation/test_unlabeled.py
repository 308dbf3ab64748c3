"""Adapting without labels: BatchNorm statistics re-estimated on a user's frames, and the bad inputs."""
import copy
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import ROOT, make_frame
from PIL import Image

from sis.adaptation.unlabeled import (CLIP_FRAMES, FIT_STEPS, MIN_FRAMES, PRIOR_FRAMES, AdaptError, adapt_batchnorm,
                                    adapt_folder, batchnorm_statistics, blend_statistics, check_frames, clip_stride,
                                    fit_steps, fit_to_frames, read_frames, training_share)


def test_batchnorm_statistics_become_the_frames_own():
    """A BN layer after a conv: its running mean becomes the mean of the features over the frames,
    and the other weights are untouched."""
    from sis import zoo
    from sis.zoo import models
    model, cfg = models.create_model(zoo.make_config("pspnet-resnet18"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    frames = [np.full((96, 128, 3), v, np.uint8) + rng.integers(0, 5, (96, 128, 3)).astype(np.uint8)
              for v in (30, 60, 90, 120)]
    n, used, share = adapt_batchnorm(model, cfg, frames)
    assert used == len(frames) and share == 0.0 and n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 10
    after = model.state_dict()
    moved = [k for k in after if k.endswith("running_mean") and not torch.equal(after[k], before[k])]
    assert len(moved) == n
    same = [k for k in after if k.endswith(("weight", "bias")) and not torch.equal(after[k], before[k])]
    assert same == []
    # the first BN's mean is that of conv1's output over the frames, checked by hand
    conv, bn = model.encoder.conv1, model.encoder.bn1
    from sis.data.images import resize_rgb
    from sis.engines.predict import work_size
    from sis.zoo.preprocess import model_input
    with torch.no_grad():
        feats = [conv(model_input(torch.from_numpy(resize_rgb(f, work_size(96, 128, tuple(cfg.base_size)))
                                                   .transpose(2, 0, 1).copy())[None], cfg, False)[0])
                 for f in frames]
    expected = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-4)


def test_the_training_statistics_weigh_as_a_number_of_frames():
    """The share kept is prior / (prior + frames): all of it before any frame, half at as many frames as
    the prior, less and less after; no prior keeps none."""
    assert training_share(0) == 1.0 and training_share(PRIOR_FRAMES) == 0.5
    assert training_share(4, 4) == 0.5 and training_share(12, 4) == 0.25 and training_share(26, 0) == 0.0
    assert training_share(4) > training_share(26) > training_share(400) > 0
    with pytest.raises(ValueError, match="count up from 0"):
        training_share(-1)


@pytest.mark.slow
def test_a_share_of_the_training_statistics_is_kept_as_a_weighted_average():
    """A share s: each running mean and variance is s of the model's own before and 1 - s of the
    frames'; 0 is the frames' alone, 1 gives the starting model back exactly."""
    from sis import zoo
    from sis.zoo import models
    model, cfg = models.create_model(zoo.make_config("unet-vgg11_bn"))
    with torch.no_grad():  # training statistics unlike the reset ones, so that a blend shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    source = batchnorm_statistics(model)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(4)]
    own = copy.deepcopy(model)
    adapt_batchnorm(own, cfg, frames)
    target = batchnorm_statistics(own)
    half = copy.deepcopy(model)
    assert adapt_batchnorm(half, cfg, frames, prior_frames=4 / 3).training_share == pytest.approx(0.25)
    for (m0, v0), (m1, v1), (mh, vh) in zip(source, target, batchnorm_statistics(half)):
        assert torch.allclose(mh, 0.25 * m0 + 0.75 * m1, atol=1e-5)
        assert torch.allclose(vh, 0.25 * v0 + 0.75 * v1, atol=1e-5)
    assert not torch.allclose(source[0][0], target[0][0])
    blend_statistics(own, source, 1.0)
    assert all(torch.equal(a, b) for pair in zip(source, batchnorm_statistics(own)) for a, b in zip(*pair))
    with pytest.raises(ValueError, match="share"):
        blend_statistics(own, source, 1.5)
    with pytest.raises(ValueError, match="BatchNorm layers"):
        blend_statistics(own, source[:-1], 0.5)


def _mean_entropy(model, cfg, frames) -> float:
    from sis.adaptation.unlabeled import seen
    from sis.zoo.preprocess import forward_logits
    with torch.no_grad():
        logits = torch.cat([forward_logits(model, cfg, seen(f, cfg), amp=False) for f in frames])
    return float(-(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean())


def test_fitting_to_the_frames_makes_the_model_surer_by_its_batchnorm_scales_and_shifts_alone():
    """Entropy minimised (TENT): the predictions on the frames grow surer, and only the BatchNorm layers'
    scales and shifts move: the statistics just estimated and every other weight stay as they were."""
    from sis import zoo
    from sis.zoo import models
    torch.manual_seed(0)
    model, cfg = models.create_model(replace(zoo.make_config("pspnet-resnet18"), base_size=(64, 96)))
    rng = np.random.default_rng(2)
    frames = [make_frame(rng, 64, 96)[0] for _ in range(MIN_FRAMES)]
    adapt_batchnorm(model, cfg, frames)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    entropy = _mean_entropy(model, cfg, frames)
    seen = []
    assert fit_to_frames(model, cfg, frames, 12, lr=1e-2, progress=seen.append) == 12 and seen == list(range(1, 13))
    assert _mean_entropy(model, cfg, frames) < 0.9 * entropy
    norm_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                   for p in ("weight", "bias")}
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and moved <= norm_params
    assert all(p.requires_grad for p in model.parameters())  # given back as it was
    calls = iter(range(100))
    assert fit_to_frames(model, cfg, frames, 12, stop=lambda: next(calls) >= 5) == 5  # stopped between steps
    assert fit_to_frames(model, cfg, frames, 0) == 0


def test_each_fitting_step_sees_a_random_window_of_its_frame(monkeypatch):
    """FIT_SIDE of each side, at a seeded place that moves from step to step; side 1 gives the whole frame;
    targets are cut at the same window."""
    import sis.zoo.preprocess as preprocess
    from sis import zoo
    from sis.adaptation.unlabeled import FIT_SIDE
    from sis.zoo import models
    model, cfg = models.create_model(replace(zoo.make_config("pspnet-resnet18"), base_size=(64, 96)))
    frame = np.arange(64 * 96 * 3, dtype=np.uint32).reshape(64, 96, 3).astype(np.uint8)
    seen = []
    real = preprocess.forward_logits

    def spy(m, c, x, amp=False):
        seen.append(x.clone())
        return real(m, c, x, amp=amp)
    monkeypatch.setattr(preprocess, "forward_logits", spy)
    fit_to_frames(model, cfg, [frame] * 4, 4)
    assert {tuple(x.shape[-2:]) for x in seen} == {(round(64 * FIT_SIDE), round(96 * FIT_SIDE))}
    assert len({x.numpy().tobytes() for x in seen}) > 1  # not the same window every step
    seen.clear()
    targets = [np.zeros((64, 96), np.uint8)]
    fit_to_frames(model, cfg, [frame], 2, side=1.0, targets=targets, train="all")
    assert {tuple(x.shape[-2:]) for x in seen} == {(64, 96)}


def test_self_training_fits_the_model_to_its_targets_where_they_are_sure():
    """With targets (the measuring tool's pseudo-labels), the cross-entropy to them: a class asked for
    everywhere but the unsure pixels (255) comes to be predicted on more of the frames."""
    from sis import zoo
    from sis.zoo import models
    torch.manual_seed(1)
    model, cfg = models.create_model(replace(zoo.make_config("pspnet-resnet18"), base_size=(64, 96)))
    rng = np.random.default_rng(3)
    frames = [make_frame(rng, 64, 96)[0] for _ in range(MIN_FRAMES)]
    adapt_batchnorm(model, cfg, frames)
    targets = [np.full(f.shape[:2], 3, np.uint8) for f in frames]
    for t in targets:
        t[:8] = 255

    def share_of_3():
        from sis.adaptation.unlabeled import seen
        from sis.zoo.preprocess import forward_logits
        with torch.no_grad():
            return float(np.mean([(forward_logits(model, cfg, seen(f, cfg), amp=False).argmax(1) == 3)
                                  .float().mean() for f in frames]))
    start = share_of_3()
    fit_to_frames(model, cfg, frames, 12, lr=1e-2, targets=targets, train="all")
    assert share_of_3() > max(0.9, start + 0.2), (start, share_of_3())
    with pytest.raises(ValueError, match="'norm' or 'all'"):
        fit_to_frames(model, cfg, frames, 1, train="head")


def test_a_small_host_adapts_by_the_statistics_alone(monkeypatch):
    """The fit's backward pass needs about half a GB more: a host under SMALL_HOST_MB (a hosted instance)
    leaves it out unless asked; a larger one fits for FIT_EPOCHS."""
    from sis.host import SMALL_HOST_MB
    from sis.adaptation.unlabeled import FIT_EPOCHS, fit_epochs_here
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", str(SMALL_HOST_MB - 100))
    assert fit_epochs_here() == 0
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", str(SMALL_HOST_MB * 4))
    assert fit_epochs_here() == FIT_EPOCHS > 0


def test_the_fit_takes_two_passes_over_the_frames_within_its_floor_and_cap():
    assert fit_steps(4) == fit_steps(12) == fit_steps(20) == 40 and fit_steps(23) == 46  # a few photos: 40 at least
    assert fit_steps(26) == FIT_STEPS == 50 and fit_steps(400) == 50
    assert fit_steps(26, 0) == 0 == fit_steps(0) and fit_steps(10, 1) == 40 and fit_steps(30, 1.5) == 45
    with pytest.raises(ValueError, match="count up from 0"):
        fit_steps(4, -1)


def test_too_few_or_identical_frames_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(AdaptError, match=f"1 frame is too few to adapt a model \\(at least {MIN_FRAMES}"):
        check_frames([make_frame(rng, 40, 60)[0]])
    same = make_frame(rng, 40, 60)[0]
    with pytest.raises(AdaptError, match="100 frames are all but identical"):
        check_frames([same.copy() for _ in range(100)])
    check_frames([make_frame(rng, 40, 60)[0] for _ in range(MIN_FRAMES)])
    with pytest.raises(AdaptError, match=r"2 frames are too few .*; 2 files were skipped \(notes.txt: not an image "
                                         r"file; /x/broken.jpg is not an image\); the model is left as it was"):
        check_frames([make_frame(rng, 40, 60)[0]] * 2, [("notes.txt", "not an image file"),
                                                          ("broken.jpg", "/x/broken.jpg is not an image")])



def test_a_clip_gives_two_frames_a_second_spread_over_all_of_it():
    """At most two frames a second (nearer ones show the same street), at most CLIP_FRAMES in all, yet
    MIN_FRAMES where a short clip has them."""
    assert clip_stride(300, 30.0) == 15                        # a 10 s clip: 20 frames
    assert 1800 // clip_stride(1800, 30.0) == CLIP_FRAMES      # a minute: 100 frames, 0.6 s apart
    assert 36000 // clip_stride(36000, 30.0) <= CLIP_FRAMES    # twenty minutes: still 100
    assert 30 // clip_stride(30, 30.0) >= MIN_FRAMES           # one second: 4 frames, not 2
    assert clip_stride(3, 30.0) == 1 and clip_stride(None, 25.0) == 12  # a frame count the header does not give


def test_frames_are_kept_at_their_work_size_and_a_clip_is_read_to_its_end(tmp_path):
    """A phone's photos are held at the size the model sees them at (not 12 megapixels each), and a clip
    is sampled over all its frames: its limit counts the frames taken, not the frames decoded."""
    pytest.importorskip("av")
    from conftest import write_clip
    rng = np.random.default_rng(4)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(MIN_FRAMES):
        Image.fromarray(make_frame(rng, 600, 800)[0]).save(photos / f"p{i}.png")
    frames, skipped, stride = read_frames(photos, base=(60, 80))
    assert [f.shape for f in frames] == [(60, 80, 3)] * MIN_FRAMES and skipped == [] and stride == 1
    grey = [np.full((48, 64, 3), 10 * k, np.uint8) for k in range(20)]
    clip = write_clip(tmp_path / "c.mp4", grey, fps=10)
    frames, _, stride = read_frames(clip, stride=5, limit=3)
    assert stride == 5 and [round(float(f.mean()) / 10) for f in frames] == [0, 5, 10]
    frames, _, stride = read_frames(clip, base=(24, 32))  # the clip's own rule: 10 fps -> one frame in 5
    assert stride == clip_stride(20, 10.0) == 5 and [round(float(f.mean()) / 10) for f in frames] == [0, 5, 10, 15]
    assert frames[0].shape == (24, 32, 3)


@pytest.mark.slow
def test_cli_adapts_a_folder_of_mixed_photos_and_leaves_the_original(tiny_model, tmp_path, capsys):
    """Photos of mixed sizes and a non-image: the non-image is said and skipped, the new folder loads
    and differs from the original only in its BatchNorm statistics; the original is untouched."""
    from sis import zoo
    from sis.cli import main
    from sis.zoo import models
    rng = np.random.default_rng(3)
    photos = tmp_path / "street"
    photos.mkdir()
    for i in range(MIN_FRAMES):
        Image.fromarray(make_frame(rng, 60 + 8 * i, 80 + 4 * i)[0]).save(photos / f"p{i}.jpg")
    (photos / "notes.txt").write_text("not a photo")
    original = (tiny_model / "model.safetensors").read_bytes()
    out = tmp_path / "adapted"
    assert main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(out)]) == 0
    text = capsys.readouterr()
    assert f"adapted {tiny_model.name} on {MIN_FRAMES} frames" in text.out and "skipped notes.txt" in text.err
    kept = training_share(MIN_FRAMES)  # the default prior against four frames: two thirds kept
    assert f"{kept:.0%} of the training statistics kept" in text.out and kept == pytest.approx(2 / 3)
    assert zoo.card_as_written(out)["unlabeled"]["training_share"] == round(kept, 4)
    assert (tiny_model / "model.safetensors").read_bytes() == original
    new, _ = models.load_model(out)
    old, _ = models.load_model(tiny_model)
    norm_params = {f"{n}.{p}" for n, m in old.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    diff = {k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])}
    assert diff and diff <= norm_params and any(k.endswith("weight") for k in diff)  # statistics, then the fit
    card = zoo.card_as_written(out)["unlabeled"]
    assert card["fit_steps"] == card["fit_planned"] == fit_steps(MIN_FRAMES) and "TENT" in card["method"]
    assert f"then {fit_steps(MIN_FRAMES)} fitting steps" in text.out
    assert "fast_path" not in zoo.card_as_written(out) and "engine: eager" in text.out  # no graph timings to carry
    assert main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(photos / "p0.jpg", few / "p0.jpg")
    assert main(["adapt", "--unlabeled", str(few), "--init", str(tiny_model), "--out", str(tmp_path / "x")]) == 2
    assert "too few to adapt" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(AdaptError, match="a folder of its own"):
        adapt_folder(tiny_model, photos, tiny_model)
    assert main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(tmp_path / "alone"),
                 "--prior-frames", "0"]) == 0
    assert "0% of the training statistics kept" in capsys.readouterr().out
    alone, _ = models.load_model(tmp_path / "alone")
    key = next(k for k in new.state_dict() if k.endswith("running_mean"))
    assert not torch.allclose(alone.state_dict()[key], new.state_dict()[key])
    assert main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(tmp_path / "stats"),
                 "--fit-epochs", "0"]) == 0
    assert "fitting steps" not in capsys.readouterr().out
    stats, _ = models.load_model(tmp_path / "stats")  # the statistics alone: every weight as it was
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in stats.state_dict().items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert zoo.card_as_written(tmp_path / "stats")["unlabeled"]["fit_steps"] == 0
    with pytest.raises(SystemExit):
        main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(tmp_path / "y"),
              "--prior-frames", "-1"])
    assert "expected a number of 0 or more, got '-1'" in capsys.readouterr().err


@pytest.mark.slow
def test_an_adapted_model_runs_on_its_graph_once_its_labels_match_eager(tiny_model, tmp_path, monkeypatch):
    """Where the starting model's card has graph timings, the adapted model gets its templates, its fp32 graph
    checked against eager on a few of the frames and its int8 graph (the start's activation ranges) against
    the start's int8 graph, those timings in its card, and the int8 graph as its engine, served without
    torch; the checks fail for graphs of other weights, and a failed int8 check leaves the fp32 graph."""
    from sis import zoo
    from sis.engines import choose_engine, export, templates
    from sis.engines.int8 import RANGES_FILE, quantize_graph
    from sis.packaging.carry import GRAPH, INT8, INT8_SLACK, _carried_int8, agreement
    from sis.adaptation.unlabeled import seen
    from sis.engines.predict import at_work_size
    from sis.zoo import models
    monkeypatch.setenv("SIS_CACHE_DIR", str(tmp_path / "cache"))
    init = tmp_path / "init"
    shutil.copytree(tiny_model, init, ignore=shutil.ignore_patterns("checkpoint"))
    model, cfg = models.load_model(init)
    rng = np.random.default_rng(4)
    frames = [make_frame(rng, 64, 96)[0] for _ in range(MIN_FRAMES)]
    size = at_work_size(frames[0], cfg.base_size).shape[:2]
    graph = export.export_graph(model, cfg, size, tmp_path / "g.onnx")
    templates.write_template(graph, init, size)
    quantize_graph(graph, tmp_path / "q.onnx", size, init / RANGES_FILE)  # the start's ranges, calibrated as shipped
    zoo.update_card(init, fast_path={"backends": {"eager": {"median_ms": 10.0, "speedup_vs_eager": 1.0},
                                                  GRAPH: {"median_ms": 8.0, "speedup_vs_eager": 1.25},
                                                  INT8: {"median_ms": 4.0, "speedup_vs_eager": 2.5,
                                                         "miou_delta": -0.1}}, "cpu": "a test"})
    street = tmp_path / "street"
    street.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(street / f"p{i}.png")
    assert choose_engine(init).name == "onnxruntime-int8"
    out = tmp_path / "adapted"
    # statistics kept as they were: a 2-step model's near-tied labels flip in int8 under any change of weights
    result = adapt_folder(init, street, out, prior_frames=1e12, fit_epochs=0)
    assert templates.template_path(out, size).is_file()
    assert result.graph_agreement is not None and result.graph_agreement > 0.999
    card = zoo.read_card(out)
    assert set(card.engines) == {"eager", GRAPH, INT8} and card.engines[GRAPH].speedup == 1.25
    assert zoo.card_as_written(out)["unlabeled"]["graph_agreement"] == result.graph_agreement and card.status == "done"
    int8 = card.fast_path.backends[INT8]
    assert int8["agreement"] >= int8["start_agreement"] - INT8_SLACK and card.engines[INT8].miou_delta == -0.1
    assert (result.int8_agreement, result.int8_start_agreement) == (int8["agreement"], int8["start_agreement"])
    assert (out / RANGES_FILE).read_bytes() == (init / RANGES_FILE).read_bytes()
    assert choose_engine(out).name == INT8
    # no labels to score its own int8 graph: where its figure is shown, it is said to be its start's
    assert card.engines[INT8].delta_of_start and not zoo.read_card(init).engines[INT8].delta_of_start
    assert choose_engine(out).reason() == "onnxruntime-int8 (2.5x eager, -0.10 mIoU against it, its start's figure; card)"
    code = ("import sys; from sis import engines\n"
            f"engines.load_engine({str(out)!r}).prepare({tuple(size)!r})\n"
            "print('torch' in sys.modules)")
    served = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=dict(os.environ, SIS_CACHE_DIR=str(tmp_path / "server")))
    assert served.returncode == 0 and served.stdout.split() == ["False"], served.stderr[-2000:]  # filled, not exported
    adapted, _ = models.load_model(out)
    with torch.no_grad():
        for p in adapted.parameters():
            p.add_(torch.randn_like(p))
    seen = [seen(f, cfg).numpy() for f in frames]
    assert agreement(out, adapted, cfg, seen, GRAPH) < 0.9  # a graph of other weights than eager's fails
    models.save_model(adapted, cfg, out)  # weights the start's ranges do not fit: its int8 graph labels unlike eager
    assert _carried_int8(init, out, adapted, cfg, seen, card.fast_path.backends[INT8], "frames") is None
    assert not (out / RANGES_FILE).exists()


@pytest.mark.slow
def test_stop_keeps_the_statistics_of_the_frames_seen_or_writes_nothing(tiny_model, tmp_path):
    """Stop between frames: with enough frames seen, the new model holds the statistics of exactly those
    (its card says how many of how many); stopped before that, nothing is written. The original is untouched."""
    from sis import zoo
    from sis.zoo import models
    rng = np.random.default_rng(7)
    street = tmp_path / "street"
    street.mkdir()
    frames = [make_frame(rng, 48, 64)[0] for _ in range(MIN_FRAMES + 3)]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(street / f"f{i}.png")
    original = (tiny_model / "model.safetensors").read_bytes()

    def stop_after(n):
        calls = iter(range(1000))
        return lambda: next(calls) >= n

    with pytest.raises(AdaptError, match=f"stopped after 2 of {len(frames)} frames.*nothing was written"):
        adapt_folder(tiny_model, street, tmp_path / "early", stop=stop_after(2))
    assert not (tmp_path / "early").exists()
    res = adapt_folder(tiny_model, street, tmp_path / "late", stop=stop_after(MIN_FRAMES + 1))
    assert res.stopped and (res.frames, res.offered) == (MIN_FRAMES + 1, len(frames))
    said = zoo.card_as_written(tmp_path / "late")["unlabeled"]
    # the prior weighs against the frames seen, not the frames offered
    assert said["frames"] == MIN_FRAMES + 1 and said["training_share"] == round(training_share(MIN_FRAMES + 1), 4)
    assert res.fit_steps == 0 < res.fit_planned == fit_steps(MIN_FRAMES + 1)  # stopped before the fit
    by_hand, cfg = models.load_model(tiny_model)
    assert adapt_batchnorm(by_hand, cfg, frames[:MIN_FRAMES + 1], prior_frames=PRIOR_FRAMES) == (res.layers, MIN_FRAMES + 1, training_share(MIN_FRAMES + 1))
    late, _ = models.load_model(tmp_path / "late")
    key = next(k for k in late.state_dict() if k.endswith("running_var"))
    assert torch.allclose(late.state_dict()[key], by_hand.state_dict()[key].half().float(), rtol=1e-2, atol=1e-3)
    # stopped while fitting: every frame's statistics and the steps done so far are kept, and the card says so
    res = adapt_folder(tiny_model, street, tmp_path / "fitting", stop=stop_after(len(frames) + 3))
    assert res.stopped and res.frames == res.offered == len(frames) and (res.fit_steps, res.fit_planned) == (
        3, fit_steps(len(frames)))
    said = zoo.card_as_written(tmp_path / "fitting")["unlabeled"]
    assert (said["fit_steps"], said["fit_planned"]) == (3, fit_steps(len(frames))) and "3 steps" in said["method"]
    assert zoo.card_as_written(tmp_path / "fitting")["status"] == "stopped"  # the pickers say so
    assert zoo.card_as_written(tmp_path / "late")["status"] == "stopped"
    assert (tiny_model / "model.safetensors").read_bytes() == original
