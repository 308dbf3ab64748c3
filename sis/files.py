"""Writing files so that a failure loses nothing: write beside the target, then rename.

A write that fails half way (a full disk, a killed process) leaves the old file as it was and
no partial file behind; a full disk is reported as one sentence that says so.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator


class DiskFullError(OSError):
    """No space left on the device while writing a file."""

    def __str__(self) -> str:  # the sentence alone, without OSError's '[Errno 28]'
        return str(self.strerror)


def is_disk_full(e: BaseException) -> bool:
    """True for ENOSPC, also where a library re-raises it as text (safetensors: 'os error 28')."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or \
        "No space left on device" in str(e) or "os error 28" in str(e)


def free_mb(path: Path) -> float:
    """Free space on the file system holding ``path`` (or its nearest existing parent), in MiB."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free / 2**20


def remove(path: Path) -> None:
    """Delete a file or a folder if it exists; never raises."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def prune_older(folder: Path, max_age_s: float) -> int:
    """Delete the entries of ``folder`` last written more than ``max_age_s`` ago; how many went."""
    import time
    gone, now = 0, time.time()
    for p in Path(folder).glob("*") if Path(folder).is_dir() else []:
        try:
            old = now - p.stat().st_mtime > max_age_s
        except OSError:
            continue  # removed meanwhile by another process
        if old:
            remove(p)
            gone += 1
    return gone


@contextlib.contextmanager
def partial(tmp: Path, target: Path) -> Iterator[Path]:
    """Run the block that writes ``tmp`` (meant to become ``target``); if it fails, ``tmp`` is
    removed and a full disk becomes a DiskFullError naming ``target`` and the space left."""
    try:
        yield Path(tmp)
    except BaseException as e:
        remove(tmp)
        if is_disk_full(e):
            raise DiskFullError(errno.ENOSPC, f"the disk is full: could not write {target} "
                                f"({free_mb(target):.0f} MB free); free some space and try again") from e
        raise


def atomic_write(path: Path, write: Callable[[Path], object], tmp: Path | None = None) -> Path:
    """``write(tmp)``, then rename ``tmp`` over ``path``: readers see the old file or the whole new
    one, never a part. ``tmp`` defaults to ``path`` + '.<pid>.tmp' in the same folder."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with partial(tmp, path):
        write(tmp)
        os.replace(tmp, path)
    return path
