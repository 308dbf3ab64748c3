"""Per-step throughput of inference and training steps: warm-up, repeats, median/p90, memory."""
from __future__ import annotations

import copy
import datetime as dt
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from sis.host import BusyMeter, rss_bytes
from sis.zoo import models
from sis.zoo.preprocess import forward_logits, model_input, pad_to_stride
from sis.zoo.runtime import amp_dtype, autocast, host_info, pick_device, synchronize


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _train_step(model, cfg, images, masks, opt, dev, amp: bool, channels_last: bool) -> None:
    """One forward + backward + optimizer step on fixed images (the timed unit of a training step)."""
    x, _ = model_input(images, cfg, channels_last)
    y, _ = pad_to_stride(masks, cfg.input_stride, value=-100)
    with autocast(dev, amp):
        out = model(x)
    loss = F.cross_entropy(out.float(), y, ignore_index=-100)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bench(model_name: str, mode: str = "infer", device: str = "cpu", batch: int = 1,
          size: tuple[int, int] = (360, 480), warmup: int = 2, repeats: int = 5, amp: bool = False,
          channels_last: bool = True, folder=None,
          progress: Callable[[int, int], None] | None = None) -> dict:
    """Time ``repeats`` steps after ``warmup`` of one model; returns a JSON-ready dict.

    mode: 'infer' (forward under inference_mode) or 'train' (forward+backward+Adam step).
    Weights do not matter for speed: random init unless ``folder`` is given.
    """
    if mode not in ("infer", "train"):
        raise ValueError(f"unknown mode '{mode}'; choose infer or train")
    dev = pick_device(device)
    if folder is not None:
        model, cfg = models.load_model(folder)
    else:
        model, cfg = models.create_model(model_name)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    h, w = size
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=gen).to(dev)
    masks = torch.randint(0, cfg.class_set.num_classes, (batch, h, w), generator=gen).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6) if mode == "train" else None

    def step():
        if mode == "infer":
            with torch.inference_mode():
                forward_logits(model, cfg, images, amp)
        else:
            _train_step(model, cfg, images, masks, opt, dev, amp, channels_last)

    model.train(mode == "train")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss0 = rss_bytes()
    peak_rss = rss0
    times = []
    for i in range(warmup + repeats):
        synchronize(dev)
        t0 = time.perf_counter()
        step()
        synchronize(dev)
        dt_ms = (time.perf_counter() - t0) * 1000
        if i >= warmup:
            times.append(dt_ms)
        peak_rss = max(peak_rss, rss_bytes())
        if progress:
            progress(i + 1, warmup + repeats)
    med = statistics.median(times)
    c = models.complexity(cfg.name, size, cfg.class_set.num_classes)
    return {
        "model": cfg.name, "mode": mode, "device": str(dev), "batch": batch, "size": [h, w],
        "amp": amp, "channels_last": channels_last, "warmup": warmup, "repeats": repeats,
        "median_ms": med, "p90_ms": percentile(times, 90), "min_ms": min(times), "times_ms": times,
        "images_per_s": batch * 1000 / med,
        "peak_rss_mb": peak_rss / 2**20, "rss_growth_mb": (peak_rss - rss0) / 2**20,
        "cuda_max_allocated_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "params": c["params"], "gflops": c["gflops"],
        "host": host_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def bench_engine(engine, size: tuple[int, int] = (360, 480), warmup: int = 1, repeats: int = 5) -> dict:
    """Time ``infer.predict`` of an engine (any: a single one or the accurate mode) on one real CamVid
    frame resized to ``size``: resize, every pass, softmax and the resize back, as the app runs it."""
    import numpy as np

    from sis.engines.int8 import calibration_images
    from sis.engines.predict import predict
    from sis.host import host_key, rss_bytes, threads
    image = calibration_images(size)[0][0].transpose(1, 2, 0).astype(np.uint8)
    engine.prepare(size)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        predict(engine, image)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    med = statistics.median(times)
    from sis.host import cpu_model
    return {"engine": engine.name, "size": list(size), "warmup": warmup, "repeats": repeats, "median_ms": med,
            "p90_ms": percentile(times, 90), "min_ms": min(times), "times_ms": times, "images_per_s": 1000 / med,
            "peak_rss_mb": rss_bytes() / 2**20, "threads": threads(),
            "host": {"cpu": cpu_model(), "host_key": host_key()},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                 progress: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Time every fn once per round, round after round: drift in machine load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    total = (warmup + repeats) * len(fns)
    done = 0
    for r in range(warmup + repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if r >= warmup:
                times[k].append((time.perf_counter() - t0) * 1000)
            done += 1
            if progress:
                progress(done, total)
    return times


CL_VARIANT = "eager+channels_last"


def compare_engines(model: str, data: str | None = None, engines: list[str] | None = None,
                    size: tuple[int, int] = (360, 480), warmup: int = 2, repeats: int = 10,
                    val_limit: int | None = None, progress: Callable[[str, int, int], None] | None = None,
                    log: Callable[[str], None] | None = None, timed: bool = True) -> dict:
    """Eager fp32 and every other engine available here on the same image, interleaved; with
    ``data``, each one's val mIoU on the same frames and its difference to eager (points).
    ``timed=False`` measures accuracy alone (timings and the default engine None): for weights whose
    timings are kept from elsewhere.

    Returns {model, size, reference, engines: {name: {median_ms, p90_ms, images_per_s,
    speedup_vs_eager, miou, miou_delta, build_s}}, unavailable: {name: reason}, default, host};
    ``engines.policy.judge_comparison`` keeps it as this host's timing.
    """
    import numpy as np

    from sis import engines as E
    from sis import zoo
    from sis.data.dataset import load_split
    from sis.engines.int8 import calibration_images
    from sis.engines.policy import decide
    from sis.host import is_small
    from sis.evaluation.evaluate import evaluate
    folder = zoo.resolve(model)
    net, cfg = models.load_for_inference(folder)  # channels_last: what the bf16 engine folds
    plain = copy.deepcopy(net).to(memory_format=torch.contiguous_format)  # the reference: plain smp, NCHW
    status = E.available("cpu")
    for n in engines or []:
        if n not in E.ENGINES:
            raise E.EngineError(E.unavailable_reason(n))
    names = [E.REFERENCE] + [n for n in (engines or E.ENGINES) if n != E.REFERENCE and status[n] is None]
    built, build = {}, {}
    for n in names:
        t0 = time.perf_counter()
        built[n] = E.create_engine(n, plain if n == E.REFERENCE else net, cfg, log=log,
                                   folder=folder)  # folder: its shipped int8 ranges and templates
        built[n].prepare(size)
        build[n] = time.perf_counter() - t0
    frames = load_split(data, "val", val_limit, cfg.class_set) if data else None
    if frames is not None and tuple(frames.images[0].shape[-2:]) == tuple(size):
        image = frames.images[0][None].numpy()
    else:
        image = calibration_images(size)[0].astype(np.uint8)
    # also timed, as a yardstick: the reference with channels_last (same fp32 numerics, faster on CPUs)
    fns = {n: (lambda e=e: e(image)) for n, e in built.items()}
    timg = torch.from_numpy(image)
    fns[CL_VARIANT] = lambda: forward_logits(net, cfg, timg, amp=False)
    with torch.inference_mode(), BusyMeter() as busy:
        times = _interleaved(fns, warmup, repeats, (lambda i, t: progress("timing", i, t)) if progress else None) \
            if timed else None
    out = {n: {"median_ms": None, "p90_ms": None, "images_per_s": None, "speedup_vs_eager": None,
               "build_s": build[n], "miou": None, "miou_delta": None} for n in names}
    if times is not None:
        ref_ms = statistics.median(times[E.REFERENCE])
        cl_ms = statistics.median(times[CL_VARIANT])
        for n in names:
            med = statistics.median(times[n])
            out[n].update(median_ms=med, p90_ms=percentile(times[n], 90), images_per_s=1000 / med,
                          speedup_vs_eager=ref_ms / med)
    if frames is not None:
        for i, n in enumerate(names):
            if progress:
                progress(f"val mIoU: {n}", i, len(names))
            res = evaluate(None, cfg, frames, torch.device("cpu"), amp=False, engine=built[n])
            out[n].update(miou=res["miou"], pixel_acc=res["pixel_acc"])
        for n in names:
            out[n]["miou_delta"] = 100 * (out[n]["miou"] - out[E.REFERENCE]["miou"])
    here = {n: zoo.EngineRecord.from_dict(r) for n, r in out.items()}
    return {"model": cfg.name, "folder": str(folder), "size": list(size), "reference": E.REFERENCE,
            "repeats": repeats, "others_cpu_share": busy.others_share, "val_frames": len(frames) if frames is not None else 0,
            "engines": out, "unavailable": {n: r for n, r in status.items() if r},
            "channels_last_fp32": {"median_ms": cl_ms, "speedup_vs_eager": ref_ms / cl_ms,
                                   "note": "eager fp32 with channels_last: a yardstick, not an engine"}
            if times is not None else None,
            # what the app and `predict` run once this comparison is kept
            "default": decide(zoo.read_card(folder), here, "cpu", is_small()).name if times is not None else None,
            "max_miou_delta": E.MAX_MIOU_DELTA, "peak_rss_mb": rss_bytes() / 2**20,
            "host": host_info(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def compare_train(model: str, data: str | None = None, batch: int = 4, size: tuple[int, int] = (352, 480),
                  warmup: int = 2, repeats: int = 5, loss_steps: int = 0, device: str = "cpu",
                  progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Training step: plain eager fp32 (NCHW) against the fast path (bf16/fp16 autocast +
    channels_last), interleaved, same model, batch and size. With ``data`` and ``loss_steps``,
    two short training runs from the same seed, one per path, and their loss curves.
    """
    dev = pick_device(device)
    fast_amp = amp_dtype(dev) is not None
    torch.manual_seed(0)
    base, cfg = models.create_model(model)
    nets = {"eager": base.to(dev), "fast": copy.deepcopy(base).to(dev).to(memory_format=torch.channels_last)}
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, generator=gen).to(dev)
    masks = torch.randint(0, cfg.class_set.num_classes, (batch, *size), generator=gen).to(dev)
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-6) for k, m in nets.items()}

    def step(kind: str):
        fast = kind == "fast"
        _train_step(nets[kind], cfg, images, masks, opts[kind], dev, fast and fast_amp, fast)
        synchronize(dev)

    for m in nets.values():
        m.train()
    times = _interleaved({k: (lambda k=k: step(k)) for k in nets}, warmup, repeats,
                         (lambda i, t: progress("timing", i, t)) if progress else None)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"model": cfg.name, "device": str(dev), "batch": batch, "size": list(size),
           "fast_path": f"{amp_dtype(dev)} autocast + channels_last" if fast_amp else
                        "fp32 + channels_last (no autocast: bf16 is not faster on this CPU)",
           "eager_ms": med["eager"], "fast_ms": med["fast"], "speedup": med["eager"] / med["fast"],
           "times_ms": times, "host": host_info(),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if data and loss_steps:
        from sis.training.config import TrainConfig
        from sis.training.loop import train
        curves = {}
        for kind in ("eager", "fast"):
            losses: list[float] = []
            cfg_t = TrainConfig(model=model, data=data, out=str(Path(tempfile.mkdtemp()) / kind),
                                max_steps=loss_steps, batch_size=batch, crop=size, flips="h", val_every=0,
                                amp=kind == "fast", channels_last=kind == "fast", device=str(dev), resume=False,
                                lr=2e-4, seed=0, threads=torch.get_num_threads())

            def cb(p, losses=losses, kind=kind):
                if p.phase == "train":
                    losses.append(p.loss)
                    if progress:
                        progress(f"loss curve: {kind}", p.step, p.total_steps)
            train(cfg_t, callback=cb, log=lambda s: None)
            shutil.rmtree(Path(cfg_t.out).parent, ignore_errors=True)
            curves[kind] = losses
        tail = max(1, len(curves["eager"]) // 3)
        e, f = curves["eager"][-tail:], curves["fast"][-tail:]
        res["loss_curves"] = curves
        res["loss_tail_mean"] = {"eager": statistics.mean(e), "fast": statistics.mean(f)}
        # the spread of the fp32 curve over the same window: "within noise" means the gap is smaller
        res["loss_tail_std_eager"] = statistics.pstdev(e)
        res["loss_tail_gap"] = abs(statistics.mean(e) - statistics.mean(f))
    return res
