"""Devices and mixed precision (PyTorch): one place for training, the torch engines and the benchmark.

Facts about the machine that need no torch live in ``host``."""
from __future__ import annotations

import contextlib
import platform
import time
from functools import lru_cache

import psutil
import torch

from sis.host import cpu_bf16_forced, cpu_has_bf16, cpu_model, host_key, hostname_hash


class DeviceError(ValueError):
    """The requested device cannot be used here; the message says why."""


def cuda_unavailable_reason() -> str | None:
    """None when CUDA works, else one sentence why not."""
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            return "this PyTorch build has no CUDA support"
        return "no CUDA GPU is visible to PyTorch on this host"
    return None


def pick_device(pref: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu'; 'cuda' or 'cuda:N' (error if unavailable)."""
    if pref == "auto":
        return torch.device("cuda" if cuda_unavailable_reason() is None else "cpu")
    if pref == "cpu":
        return torch.device("cpu")
    if pref.startswith("cuda"):
        why = cuda_unavailable_reason()
        if why:
            raise DeviceError(f"device '{pref}' is unavailable: {why}")
        return torch.device(pref)
    raise DeviceError(f"unknown device '{pref}'; choose auto, cpu or cuda")


BF16_MIN_SPEEDUP = 1.15  # bf16 autocast is used on a CPU only where it measured at least this much faster


@lru_cache(maxsize=None)
def cpu_bf16_speedup() -> float | None:
    """fp32 time / bf16-autocast time of a 3x3 conv (64 channels, 96x128, channels_last) on this
    CPU, measured once per process (~0.3 s); None when the CPU has no bf16 instructions.

    The flags alone do not tell: some CPUs with AVX512-BF16 run bf16 slower than fp32 (docs/training.md).
    Always a measurement (host_info records it); ``SIS_CPU_BF16`` overrides the decision, not this.
    """
    if not cpu_has_bf16():
        return None
    with torch.random.fork_rng(devices=[]):  # a run seeded before its first autocast draws what it would without it
        conv = torch.nn.Conv2d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last)
        x = torch.randn(1, 64, 96, 128).contiguous(memory_format=torch.channels_last)
    best = {False: float("inf"), True: float("inf")}
    with torch.inference_mode():
        for r in range(6):
            for bf16 in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    t0 = time.perf_counter()
                    conv(x)
                    if r >= 1:  # the first round builds the kernels
                        best[bf16] = min(best[bf16], time.perf_counter() - t0)
    return best[False] / best[True]


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using on this device, or None for plain fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type != "cpu":
        return None
    forced = cpu_bf16_forced()
    if forced is not None:
        return torch.bfloat16 if forced else None
    return torch.bfloat16 if (cpu_bf16_speedup() or 0.0) >= BF16_MIN_SPEEDUP else None


def autocast(device: torch.device, enabled: bool = True):
    """Autocast context for ``device`` (bf16 on capable CPUs, bf16/fp16 on CUDA) or a no-op."""
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_info() -> dict:
    """CPU model, cores, RAM, GPU, torch version: enough to compare two benchmark runs."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
    return {
        "cpu": cpu_model(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_bf16": cpu_has_bf16(),
        "cpu_bf16_speedup": None if cpu_bf16_speedup() is None else round(cpu_bf16_speedup(), 2),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "hostname_hash": hostname_hash(),
        "host_key": host_key(),
    }
