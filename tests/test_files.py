"""Writes that fail half way (a full disk) keep the old file and leave no partial one behind."""
from __future__ import annotations

import contextlib
import errno
import json
import subprocess

import pytest
import torch
from conftest import TINY_MODEL, write_dataset

from sis import zoo
from sis.cli import main
from sis.files import DiskFullError, atomic_write, is_disk_full
from sis.zoo import models


@contextlib.contextmanager
def small_disk(path, mb: int):
    """A real file system of ``mb`` MiB at ``path`` (tmpfs); the test is skipped where mounting is
    not allowed (not root, no CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_failed_write_keeps_the_old_file_and_no_partial(tmp_path):
    target = tmp_path / "card.json"
    target.write_text("old")

    def half_then_full(p):
        p.write_text("new but cut")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFullError, match=r"the disk is full: could not write .*card\.json \(\d+ MB free\)"):
        atomic_write(target, half_then_full)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]
    with pytest.raises(ValueError, match="boom"):  # other errors pass through unchanged, still cleaned up
        atomic_write(target, lambda p: (p.write_text("x"), (_ for _ in ()).throw(ValueError("boom"))))
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]
    atomic_write(target, lambda p: p.write_text("new"))
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_disk_full_recognised_in_library_messages():
    assert is_disk_full(OSError(errno.ENOSPC, "x"))
    # safetensors re-raises ENOSPC as its own error type with the OS text inside
    assert is_disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_model_save_on_a_full_disk_keeps_the_saved_model(tmp_path):
    model, cfg = models.create_model(TINY_MODEL)
    with small_disk(tmp_path / "disk", 64) as disk:  # fp16 weights (23 MB) fit, fp32 (45 MB) next to them do not
        models.save_model(model, cfg, disk / "m", card={"v": 1}, half=True)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        with pytest.raises(DiskFullError, match="model.safetensors"):
            models.save_model(model, cfg, disk / "m", card={"v": 2})
        assert sorted(p.name for p in (disk / "m").iterdir()) == ["card.json", "config.json", "model.safetensors"]
        assert zoo.card_as_written(disk / "m") == {"v": 1}
        loaded, _ = models.load_model(disk / "m")  # the first save, whole
        assert next(loaded.parameters()).dtype == torch.float32


def test_training_on_a_full_disk_keeps_the_last_checkpoint(tmp_path, capsys):
    """A checkpoint (weights + Adam state, ~135 MB) fits once; the next one does not: the run stops
    with the reason and the first checkpoint stays whole, so the run resumes from it."""
    data = write_dataset(tmp_path / "ds", n_train=4, n_val=2)
    with small_disk(tmp_path / "disk", 200) as disk:
        rc = main(["train", "--model", TINY_MODEL, "--data", str(data), "--out", str(disk / "m"), "--epochs", "3",
                   "--batch-size", "2", "--val-every", "0", "--device", "cpu", "--threads", "1"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 1 and err.startswith("error: the disk is full: could not write ") and "checkpoint" in err
        assert err.endswith("the same command resumes from the last checkpoint")
        assert sorted(p.name for p in disk.iterdir()) == ["m"]
        assert sorted(p.name for p in (disk / "m").iterdir()) == ["checkpoint"]  # no checkpoint.tmp
        meta = json.loads((disk / "m" / "checkpoint" / "meta.json").read_text())
        assert meta["step"] == 2 and meta["epoch"] == 1  # the end of epoch 1 (2 steps of 2 frames)
