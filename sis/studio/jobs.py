"""Jobs for the app: fine-tuning and training-step benchmarks, each in its own spawned process.

A worker *process* (not a thread) keeps a job's memory, and an out-of-memory kill, away from
the server every user shares. The manager enforces the caps: one job per session, ``max_jobs``
at once on the server, a wall-time limit, and a reaper that stops jobs whose page stopped
polling (the tab was closed). The cap and the reaper run on the manager's own watch thread,
every ``watch_s`` seconds, whether or not anyone is on a page.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sis import host, store
from sis.files import DiskFullError

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
    watch_s: float = 2.0
    stop_grace_s: float = 60.0  # a job still running this long after Stop is terminated  # how often the watch thread enforces the wall-time cap and reaps orphans


def _sentence(e: Exception) -> str:
    """A worker's failure as the page shows it: a user's error as it reads, anything else with its type."""
    return str(e) if isinstance(e, (ValueError, DiskFullError)) else f"{type(e).__name__}: {e}"


def _new_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _worker(cfg_dict: dict, threads: int, events, stop_event, compare_on: str | None = None) -> None:
    """Child process: run train() and report every step on ``events``; then, where ``compare_on`` is
    not None, the before/after comparison (on that base dataset; "" for none)."""
    import torch
    torch.set_num_threads(threads)
    from sis.training.config import TrainConfig
    from sis.training.loop import train
    cfg = TrainConfig(**cfg_dict)

    def on_progress(p):
        events.put(("progress", asdict(p)))
    try:
        res = train(cfg, callback=on_progress, stop=stop_event, log=lambda m: events.put(("log", m)))
        if compare_on is not None and res["status"] == "done":
            from sis.training.adapt import for_run

            def tick(i, n):
                events.put(("progress", {"phase": "compare", "step": i, "total_steps": n, "unit": "frames"}))
            for_run(cfg, Path(compare_on) if compare_on else None, tick, stop_event.is_set)
        events.put(("result", asdict(Outcome(res["status"], res["steps"], res["out"], res["history"], res["val"]))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def _engines_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: ``bench.compare_engines`` on one model, kept for this host when it qualifies
    (``engines.policy.keep_comparison``), each engine's time recorded in the app's history."""
    import torch
    torch.set_num_threads(threads)
    from sis.engines.policy import keep_comparison, why_not_kept
    from sis.training.bench import compare_engines
    try:
        def tick(phase, i, n):
            events.put(("progress", {"phase": "engines", "model": phase, "step": i, "total_steps": n}))
        res = compare_engines(args["folder"], size=tuple(args["size"]), warmup=1, repeats=args["repeats"],
                              progress=tick)
        res["not_kept_because"] = why_not_kept(res)
        res["kept_for_this_host"] = keep_comparison(res)
        for name, r in res["engines"].items():
            store.add_bench({"model": res["model"], "mode": f"infer:{name}", "device": "cpu", "batch": 1,
                             "size": res["size"], "amp": name == "torch-bf16", "median_ms": r["median_ms"],
                             "p90_ms": r["p90_ms"], "images_per_s": r["images_per_s"],
                             "peak_rss_mb": res["peak_rss_mb"], "host": res["host"], "engine": r})
        events.put(("result", asdict(Outcome("done", len(res["engines"]),
                                             result=[{k: v for k, v in res.items() if k != "host"}]))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def _video_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: segment a clip (``video.segment_video``) into the job's folder: overlay.mp4, one
    class-id PNG per processed frame in labels/, and labels.zip of them."""
    import zipfile
    from dataclasses import asdict as _asdict

    from sis.engines import TTA, load_accurate
    from sis.files import atomic_write
    from sis.host import threads as host_threads
    from sis.video.segment import segment_video
    os.environ["SIS_THREADS"] = str(threads)
    try:
        out = Path(args["out"])
        engine = load_accurate([Path(args["folder"])], TTA.from_mode(args.get("tta", "none")), args.get("engine"))
        t0 = time.time()

        def tick(i, n):
            eta = (time.time() - t0) / i * (n - i) if n else None
            events.put(("progress", {"phase": "video", "model": engine.cfg.name, "step": i, "total_steps": n or 0,
                                     "eta_s": eta, "unit": "frames"}))
        res = segment_video(engine, Path(args["src"]), out / "overlay.mp4", args.get("stride", 1),
                            args.get("max_seconds"), args.get("smooth", 0.0), labels_dir=out / "labels",
                            preview=out / "preview.mp4", progress=tick, stop=stop_event.is_set)

        def write_zip(tmp):
            with zipfile.ZipFile(tmp, "w") as z:
                for png in sorted((out / "labels").glob("*.png")):
                    z.write(png, f"labels/{png.name}")
        atomic_write(out / "labels.zip", write_zip)
        summary = {k: v for k, v in _asdict(res).items()}
        summary.update(share=[list(map(float, s)) for s in res.share], engine=engine.name, threads=host_threads(),
                       folder=args["folder"])
        events.put(("result", asdict(Outcome("stopped" if res.cut == "stopped" else "done", res.frames, str(out),
                                             result=summary))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def _adapt_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: a model adapted to unlabelled frames (``training.unlabeled.adapt_folder``) into the
    job's folder under the app's models, where every picker finds it."""
    import torch
    torch.set_num_threads(threads)
    from sis.training.unlabeled import adapt_folder
    try:
        def tick(i, n):
            events.put(("progress", {"phase": "adapt", "model": Path(args["folder"]).name, "step": i,
                                     "total_steps": n, "unit": "frames"}))
        res = adapt_folder(Path(args["folder"]), Path(args["source"]), Path(args["out"]), args.get("stride", 1),
                           tick, stop_event.is_set)
        events.put(("result", asdict(Outcome("stopped" if stop_event.is_set() else "done", res.frames, args["out"],
                                             result=res.to_dict()))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def _bench_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: time training (or inference) steps of each model with ``bench.bench``; each
    result is recorded in the app's history and reported on ``events``."""
    import torch
    torch.set_num_threads(threads)
    from sis.training.bench import bench
    names = args.pop("models")
    try:
        results = []
        for k, name in enumerate(names):
            if stop_event.is_set():
                break

            def tick(i, n, k=k, name=name):
                events.put(("progress", {"phase": "bench", "model": name, "step": k * n + i,
                                         "total_steps": len(names) * n, "unit": "steps"}))
            res = bench(name, progress=tick, **args)
            store.add_bench(res)
            results.append({k2: v for k2, v in res.items() if k2 != "host"})
        events.put(("result", asdict(Outcome("stopped" if len(results) < len(names) else "done", len(results),
                                             result=results))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


@dataclass(frozen=True)
class JobStep:
    """One progress report of a job: a training step or validation (the loop's Progress), or a stage of
    a benchmark, an engine comparison, a clip or a before/after comparison."""
    phase: str                  # train | val | done | stopped | compare | bench | engines | video | adapt
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

    @classmethod
    def from_dict(cls, d: dict) -> "JobStep":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class Outcome:
    """What a worker reports when it ends; ``result`` is the job kind's own: a benchmark's list of
    results, an engine comparison (one result in a list), a clip's summary; None for fine-tuning."""
    status: str                 # done | stopped
    steps: int
    out: str = ""
    history: list = field(default_factory=list)
    val: dict | None = None
    result: list | dict | None = None


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

    @property
    def active(self) -> bool:
        return self.status in ("starting", "running", "stopping")


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

    def _spawn(self, job: Job, target, payload: dict, threads: int = 1, **extra) -> Job:
        job.events, job.stop_event = CTX.Queue(), CTX.Event()
        job.process = CTX.Process(target=target, args=(payload, max(1, threads), job.events, job.stop_event),
                                  kwargs=extra, daemon=True, name=f"sis-job-{job.id}")
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
            out = self.models_dir / (name or f"{cfg['model']}-ft-{job_id}")
            cfg["out"] = str(out)
            cfg["resume"] = False
            job = self._spawn(Job(job_id, session, cfg, str(out)), _worker, cfg, compare_on=before_after)
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
            return self._spawn(job, _bench_worker, dict(args, models=list(models)), threads=host.threads())

    def start_engines(self, session: str, folder: str, size: tuple[int, int], repeats: int) -> Job:
        """Compare every engine on one model in a worker process (``bench.compare_engines``), under
        the same caps; the comparison is kept for this host when it qualifies."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            job = Job(job_id, session, {"model": str(folder), "size": list(size)}, "", kind="engines")
            return self._spawn(job, _engines_worker, {"folder": str(folder), "size": list(size), "repeats": repeats},
                               threads=host.threads())

    def start_video(self, session: str, src: Path, folder: Path, stride: int = 1, smooth: float = 0.0,
                    max_seconds: float | None = 60.0, engine: str | None = None, tta: str = "none") -> Job:
        """Segment the clip ``src`` with the model in ``folder`` in a worker process, under the same caps;
        the overlay, its preview, the label PNGs and their zip go to data/videos/<job id>/ (the job's ``out``)."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            out = store.data_dir() / "videos" / job_id
            args = {"src": str(src), "folder": str(folder), "stride": stride, "smooth": smooth,
                    "max_seconds": max_seconds, "engine": engine, "tta": tta, "out": str(out)}
            job = Job(job_id, session, {"model": Path(folder).name, **args}, str(out), kind="video")
            return self._spawn(job, _video_worker, args, threads=host.threads())

    def start_adapt(self, session: str, folder: Path, source: Path, name: str, stride: int = 1) -> Job:
        """Adapt the model in ``folder`` to the unlabelled photos or clip at ``source`` in a worker process,
        under the same caps; the new model goes to the app's models folder as ``name``."""
        with self.lock:
            self._admit(session)
            job_id = _new_id()
            out = self.models_dir / name
            args = {"folder": str(folder), "source": str(source), "out": str(out), "stride": stride}
            job = Job(job_id, session, {"model": Path(folder).name, **args}, str(out), kind="adapt")
            return self._spawn(job, _adapt_worker, args, threads=host.threads())

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
