"""Facts about this machine that need no PyTorch: CPU, memory, threads, the heap.

The serving path (the app on a graph engine, ``predict``) reads these without importing
torch; ``runtime`` holds the device facts that do need it.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
import zlib
from functools import lru_cache

import psutil

SMALL_HOST_MB = 2048  # below this much memory only engines that need no PyTorch model run (docs/memory.md)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX); whether that pays off is
    ``runtime.cpu_bf16_speedup``'s measurement."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return platform.machine() == "arm64"


def cpu_bf16_forced() -> bool | None:
    """``SIS_CPU_BF16=1`` / ``=0``: bf16 on the CPU forced on / off; None: measured."""
    return {"1": True, "0": False}.get(os.environ.get("SIS_CPU_BF16", ""))


def threads() -> int:
    """Threads an engine uses: ``SIS_THREADS``, else the physical cores (hyperthreads only contend)."""
    return max(1, int(os.environ.get("SIS_THREADS") or psutil.cpu_count(logical=False) or 1))


@lru_cache(maxsize=1)
def opencv():
    """OpenCV, imported where first needed (optical flow, denoising, deblocking), on the engines' thread count."""
    import cv2
    cv2.setNumThreads(threads())
    return cv2


def hostname_hash() -> int:
    """16 bits of the hostname, the same in every process (Python's hash() is salted per process)."""
    return zlib.crc32(platform.node().encode()) & 0xFFFF


@lru_cache(maxsize=1)
def host_key() -> str:
    """Names this machine for timings that pick an engine: hostname, CPU model, logical cores and
    bf16 support. The same in every process on the machine (the app and the CLI share it)."""
    raw = "|".join(map(str, (platform.node(), cpu_model(), psutil.cpu_count(logical=True), cpu_has_bf16())))
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def memory_limit_bytes() -> int:
    """The memory this process may use: the machine's RAM, or a smaller cgroup limit (a container
    or a hosted instance, which psutil's total does not show). ``SIS_MEMORY_LIMIT_MB`` overrides."""
    if os.environ.get("SIS_MEMORY_LIMIT_MB"):
        return int(float(os.environ["SIS_MEMORY_LIMIT_MB"]) * 2**20)
    limit = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def is_small() -> bool:
    """A host under SMALL_HOST_MB (a hosted instance's 1 GB): it keeps to graph engines."""
    return memory_limit_bytes() < SMALL_HOST_MB * 2**20


def rss_bytes() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def _libc():
    import ctypes
    import ctypes.util
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas: a threaded server (Streamlit) otherwise keeps freed
    activation memory spread over many arenas and its RSS only grows. False where not glibc."""
    libc = _libc()
    try:
        return bool(libc and libc.mallopt(-8, n))  # M_ARENA_MAX
    except AttributeError:
        return False


def release_memory() -> None:
    """Hand freed heap pages back to the OS after a large inference (glibc only; no-op elsewhere)."""
    libc = _libc()
    try:
        if libc:
            libc.malloc_trim(0)
    except AttributeError:
        pass


def nvidia_gpu_visible() -> bool:
    """A cheap look for an NVIDIA GPU (the driver's /proc entries), without importing torch."""
    gpus = "/proc/driver/nvidia/gpus"
    return os.path.isdir(gpus) and bool(os.listdir(gpus))


def summary() -> str:
    """One line naming this machine, for pages and logs: CPU, cores, memory, GPU, torch's version."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    mem = memory_limit_bytes() / 2**30
    return (f"{cpu_model()} · {psutil.cpu_count(logical=False)} cores / {psutil.cpu_count(logical=True)} threads · "
            f"{mem:.1f} GB memory · NVIDIA GPU: {'visible' if nvidia_gpu_visible() else 'none'} · "
            f"torch {torch_version}")


class BusyMeter:
    """The share of this machine's CPU that other processes used while the block ran: a timing taken
    beside them is not this host's speed (it slows every engine, and their spread hardly shows it)."""

    def __enter__(self) -> "BusyMeter":
        self._own = psutil.Process()
        self._t0, self._sys0, self._own0 = time.perf_counter(), psutil.cpu_times(), self._own.cpu_times()
        self.others_share = 0.0
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._t0
        sys1, own1 = psutil.cpu_times(), self._own.cpu_times()
        busy = sum(sys1) - sum(self._sys0) - (sys1.idle - self._sys0.idle) - \
            (getattr(sys1, "iowait", 0.0) - getattr(self._sys0, "iowait", 0.0))
        own = (own1.user + own1.system) - (self._own0.user + self._own0.system)
        self.others_share = others_share(busy, own, wall, psutil.cpu_count(logical=True) or 1)


def others_share(busy_s: float, own_s: float, wall_s: float, cores: int) -> float:
    """The share of ``cores`` x ``wall_s`` of CPU time that others used: the machine's busy time less
    this process's own, clipped to 0..1."""
    return max(0.0, min(1.0, (busy_s - own_s) / max(wall_s * cores, 1e-9)))
