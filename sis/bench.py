"""Per-step throughput of inference and training steps: warm-up, repeats, median/p90, memory."""
from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import Callable

import psutil
import torch
import torch.nn.functional as F

from . import zoo
from .evaluate import forward_logits, pad_to_stride
from .runtime import autocast, host_info, pick_device, rss_bytes, synchronize


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


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
        model, cfg = zoo.load_model(folder)
    else:
        model, cfg = zoo.create_model(model_name)
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
            x, _ = pad_to_stride(zoo.normalize(images, cfg), cfg.input_stride)
            y, _ = pad_to_stride(masks, cfg.input_stride, value=-100)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, amp):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

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
    c = zoo.complexity(cfg.name, size, cfg.class_set.num_classes)
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
