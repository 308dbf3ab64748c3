"""The fine-tune job manager without Streamlit: caps, stop, result, history in SQLite."""
import time

import pytest

from sis import jobs, store


@pytest.fixture
def manager(tmp_path, monkeypatch):
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path))
    m = jobs.JobManager(jobs.Limits(max_jobs=1, max_steps=50))
    yield m
    m.shutdown()


def _wait(manager, job, timeout=240):
    t = time.time()
    while job.active and time.time() - t < timeout:
        manager.poll(job.id)
        time.sleep(0.3)
    return manager.poll(job.id)


def test_job_runs_to_done_and_is_recorded(manager, tiny_data, tiny_model):
    cfg = dict(model="pspnet-resnet18", data=str(tiny_data), init=str(tiny_model), max_steps=3, batch_size=2,
               val_limit=2)
    job = manager.start("s1", cfg)
    with pytest.raises(jobs.JobError, match="already has a fine-tuning job"):
        manager.start("s1", cfg)
    with pytest.raises(jobs.JobError, match="already runs 1 fine-tuning job"):
        manager.start("s2", cfg)
    snap = _wait(manager, job)
    assert snap["status"] == "done", snap["message"]
    assert snap["steps"] == [1, 2, 3] and snap["val"]  # per-step curve and a validation point
    run = store.list_runs()[0]
    assert run["status"] == "done" and run["steps"] == 3 and run["val_miou"] is not None
    assert manager.stop(job.id) is False  # Stop after the end is harmless


def test_caps_refuse_big_jobs(manager, tiny_data):
    with pytest.raises(jobs.JobError, match="at most 50 steps"):
        manager.start("s", dict(model="pspnet-resnet18", data=str(tiny_data), max_steps=51))


def test_failed_job_reports_one_sentence(manager, tmp_path):
    job = manager.start("s", dict(model="pspnet-resnet18", data=str(tmp_path / "missing"), max_steps=1))
    snap = _wait(manager, job)
    assert snap["status"] == "failed" and "does not exist" in snap["message"]
