"""Jobs for the app: each fine-tune, benchmark, clip or adaptation in its own spawned process (studio.workers).

A worker *process* (not a thread) keeps a job's memory, and an out-of-memory kill, away from
the server every user shares. The manager enforces the caps: one job per session, ``max_jobs``
at once on the server, a wall-time limit, and a reaper that stops jobs whose page stopped
polling (the tab was closed). The cap and the reaper run on the manager's own watch thread,
every ``watch_s`` seconds, whether or not anyone is on a page.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.spawn
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sis import host, store
from sis.classes import DEFAULT_PALETTE
from sis.studio.workers import Outcome, adapt_worker, bench_worker, engines_worker, train_worker, video_worker

CTX = mp.get_context("spawn")  # fork would copy the server's threads and torch state


class JobError(ValueError):
    """A job request the caps refuse; the message says why."""


@dataclass
class Limits:
    max_jobs: int = int(os.environ.get("SIS_MAX_JOBS", "1"))   # concurrent jobs on this server
    max_epochs: int = 20
    max_steps: int = 2000
    max_wall_s: float = float(os.environ.get("SIS_MAX_JOB_S", "1800"))
    max_train_frames: int = 400
    orphan_s: float = 120.0  # a job nobody polled for this long is stopped
    watch_s: float = 2.0  # how often the watch thread enforces the wall-time cap and reaps orphans
    stop_grace_s: float = 60.0  # a job still running this long after Stop is terminated


def fine_tune_memory_note() -> str | None:
    """One sentence for the Fine-tune page on a host under ``host.SMALL_HOST_MB``, whose memory a fine-tune's
    batch forward and backward outgrows for every shipped model (docs/memory.md); None elsewhere."""
    if not host.is_small():
        return None
    return (f"This server has {host.memory_limit_bytes() / 2**30:.1f} GB of memory, and a fine-tune holds a batch "
            f"of frames forward and backward, which takes more than that for the shipped models: here a run will "
            f"likely be stopped for memory. Fine-tune on a machine with a few GB (`python -m sis train --init MODEL` "
            f"does the same) and copy the new model's folder into {store.data_dir() / 'models'} here.")


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class JobStep:
    """One progress report of a job: a training step or validation (the loop's Progress), or a stage of
    a benchmark, an engine comparison, a clip or a before/after comparison."""
    phase: str                  # train | val | finish | done | stopped | compare | bench | engines | video | adapt
    step: int = 0
    total_steps: int = 0
    model: str = ""
    unit: str = ""              # what a step counts where it is not an optimizer step: frames, steps
    eta_s: float | None = None
    epoch: int | None = None    # training: the epoch of this step, of ``epochs``
    epochs: int | None = None
    loss: float | None = None
    pixel_acc: float | None = None
    val_miou: float | None = None
    stage: str = ""             # finish: what a run does after its last step, in words

    @classmethod
    def from_dict(cls, d: dict) -> "JobStep":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Snapshot:
    """A job as a page renders it: small, plain, typed."""
    id: str
    kind: str
    status: str
    message: str
    model: str
    out: str
    elapsed_s: float
    last: JobStep | None = None
    eta_s: float | None = None
    steps: list = field(default_factory=list)      # optimizer steps reported, in order
    loss: list = field(default_factory=list)       # the training loss at each of them
    pixel_acc: list = field(default_factory=list)
    val: list = field(default_factory=list)        # (step, val mIoU) of each validation
    history: list = field(default_factory=list)    # per-epoch records (training.loop)
    logs: list = field(default_factory=list)       # the last few log lines
    result: list | dict | None = None


@dataclass
class Job:
    id: str
    session: str
    cfg: dict
    out: str
    process: object = None
    events: object = None
    stop_event: object = None
    kind: str = "train"  # train | bench (step times) | engines (an engine comparison) | video | adapt
    status: str = "starting"  # starting | running | stopping | done | stopped | failed
    progress: list = field(default_factory=list)  # JobSteps, one per report (bounded)
    history: list = field(default_factory=list)
    logs: list = field(default_factory=list)
    message: str = ""
    started: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)
    ended: float | None = None
    stop_asked: float = 0.0
    result: list | dict | None = None  # a benchmark's results, a clip's summary

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "stopping")

    def snapshot(self) -> Snapshot:
        last = self.progress[-1] if self.progress else None
        train = [p for p in self.progress if p.phase == "train"]
        return Snapshot(id=self.id, kind=self.kind, status=self.status, message=self.message,
                        model=self.cfg["model"], out=self.out, elapsed_s=(self.ended or time.time()) - self.started,
                        last=last, eta_s=train[-1].eta_s if train else (last.eta_s if last else None),
                        steps=[p.step for p in train], loss=[p.loss for p in train],
                        pixel_acc=[p.pixel_acc for p in train],
                        val=[(p.step, p.val_miou) for p in self.progress if p.phase == "val"],
                        history=self.history, logs=self.logs[-5:], result=self.result)


WORKER_PREFIX = "sis-job-"


def _without_main(get_preparation_data):
    """spawn's preparation data, less the __main__ to re-run for this module's workers: Streamlit runs the page
    that clicked as __main__, and spawn would run it again in the worker, bare, where each st call logs
    'missing ScriptRunContext'. Keyed by the process's name, so no global is swapped while another session runs."""
    def prepare(name):
        data = get_preparation_data(name)
        if str(name).startswith(WORKER_PREFIX):  # the targets live in sis.studio.workers, importable by name
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
        return data
    prepare.wrapped = get_preparation_data
    return prepare


if not hasattr(multiprocessing.spawn.get_preparation_data, "wrapped"):
    multiprocessing.spawn.get_preparation_data = _without_main(multiprocessing.spawn.get_preparation_data)


class JobManager:
    """Process-wide registry of fine-tuning jobs (one instance per server)."""

    def __init__(self, limits: Limits | None = None, models_dir: Path | None = None):
        self.limits = limits or Limits()
        self.models_dir = models_dir or store.data_dir() / "models"
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()  # the watch thread and every session's page share the jobs
        import psutil
        store.mark_interrupted_runs(before=psutil.Process().create_time())
        self._closed = threading.Event()
        self.watch_error = ""  # the last error the watch thread survived, for a page to show
        self._watch = threading.Thread(target=self._watch_loop, daemon=True, name="sis-job-watch")
        self._watch.start()

    def _watch_loop(self) -> None:
        while not self._closed.wait(self.limits.watch_s):
            with self.lock:
                try:
                    self.poll_all()
                except Exception as e:  # noqa: BLE001 - the caps must outlive one bad round (e.g. a locked db)
                    self.watch_error = f"{type(e).__name__}: {e}"

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.active]

    def for_session(self, session: str, kind: str | None = None) -> Job | None:
        """The session's latest job (running or finished), of ``kind`` if given."""
        mine = [j for j in self.jobs.values() if j.session == session and kind in (None, j.kind)]
        return max(mine, key=lambda j: j.started) if mine else None

    def _admit(self, session: str) -> None:
        """Raise JobError when the session or the server already runs as many jobs as allowed."""
        self.poll_all()
        mine = self.for_session(session)
        if mine is not None and mine.active:
            what = {"train": "fine-tuning", "bench": "benchmark", "engines": "engine comparison",
                    "video": "video", "adapt": "adaptation"}[mine.kind]
            raise JobError(f"this session already has a {what} job running; stop it first")
        if len(self.running()) >= self.limits.max_jobs:
            raise JobError(f"the server already runs {self.limits.max_jobs} job(s) (fine-tuning, benchmark or clip), "
                           "its limit; try again when one finishes")

    def _reserve(self, name: str) -> Path:
        """A new folder under the models for a job's model, made here: ``name``, else ``name-2``, ``-3``... where
        another session (or server) took it first, so that two jobs never write one folder."""
        for n in range(1, 100):
            out = self.models_dir / (name if n == 1 else f"{name}-{n}")
            try:
                out.mkdir(parents=True)
                return out
            except FileExistsError:
                continue
        raise JobError(f"the models folder already holds {name} and 98 more of that name; choose another name")

    def _spawn(self, job: Job, target, payload: dict, threads: int = 1, **extra) -> Job:
        job.events, job.stop_event = CTX.Queue(), CTX.Event()
        job.process = CTX.Process(target=target, args=(payload, max(1, threads), job.events, job.stop_event),
                                  kwargs=extra, daemon=True, name=f"{WORKER_PREFIX}{job.id}")
        job.process.start()
        self.jobs[job.id] = job
        return job

    def start(self, session: str, cfg: dict, name: str | None = None, before_after: str | None = None) -> Job:
        """Start a fine-tuning job for ``session``; cfg holds TrainConfig fields. ``before_after``: after the
        run, compare the model with its start on the run's frames and on this base dataset ("" for none;
        None: no comparison). Raises JobError if a cap refuses."""
        lim = self.limits
        with self.lock:
            self._admit(session)
            if cfg.get("max_steps") and cfg["max_steps"] > lim.max_steps:
                raise JobError(f"at most {lim.max_steps} steps per job here")
            if not cfg.get("max_steps") and cfg.get("epochs", 1) > lim.max_epochs:
                raise JobError(f"at most {lim.max_epochs} epochs per job here")
            cfg = dict(cfg)
            cfg["train_limit"] = min(cfg.get("train_limit") or lim.max_train_frames, lim.max_train_frames)
            job_id = _new_id()
            out = self._reserve(name or f"{cfg['model']}-ft-{job_id}")
            cfg["out"] = str(out)
            cfg["resume"] = False
            job = self._spawn(Job(job_id, session, cfg, str(out)), train_worker, cfg, compare_on=before_after)
        store.upsert_run(job_id, model=cfg["model"], init=cfg.get("init"), data=cfg.get("data"),
                         status="running", config=cfg, out_dir=str(out))
        return job

    def start_bench(self, session: str, models: list[str], **args) -> Job:
        """Time steps of ``models`` (``bench.bench``'s arguments: mode, device, batch, size, warmup,
        repeats, amp) in a worker process, under the same caps as fine-tuning."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            job = Job(job_id, session, {"model": ", ".join(models), **args}, "", kind="bench")
            # timed with the threads an engine uses here (fine-tuning takes one: the server stays responsive)
            return self._spawn(job, bench_worker, dict(args, models=list(models)), threads=host.threads())

    def start_engines(self, session: str, folder: str, size: tuple[int, int], repeats: int) -> Job:
        """Compare every engine on one model in a worker process (``bench.compare_engines``), under
        the same caps; the comparison is kept for this host when it qualifies."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            job = Job(job_id, session, {"model": str(folder), "size": list(size)}, "", kind="engines")
            return self._spawn(job, engines_worker, {"folder": str(folder), "size": list(size), "repeats": repeats},
                               threads=host.threads())

    def start_video(self, session: str, src: Path, folder: Path, stride: int = 1, smooth: float = 0.0,
                    max_seconds: float | None = 60.0, engine: str | None = None, tta: str = "none",
                    palette: str = DEFAULT_PALETTE) -> Job:
        """Segment the clip ``src`` with the model in ``folder`` in a worker process, under the same caps;
        the overlay, its preview, the label PNGs and their zip go to data/videos/<job id>/ (the job's ``out``)."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            out = store.data_dir() / "videos" / job_id
            args = {"src": str(src), "folder": str(folder), "stride": stride, "smooth": smooth,
                    "max_seconds": max_seconds, "engine": engine, "tta": tta, "out": str(out), "palette": palette}
            job = Job(job_id, session, {"model": Path(folder).name, **args}, str(out), kind="video")
            return self._spawn(job, video_worker, args, threads=host.threads())

    def start_adapt(self, session: str, folder: Path, source: Path, name: str, stride: int | None = None) -> Job:
        """Adapt the model in ``folder`` to the unlabelled photos or clip at ``source`` in a worker process,
        under the same caps; the new model goes to the app's models folder as ``name``."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            out = self._reserve(name)
            args = {"folder": str(folder), "source": str(source), "out": str(out), "stride": stride}
            job = Job(job_id, session, {"model": Path(folder).name, **args}, str(out), kind="adapt")
            return self._spawn(job, adapt_worker, args, threads=host.threads())

    def stop(self, job_id: str) -> bool:
        """Ask a job to stop after its current batch; False if it was not running (a second Stop is harmless)."""
        job = self.jobs.get(job_id)
        if job is None or not job.active:
            return False
        job.stop_event.set()
        job.status, job.stop_asked = "stopping", time.time()
        return True

    def poll(self, job_id: str, touch: bool = True) -> Snapshot | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if touch:
                job.last_seen = time.time()
            self._drain(job)
            return job.snapshot()

    def poll_all(self) -> None:
        """Drain every job, enforce the wall-time cap and reap orphans."""
        now = time.time()
        for job in list(self.jobs.values()):
            self._drain(job)
            if not job.active:
                continue
            if now - job.started > self.limits.max_wall_s and job.status != "stopping":
                cap = self.limits.max_wall_s
                job.message = f"stopped at the {cap / 60:.0f}-minute limit" if cap >= 60 else \
                    f"stopped at the {cap:.0f}-second limit"
                self.stop(job.id)
            if now - job.last_seen > self.limits.orphan_s and job.status != "stopping":
                job.message = "stopped: its page was closed"
                self.stop(job.id)
            if job.status == "stopping" and now - job.stop_asked > self.limits.stop_grace_s:
                job.process.terminate()  # did not stop in time (one long step): no zombie left behind
                job.message = job.message or "stopped: it did not stop by itself in time"

    def _drain(self, job: Job) -> None:
        if job.events is None:
            return
        while True:
            try:
                self._handle(job, *job.events.get_nowait())
            except (queue.Empty, OSError, ValueError):
                break
        if job.active and job.process is not None and not job.process.is_alive():
            # the process ended: its last events may still be in flight
            try:
                while job.active:
                    self._handle(job, *job.events.get(timeout=0.2))
            except (queue.Empty, OSError, ValueError):
                pass
            if job.active:
                job.message = job.message or (f"the training process died (exit code {job.process.exitcode}); "
                                              f"it may have run out of memory")
                self._finish(job, "failed")

    def _handle(self, job: Job, kind: str, payload) -> None:
        if kind == "progress":
            if job.status == "starting":
                job.status = "running"
            job.progress.append(JobStep.from_dict(payload))
            if len(job.progress) > 5000:
                del job.progress[:1000]
        elif kind == "log":
            job.logs.append(payload)
        elif kind == "result":
            outcome = Outcome(**payload)
            job.history, job.result = outcome.history, outcome.result
            self._finish(job, outcome.status, val=outcome.val, steps=outcome.steps)
        elif kind == "error":
            job.message = payload
            self._finish(job, "failed")

    def _finish(self, job: Job, status: str, val: dict | None = None, steps: int | None = None) -> None:
        job.status, job.ended = status, time.time()
        if job.process is not None:
            job.process.join(timeout=5)
        if job.kind in ("train", "adapt") and job.out:
            with contextlib.suppress(OSError):  # the folder reserved for a model that never came: only if empty
                Path(job.out).rmdir()
        if job.kind != "train":  # the runs table holds fine-tuning runs; benchmarks record their own rows
            return
        store.upsert_run(job.id, status=status, ts_end=job.ended, steps=steps,
                         val_miou=(val or {}).get("miou"), message=job.message, history=job.history)

    def shutdown(self) -> None:
        self._closed.set()
        self._watch.join(timeout=5)
        for job in self.jobs.values():
            if job.active:
                job.stop_event.set()
                job.process.join(timeout=10)
                if job.process.is_alive():
                    job.process.terminate()
