"""What runs in a job's own process: fine-tuning, step benchmarks, engine comparisons, clips and
adaptations. Each reports on its ``events`` queue: ("progress", a JobStep's fields), ("log", text),
then ("result", an Outcome's fields) or ("error", one sentence). The manager (studio.jobs) starts them."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sis import store
from sis.classes import DEFAULT_PALETTE
from sis.files import DiskFullError


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


def _sentence(e: Exception) -> str:
    """A worker's failure as the page shows it: a user's error as it reads, anything else with its type."""
    return str(e) if isinstance(e, (ValueError, DiskFullError)) else f"{type(e).__name__}: {e}"


def train_worker(cfg_dict: dict, threads: int, events, stop_event, compare_on: str | None = None) -> None:
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
        from sis.files import remove  # the page never resumes a run: its checkpoint only holds the disk
        remove(Path(res.out) / "checkpoint")
        if compare_on is not None and res.status == "done":
            from sis.evaluation.before_after import for_run

            def tick(i, n):
                events.put(("progress", {"phase": "compare", "step": i, "total_steps": n, "unit": "frames"}))
            for_run(cfg, Path(compare_on) if compare_on else None, tick, stop_event.is_set)
        events.put(("result", asdict(Outcome(res.status, res.steps, res.out, res.history, res.val))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def engines_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: ``bench.compare_engines`` on one model, kept for this host when it qualifies
    (``engines.policy.judge_comparison``), each engine's time recorded in the app's history."""
    import torch
    torch.set_num_threads(threads)
    from sis.bench import compare_engines
    from sis.engines.policy import judge_comparison
    try:
        def tick(phase, i, n):
            events.put(("progress", {"phase": "engines", "model": phase, "step": i, "total_steps": n}))
        res = compare_engines(args["folder"], size=tuple(args["size"]), warmup=1, repeats=args["repeats"],
                              progress=tick)
        judge_comparison(res)
        for name, r in res["engines"].items():
            store.add_bench({"model": res["model"], "mode": f"infer:{name}", "device": "cpu", "batch": 1,
                             "size": res["size"], "amp": name == "torch-bf16", "median_ms": r["median_ms"],
                             "p90_ms": r["p90_ms"], "images_per_s": r["images_per_s"],
                             "peak_rss_mb": res["peak_rss_mb"], "host": res["host"], "engine": r})
        events.put(("result", asdict(Outcome("done", len(res["engines"]),
                                             result=[{k: v for k, v in res.items() if k != "host"}]))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def video_worker(args: dict, threads: int, events, stop_event) -> None:
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
                            preview=out / "preview.mp4", progress=tick, stop=stop_event.is_set,
                            palette=args.get("palette", DEFAULT_PALETTE))

        def write_zip(tmp):
            with zipfile.ZipFile(tmp, "w") as z:
                for png in sorted((out / "labels").glob("*.png")):
                    z.write(png, f"labels/{png.name}")
        atomic_write(out / "labels.zip", write_zip)
        summary = {k: v for k, v in _asdict(res).items()}
        summary.update(share=[list(map(float, s)) for s in res.share], engine=engine.name, threads=host_threads(),
                       folder=args["folder"], palette=args.get("palette", DEFAULT_PALETTE))
        events.put(("result", asdict(Outcome("stopped" if res.cut == "stopped" else "done", res.frames, str(out),
                                             result=summary))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def adapt_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: a model adapted to unlabelled frames (``adaptation.unlabeled.adapt_folder``) into the
    job's folder under the app's models, where every picker finds it."""
    import torch
    torch.set_num_threads(threads)
    from sis.adaptation.unlabeled import adapt_folder
    try:
        t0 = time.time()

        def tick(i, n):  # the time left at the pace so far (fitting steps, after the frames, are slower)
            eta = (time.time() - t0) / i * (n - i) if i else None
            events.put(("progress", {"phase": "adapt", "model": Path(args["folder"]).name, "step": i,
                                     "total_steps": n, "unit": "steps", "eta_s": eta}))
        res = adapt_folder(Path(args["folder"]), Path(args["source"]), Path(args["out"]), args.get("stride"),
                           tick, stop_event.is_set)
        events.put(("result", asdict(Outcome("stopped" if stop_event.is_set() else "done", res.frames, args["out"],
                                             result=res.to_dict()))))
    except Exception as e:  # reported to the page as one sentence
        events.put(("error", _sentence(e)))


def bench_worker(args: dict, threads: int, events, stop_event) -> None:
    """Child process: time training (or inference) steps of each model with ``bench.bench``; each
    result is recorded in the app's history and reported on ``events``."""
    import torch
    torch.set_num_threads(threads)
    from sis.bench import bench
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
