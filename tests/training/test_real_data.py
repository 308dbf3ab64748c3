"""A few real CamVid frames, when ../shared/camvid is present (synthetic data covers the rest)."""
import json
import subprocess
import sys

import pytest
from conftest import REAL_CAMVID, ROOT, in_process

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (REAL_CAMVID / "train").is_dir(), reason=f"no CamVid at {REAL_CAMVID}")]


def test_real_camvid_layout_is_valid():
    from sis.data.dataset import list_pairs, load_split
    assert len(list_pairs(REAL_CAMVID, "train")) == 367 and len(list_pairs(REAL_CAMVID, "val")) == 101
    frames = load_split(REAL_CAMVID, "val", limit=3)
    assert frames.images[0].shape == (3, 360, 480)


def test_train_then_eval_on_real_frames(tmp_path, capsys):
    out = tmp_path / "m"
    r = subprocess.run([sys.executable, "-m", "sis", "train", "--model", "unet-resnet18", "--data", REAL_CAMVID,
                        "--out", out, "--max-steps", "3", "--batch-size", "2", "--crop", "192x256",
                        "--train-limit", "6", "--val-limit", "2"], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "done: 3 steps" in r.stdout
    r = in_process(capsys, "eval", "--model", out, "--data", REAL_CAMVID, "--split", "val", "--limit", "3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["frames"] == 3 and res["pixels"] > 0.9 * 3 * 360 * 480 and 0 <= res["miou"] <= 1
