"""The job manager without Streamlit (fine-tuning, benchmarks, clips): caps, stop, result, history in SQLite."""
import sys
import time
from pathlib import Path

import pytest

from sis import store
from sis.studio import jobs

pytestmark = pytest.mark.slow  # worker processes that train


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
    with pytest.raises(jobs.JobError, match=r"already runs 1 job\(s\)"):
        manager.start("s2", cfg)
    snap = _wait(manager, job)
    assert snap.status == "done", snap.message
    assert snap.steps == [1, 2, 3] and snap.val  # per-step curve and a validation point
    run = store.list_runs()[0]
    assert run["status"] == "done" and run["steps"] == 3 and run["val_miou"] is not None
    # the page never resumes: the model is kept, its checkpoint (the optimiser's state, as big again) is not
    assert (Path(job.out) / "model.safetensors").is_file() and not (Path(job.out) / "checkpoint").exists()
    assert manager.stop(job.id) is False  # Stop after the end is harmless


def test_caps_refuse_big_jobs(manager, tiny_data):
    with pytest.raises(jobs.JobError, match="at most 50 steps"):
        manager.start("s", dict(model="pspnet-resnet18", data=str(tiny_data), max_steps=51))


def test_failed_job_reports_one_sentence(manager, tmp_path):
    job = manager.start("s", dict(model="pspnet-resnet18", data=str(tmp_path / "missing"), max_steps=1))
    snap = _wait(manager, job)
    assert snap.status == "failed" and "does not exist" in snap.message


def _unwatched_long_job(tmp_path, monkeypatch, tiny_data, tiny_model, **limits) -> jobs.Job:
    """A 2000-step job that nobody polls or stops: only the manager's watch thread acts on it."""
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path))
    m = jobs.JobManager(jobs.Limits(max_jobs=1, max_steps=2000, watch_s=0.2, **limits))
    try:
        job = m.start("s", dict(model="pspnet-resnet18", data=str(tiny_data), init=str(tiny_model), max_steps=2000,
                                batch_size=2, val_every=0))
        t = time.time()
        while job.active and time.time() - t < 120:
            time.sleep(0.5)  # no poll(), no start()
        return job
    finally:
        m.shutdown()


def test_wall_time_cap_runs_without_anyone_polling(tmp_path, monkeypatch, tiny_data, tiny_model):
    job = _unwatched_long_job(tmp_path, monkeypatch, tiny_data, tiny_model, max_wall_s=3.0)
    assert job.status == "stopped" and job.message == "stopped at the 3-second limit"
    assert job.progress[-1].step < 2000


def test_orphaned_job_is_reaped(tmp_path, monkeypatch, tiny_data, tiny_model):
    job = _unwatched_long_job(tmp_path, monkeypatch, tiny_data, tiny_model, orphan_s=2.0)
    assert job.status == "stopped" and job.message == "stopped: its page was closed"


def test_benchmark_runs_in_a_worker_under_the_same_caps(manager, tiny_data, tiny_model):
    job = manager.start_bench("s1", ["pspnet-resnet18"], mode="train", batch=1, size=(64, 96), warmup=0, repeats=2)
    assert job.process.pid != __import__("os").getpid() and job.kind == "bench"
    with pytest.raises(jobs.JobError, match="already has a benchmark job"):
        manager.start_bench("s1", ["pspnet-resnet18"], mode="infer")
    with pytest.raises(jobs.JobError, match=r"already runs 1 job\(s\)"):
        manager.start("s2", dict(model="pspnet-resnet18", data=str(tiny_data), max_steps=1))
    snap = _wait(manager, job)
    assert snap.status == "done", snap.message
    (res,) = snap.result
    assert res["mode"] == "train" and res["size"] == [64, 96] and len(res["times_ms"]) == 2
    assert store.list_bench()[0]["model"] == "pspnet-resnet18"  # recorded in the history
    assert store.list_runs() == []  # not a fine-tuning run


def test_a_clip_is_segmented_in_a_worker(manager, tiny_model, tmp_path):
    """The Video page's job: overlay mp4, label PNGs and their zip in the job's folder, a summary with flicker."""
    import zipfile

    import numpy as np
    from conftest import write_clip

    from sis.video.clips import probe
    clip = write_clip(tmp_path / "c.mp4", [np.random.default_rng(i).integers(0, 256, (48, 64, 3), np.uint8)
                                           for i in range(6)], fps=10)
    job = manager.start_video("s", clip, tiny_model, stride=2, smooth=0.5, engine="eager")
    with pytest.raises(jobs.JobError, match="already has a video job running"):
        manager.start_video("s", clip, tiny_model)
    snap = _wait(manager, job)
    assert snap.status == "done" and snap.kind == "video", snap.message
    res = snap.result
    assert res["frames"] == 3 and res["indices"] == [0, 2, 4] and 0 <= res["flicker"] <= 1
    assert res["flicker_raw"] is not None and len(res["share"]) == 3 and abs(sum(res["share"][0]) - 1) < 1e-6
    out = Path(snap.out)
    assert probe(out / "overlay.mp4").frames == 3 == probe(out / "preview.mp4").frames
    with zipfile.ZipFile(out / "labels.zip") as z:
        assert z.namelist() == ["labels/000000.png", "labels/000002.png", "labels/000004.png"]
    assert store.list_runs() == []  # not a fine-tuning run


def test_a_bad_clip_fails_in_one_sentence(manager, tiny_model, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    job = manager.start_video("s", tmp_path / "notes.mp4", tiny_model)
    snap = _wait(manager, job)
    assert snap.status == "failed" and snap.message == "notes.mp4 is not a video file FFmpeg can read"


def test_a_worker_does_not_run_the_page_again(monkeypatch, tmp_path):
    """spawn re-runs __main__ in a child; for the studio's workers (Streamlit's __main__ is the page) it must not."""
    import multiprocessing.spawn as spawn
    import types

    page = types.ModuleType("__main__")
    page.__file__ = str(tmp_path / "page.py")
    page.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", page)
    worker = spawn.get_preparation_data(f"{jobs.WORKER_PREFIX}abc")
    other = spawn.get_preparation_data("someone-else")
    assert "init_main_from_path" not in worker and "init_main_from_name" not in worker
    assert other["init_main_from_path"] == str(tmp_path / "page.py")  # other users of spawn are untouched


def test_two_jobs_never_write_one_model_folder(manager, monkeypatch):
    """Two sessions asking for the same model name in the same second each get a folder of their own,
    made before the worker starts; a folder left empty by a job that failed is removed."""
    started = []
    monkeypatch.setattr(manager, "_spawn", lambda job, *a, **k: started.append(job) or job)
    a = manager.start_adapt("s1", Path("m"), Path("src"), "street-adapted")
    b = manager.start_adapt("s2", Path("m"), Path("src"), "street-adapted")
    assert Path(a.out).name == "street-adapted" and Path(b.out).name == "street-adapted-2"
    assert Path(a.out).is_dir() and Path(b.out).is_dir()
    (Path(a.out) / "config.json").write_text("{}")
    a.process = b.process = None
    manager._finish(a, "done")
    manager._finish(b, "failed")
    assert Path(a.out).is_dir() and not Path(b.out).exists() and len(started) == 2
