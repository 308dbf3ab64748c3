"""The real-street yardsticks: figures on a dataset a model did not train on kept in its card, the
new-drive split of CamVid, the weight-space average, and predict's JSON lines."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, in_process, write_dataset


def test_eval_write_keeps_the_figures_of_a_dataset_the_model_did_not_train_on(tiny_model, tmp_path, capsys):
    """``eval --write`` on another dataset's split: the card's real_frames gets that dataset's figures under
    its folder's name (what eval printed), the rest of the card stays; on its own training data, on part
    of a split, or in an accurate mode it refuses in one sentence and writes nothing."""
    from sis import zoo
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    other = write_dataset(tmp_path / "street-x", n_train=1, n_val=3, seed=9)
    from conftest import make_frame
    img, lbl = make_frame(np.random.default_rng(1), 40, 120)  # a frame of another size and shape among them
    Image.fromarray(img).save(other / "val" / "z.png")
    Image.fromarray(lbl, "L").save(other / "valannot" / "z.png")
    before = zoo.card_as_written(folder)
    Image.fromarray(img).save(other / "val" / "unlabelled.png")  # a frame without its label: named, nothing kept
    r = in_process(capsys, "eval", "--model", folder, "--data", other, "--split", "val", "--write")
    assert r.returncode == 2 and "val/unlabelled.png has no label" in r.stderr and zoo.card_as_written(folder) == before
    (other / "val" / "unlabelled.png").unlink()
    trained_on = before["recipe"]["data"]
    for args, said in ((["--data", trained_on], "trained on"), (["--data", other, "--limit", "2"], "whole split"),
                       (["--data", other, "--tta", "flip"], "one model's own figures")):
        r = in_process(capsys, "eval", "--model", folder, *args, "--split", "val", "--write")
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert zoo.card_as_written(folder) == before
    r = in_process(capsys, "eval", "--model", folder, "--data", other, "--split", "val", "--write", "--json")
    assert r.returncode == 0
    res, card = json.loads(r.stdout), zoo.read_card(folder)
    rec = zoo.card_as_written(folder)["real_frames"]["street-x"]
    assert rec["miou"] == res["miou"] and rec["per_class_iou"] == res["per_class_iou"] and rec["frames"] == 4
    assert rec["command"].endswith(f"--data {other} --split val")
    assert card.real_frames["street-x"].miou == res["miou"] and card.dev_miou is None  # not the dev set's name
    assert {k: v for k, v in zoo.card_as_written(folder).items() if k != "real_frames"} == before
    # the dev set's record is what the dashboard and README read
    dev = write_dataset(tmp_path / zoo.DEV_SET, n_train=1, n_val=2, seed=3)
    assert in_process(capsys, "eval", "--model", folder, "--data", dev, "--split", "val", "--write").returncode == 0
    card = zoo.read_card(folder)
    assert set(card.real_frames) == {"street-x", zoo.DEV_SET} and card.dev_miou == zoo.card_as_written(folder)["real_frames"][zoo.DEV_SET]["miou"]


def test_a_card_with_a_broken_real_frames_record_reads_without_it():
    from sis.zoo.card import ModelCard
    card = ModelCard.from_dict({"real_frames": {"a": {"miou": 0.5, "frames": 3}, "b": {"frames": 2}, "c": "x"}})
    assert set(card.real_frames) == {"a"} and card.real_frames["a"].miou == 0.5 and card.dev_miou is None


def test_the_shipped_models_carry_their_kitti_dev_figures():
    """Every shipped model is measured on the real-street dev set (sis eval --write), over all its frames."""
    from sis import zoo
    for name, folder in zoo.shipped_models().items():
        card = zoo.read_card(folder)
        rec = card.real_frames.get(zoo.DEV_SET)
        assert rec is not None and rec.frames == 22 and 0 < rec.miou < card.val_miou, name
        assert rec.command == f"python -m sis eval --model {name} --data ../shared/kitti-dev --split val"


def _camvid_like(root, drives):
    """A CamVid-named dataset: train frames DRIVE_fNNNNN of each drive, and two val frames."""
    rng = np.random.default_rng(0)
    from conftest import make_frame
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
    names = [(f"{d}_f{i:05d}", "train") for d, n in drives.items() for i in range(n)] + \
        [("0016E5_07000", "val"), ("0016E5_07030", "val")]
    for name, split in names:
        img, lbl = make_frame(rng, 16, 24)
        Image.fromarray(img).save(root / split / f"{name}.png")
        Image.fromarray(lbl, "L").save(root / f"{split}annot" / f"{name}.png")
    return root


def _tool(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_new_drive_holds_one_drive_out_as_the_test_split(tmp_path):
    """The held-out drive's frames are test/ and none of train/; val is CamVid's; a drive CamVid lacks, a
    folder already there, or a train split of one drive is one sentence and nothing written."""
    src = _camvid_like(tmp_path / "camvid", {"0001TP": 2, "0006R0": 3, "0016E5": 4})
    out = tmp_path / "nd"
    r = _tool(ROOT / "tools" / "new_drive.py", src, "--drive", "0006R0", "--out", out)
    assert r.returncode == 0 and "6 training frames without 0006R0" in r.stdout, r.stderr
    names = {s: sorted(p.stem for p in (out / s).iterdir()) for s in ("train", "val", "test")}
    assert names["test"] == ["0006R0_f00000", "0006R0_f00001", "0006R0_f00002"]
    assert not any(n.startswith("0006R0") for n in names["train"]) and len(names["train"]) == 6
    assert names["val"] == ["0016E5_07000", "0016E5_07030"]
    assert sorted(p.stem for p in (out / "testannot").iterdir()) == names["test"]
    assert np.array_equal(np.asarray(Image.open(out / "test" / "0006R0_f00001.png")),
                          np.asarray(Image.open(src / "train" / "0006R0_f00001.png")))
    for args, said in ((["--drive", "Seq05VD", "--out", tmp_path / "x"], "has no drive 'Seq05VD'; its drives are "
                        "0001TP (2 frames), 0006R0 (3 frames), 0016E5 (4 frames)"),
                       (["--drive", "0006R0", "--out", out], "is already there")):
        r = _tool(ROOT / "tools" / "new_drive.py", src, *args)
        assert r.returncode == 2 and said in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
    one = _camvid_like(tmp_path / "one", {"0016E5": 3})
    r = _tool(ROOT / "tools" / "new_drive.py", one, "--drive", "0016E5", "--out", tmp_path / "y")
    assert r.returncode == 2 and "one drive only" in r.stderr and not (tmp_path / "y").exists()


def test_weight_average_is_the_share_of_each_by_hand(tiny_model, tmp_path):
    """Every float tensor is share * start + (1 - share) * fine; the card keeps the fine-tune's recipe with one
    more stage and drops the figures measured on other weights; a folder of another architecture is refused."""
    import torch
    from safetensors.torch import load_file, save_file
    start = tmp_path / "start"
    shutil.copytree(tiny_model, start, ignore=shutil.ignore_patterns("checkpoint"))
    fine = tmp_path / "fine"
    shutil.copytree(start, fine)
    w = load_file(fine / "model.safetensors")
    moved = {k: (v + 1 if v.is_floating_point() else v) for k, v in w.items()}
    save_file(moved, fine / "model.safetensors")
    out = tmp_path / "avg"
    r = _tool(ROOT / "tools" / "weight_average.py", fine, start, "--share", "0.25", "--out", out)
    assert r.returncode == 0, r.stderr
    avg = load_file(out / "model.safetensors")
    key = next(k for k, v in w.items() if v.is_floating_point() and v.numel() > 1)
    torch.testing.assert_close(avg[key].float(), (w[key].float() + 0.75).to(w[key].dtype).float(), rtol=1e-3, atol=1e-3)
    card = json.loads((out / "card.json").read_text())
    assert card["weight_average"]["share"] == 0.25 and card["stages"][-1]["init"] == "weight average"
    assert "val" not in card and "calibration" not in card and card["recipe"] == json.loads(
        (fine / "card.json").read_text())["recipe"]
    bad = tmp_path / "bad"
    shutil.copytree(start, bad)
    save_file({key: w[key][:1]}, bad / "model.safetensors")
    r = _tool(ROOT / "tools" / "weight_average.py", fine, bad, "--out", tmp_path / "avg2")
    assert r.returncode != 0 and "not the same architecture" in r.stderr and not (tmp_path / "avg2").exists()


@pytest.mark.slow
def test_predict_json_says_what_the_pages_would(tiny_model, tiny_data, tmp_path, capsys):
    """One JSON line per image: its files, mean confidence, and unfamiliar by the card's line (the pages' rule);
    a broken file gets a line with its error."""
    from sis import zoo
    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder, ignore=shutil.ignore_patterns("checkpoint"))
    (tmp_path / "bad.png").write_text("not an image")
    imgs = [tiny_data / "val" / "f000.png", tiny_data / "val" / "f001.png", tmp_path / "bad.png"]
    zoo.update_card(folder, calibration=dict(zoo.card_as_written(folder)["calibration"], low_confidence=1.0))
    r = in_process(capsys, "predict", "--model", folder, "--out", tmp_path / "o", "--json", *imgs)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [d["image"] for d in lines] == list(map(str, imgs))
    good, bad = lines[:2], lines[2]
    assert all(d["unfamiliar"] is True and 0 < d["mean_confidence"] < 1 for d in good)  # a line of 100%: always
    from sis.engines.predict import work_size
    size = list(work_size(64, 96, tuple(zoo.read_config(folder).base_size)))  # the app's rule, enlarged to its pixels
    assert all(Image.open(d["mask"]).size == (96, 64) and d["work_size"] == size for d in good)
    assert "is not a picture this app can open" in bad["error"]
    zoo.update_card(folder, calibration=dict(zoo.card_as_written(folder)["calibration"], low_confidence=0.0))
    r = in_process(capsys, "predict", "--model", folder, "--out", tmp_path / "o", "--json", imgs[0])
    assert json.loads(r.stdout)["unfamiliar"] is False
