"""The graph cache on disk: one ONNX graph per model weights, engine and work size.

Graphs live under ``SIS_CACHE_DIR`` (default ``data/cache``), named by the weights' digest
(``file_key``), and the least recently used go first once the cache passes ``SIS_CACHE_MAX_MB``:
every image aspect ratio makes a graph of its own, so without a bound uploads would fill the disk.
"""
from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Iterable

from sis.files import remove

CACHE_MAX_MB = 1024  # the cache's bound on disk (SIS_CACHE_MAX_MB); docs/memory.md has the graphs' sizes
STALE_TMP_S = 3600  # a half-written graph this old belongs to a process that died
GRAPH_FORMAT = "g2"  # in cached graph names: g2 = exported without constant folding
KEY_FILES = ("config.json", "model.safetensors")


def cache_dir() -> Path:
    """SIS_CACHE_DIR, else cache/ in the app's data folder."""
    from sis.store import data_dir
    d = Path(os.environ["SIS_CACHE_DIR"]) if os.environ.get("SIS_CACHE_DIR") else data_dir() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def prune_cache(keep: Iterable[Path] = (), limit_mb: float | None = None) -> list[Path]:
    """Delete the least recently used graphs until the cache holds at most ``limit_mb`` MiB
    (default ``SIS_CACHE_MAX_MB``, else CACHE_MAX_MB); the graphs in ``keep`` stay whatever
    the bound. Each image aspect ratio gets a graph of its own (pspnet-resnet18: 48 MB fp32 +
    12 MB int8), so without a bound uploads would fill the disk. Half-written graphs of a
    process that died (older than STALE_TMP_S) go too. Returns the files removed."""
    limit = float(os.environ.get("SIS_CACHE_MAX_MB", CACHE_MAX_MB) if limit_mb is None else limit_mb) * 2**20
    keep = {Path(p).resolve() for p in keep}
    now, found, removed = time.time(), [], []
    for p in cache_dir().glob("*.onnx"):
        try:
            st = p.stat()
        except OSError:  # removed by another process meanwhile
            continue
        if p.name.endswith((".tmp.onnx", ".pre.onnx")):
            if now - st.st_mtime > STALE_TMP_S:
                remove(p)
                removed.append(p)
        else:
            found.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in found)
    for _, size, p in sorted(found):  # oldest use first
        if total <= limit:
            break
        if p.resolve() not in keep:
            remove(p)
            removed.append(p)
            total -= size
    return removed


def file_key(folder: Path) -> str:
    """A short digest of a model folder's weights file and config: no model needs loading.
    Computed once per file version (path, size, mtime) in a process: the app asks on every rerun."""
    folder = Path(folder).resolve()
    stamps = tuple((st.st_size, st.st_mtime_ns) for st in ((folder / n).stat() for n in KEY_FILES))
    return _file_key(folder, stamps)


@functools.lru_cache(maxsize=64)
def _file_key(folder: Path, stamps: tuple) -> str:
    h = hashlib.sha1()
    for name in KEY_FILES:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return "f" + h.hexdigest()[:15]


def ranges_key(path: Path) -> str:
    """A short digest of an int8 ranges file, once per file version in a process: int8 graphs are named by
    it as well as by the weights, so the same weights quantised with other ranges make another graph."""
    st = Path(path).stat()
    return _ranges_key(Path(path).resolve(), (st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _ranges_key(path: Path, stamp: tuple) -> str:
    return "r" + hashlib.sha1(path.read_bytes()).hexdigest()[:8]


def cached_for(folder: Path, pattern: str = "*") -> list[Path]:
    """What the graph cache holds for the model in ``folder`` (its weights' key), ``pattern`` after the key."""
    return list(cache_dir().glob(f"*-{file_key(folder)}-{pattern}"))


def tmp_onnx(path: Path, kind: str = "tmp") -> Path:
    """Where a graph is written before it is renamed to ``path`` (per process: builds may race)."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{kind}.onnx")
