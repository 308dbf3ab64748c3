"""Adapting without labels: BatchNorm statistics re-estimated on a user's frames, and the bad inputs."""
import shutil

import numpy as np
import pytest
import torch
from conftest import make_frame
from PIL import Image

from sis.training.unlabeled import MIN_FRAMES, AdaptError, adapt_batchnorm, adapt_folder, check_frames


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
    n, used = adapt_batchnorm(model, cfg, frames)
    assert used == len(frames) and n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 10
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


def test_too_few_or_identical_frames_are_refused():
    rng = np.random.default_rng(0)
    with pytest.raises(AdaptError, match=f"1 frame is too few to adapt a model \\(at least {MIN_FRAMES}"):
        check_frames([make_frame(rng, 40, 60)[0]])
    same = make_frame(rng, 40, 60)[0]
    with pytest.raises(AdaptError, match="100 frames are all but identical"):
        check_frames([same.copy() for _ in range(100)])
    check_frames([make_frame(rng, 40, 60)[0] for _ in range(MIN_FRAMES)])


@pytest.mark.slow
def test_cli_adapts_a_folder_of_mixed_photos_and_leaves_the_original(tiny_model, tmp_path, capsys):
    """Photos of mixed sizes and a non-image: the non-image is said and skipped, the new folder loads
    and differs from the original only in its BatchNorm statistics; the original is untouched."""
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
    assert (tiny_model / "model.safetensors").read_bytes() == original
    new, _ = models.load_model(out)
    old, _ = models.load_model(tiny_model)
    diff = [k for k, v in new.state_dict().items() if not torch.equal(v, old.state_dict()[k])]
    assert diff and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in diff)
    assert main(["adapt", "--unlabeled", str(photos), "--init", str(tiny_model), "--out", str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    few = tmp_path / "few"
    few.mkdir()
    shutil.copy(photos / "p0.jpg", few / "p0.jpg")
    assert main(["adapt", "--unlabeled", str(few), "--init", str(tiny_model), "--out", str(tmp_path / "x")]) == 2
    assert "too few to adapt" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(AdaptError, match="a folder of its own"):
        adapt_folder(tiny_model, photos, tiny_model)


def test_statistics_are_estimated_on_the_frames_as_the_engines_will_see_them(tiny_model, tmp_path):
    """With an input range in the starting model's card, the statistics are those of the frames brought
    inside it (as estimated on those frames by hand), and the adapted card keeps the range."""
    from sis import zoo
    from sis.data.input_range import into_range
    from sis.zoo import models
    rng_dict = {"luminance": [0.2, 0.7], "contrast": [0.1, 1.3], "red_green": [0.85, 1.05],
                "blue_green": [0.95, 1.1], "frames": 6, "source": "train of tiny"}
    init = tmp_path / "init"
    shutil.copytree(tiny_model, init, ignore=shutil.ignore_patterns("checkpoint"))
    zoo.update_card(init, input_range=rng_dict)
    input_range = zoo.read_card(init).input_range
    rng = np.random.default_rng(5)
    warm = [np.clip(make_frame(rng, 64, 96)[0] * np.array([1.5, 1.0, 0.6]), 0, 255).astype(np.uint8)
            for _ in range(MIN_FRAMES)]
    street = tmp_path / "street"
    street.mkdir()
    for i, f in enumerate(warm):
        Image.fromarray(f).save(street / f"w{i}.png")
    adapt_folder(init, street, tmp_path / "adapted")
    assert zoo.read_card(tmp_path / "adapted").input_range == input_range
    by_hand, cfg = models.load_model(init)
    adapt_batchnorm(by_hand, cfg, [into_range(f, input_range) for f in warm])
    raw, _ = models.load_model(init)
    adapt_batchnorm(raw, cfg, warm)
    adapted, _ = models.load_model(tmp_path / "adapted")
    key = next(k for k in adapted.state_dict() if k.endswith("running_mean"))
    # by hand the range is applied before the resize to the work size, and the saved weights are fp16: close,
    # and far closer than the statistics of the frames as they came
    near = (adapted.state_dict()[key] - by_hand.state_dict()[key]).abs().max()
    far = (adapted.state_dict()[key] - raw.state_dict()[key]).abs().max()
    assert near < 0.01 and near < far / 5, (near, far)


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
    assert zoo.read_card(tmp_path / "late").raw["unlabeled"]["frames"] == MIN_FRAMES + 1
    by_hand, cfg = models.load_model(tiny_model)
    assert adapt_batchnorm(by_hand, cfg, frames[:MIN_FRAMES + 1], input_range=zoo.read_card(tiny_model).input_range) \
        == (res.layers, MIN_FRAMES + 1)
    late, _ = models.load_model(tmp_path / "late")
    key = next(k for k in late.state_dict() if k.endswith("running_var"))
    assert torch.allclose(late.state_dict()[key], by_hand.state_dict()[key].half().float(), rtol=1e-2, atol=1e-3)
    assert (tiny_model / "model.safetensors").read_bytes() == original
