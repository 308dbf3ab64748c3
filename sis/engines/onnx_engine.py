"""The ONNX Runtime engine: a model's exported graph per work size, fp32 or int8, no PyTorch.

A graph comes from the cache, else from the model's shipped template and weights (numpy and
onnx only), else from exporting the PyTorch model (the one time torch and smp are imported).
"""
from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np

from sis.engines.cache import GRAPH_FORMAT, cache_dir, file_key, prune_cache, ranges_key
from sis.engines.int8 import RANGES_FILE, quantize_graph
from sis.engines.names import EngineError
from sis.engines.templates import fill_template
from sis.host import release_memory
from sis.host import threads as host_threads

SESSIONS_PER_ENGINE = 3  # image sizes an engine keeps loaded (SIS_GRAPH_SESSIONS); older ones reload from disk


class GraphEngine:
    """ONNX Runtime over cached per-size graphs (batch 1; a batch is run image by image)."""

    def __init__(self, model, cfg, name: str, threads: int | None = None,
                 log: Callable[[str], None] | None = None, folder: Path | None = None, temperature: float = 1.0):
        """``model`` may be None with a ``folder``: then PyTorch weights are loaded only to
        build a graph that is not cached yet, and dropped afterwards (the app's memory)."""
        self.model, self.cfg = model, cfg
        self.name = name
        self.temperature = temperature
        self.int8 = name.endswith("int8")
        self.threads = threads or host_threads()
        self.log = log
        self.folder = folder
        self._key = file_key(folder) if folder is not None else None
        self._sessions: OrderedDict[tuple[int, int], object] = OrderedDict()  # least recently used first
        self.max_sessions = max(1, int(os.environ.get("SIS_GRAPH_SESSIONS", SESSIONS_PER_ENGINE)))
        self._lock = threading.Lock()

    def _weights_key(self) -> str:
        """The folder's file digest, else the in-memory weights' digest (computed once)."""
        if self._key is None:
            from sis.zoo.models import weights_digest
            self._key = weights_digest(self.model)
        return self._key

    def fp32_path(self, size: tuple[int, int]) -> Path:
        return cache_dir() / f"{self.cfg.name}-{self._weights_key()}-{GRAPH_FORMAT}-{size[0]}x{size[1]}.onnx"

    def cached_path(self, size: tuple[int, int]) -> Path:
        """Where this engine's graph of ``size`` is cached (it may not be built yet): an int8 graph quantised
        with the folder's ranges file is named by that file too (an adapted model's carried ranges, checked)."""
        fp32 = self.fp32_path(size)
        if not self.int8:
            return fp32
        ranges = self._folder_ranges()
        return fp32.with_suffix(f".{ranges_key(ranges)}.int8.onnx" if ranges else ".int8.onnx")

    def graph_path(self, size: tuple[int, int]) -> Path:
        """The cached graph of ``size``, built first if it is not there."""
        if self.cached_path(size).is_file():
            return self.cached_path(size)
        self._check_folder()
        fp32 = self.fp32_path(size)
        # the shipped template + the weights first: no PyTorch model is built, smp is not imported
        if not fp32.is_file() and not (self.folder is not None and
                                       fill_template(self.folder, size, fp32, self._weights_key())):
            if self.log:
                self.log(f"exporting {self.cfg.name} to ONNX at {size[0]}x{size[1]} (once)")
            from sis.engines.export import export_graph
            from sis.zoo.models import load_model
            if self.model is not None:
                export_graph(self.model, self.cfg, size, fp32)
            else:  # weights loaded for this export only: no second copy
                export_graph(load_model(self.folder)[0], self.cfg, size, fp32, inplace=True)
            gc.collect()  # the exporter's garbage goes back before quantisation allocates its own
            release_memory()
        if not self.int8:
            return fp32
        q = self.cached_path(size)
        if self.log:
            self.log(f"quantising {self.cfg.name} to int8 at {size[0]}x{size[1]} (once)")
        quantize_graph(fp32, q, size, self.ranges_path())
        return q

    def _check_folder(self) -> None:
        """A graph is built from the folder's files and cached under the key they had when the engine was
        loaded: files replaced since (a model shipped or saved again under that name) would be cached
        under the old key, so the build stops instead."""
        if self.folder is None:
            return
        try:
            now = file_key(self.folder)
        except OSError:
            raise EngineError(f"the model folder {self.folder} is gone since {self.cfg.name} was loaded") from None
        if now != self._key:
            raise EngineError(f"the model folder {self.folder} has other weights than when {self.cfg.name} was "
                              "loaded: load the model again")

    def _folder_ranges(self) -> Path | None:
        """The calibration ranges shipped (or carried) beside the folder's weights, where there are any."""
        path = Path(self.folder) / RANGES_FILE if self.folder is not None else None
        return path if path is not None and path.is_file() else None

    def ranges_path(self) -> Path:
        """The shipped calibration ranges, else this model's cached ones (computed on first use)."""
        if (shipped := self._folder_ranges()) is not None:
            return shipped
        return cache_dir() / f"{self.cfg.name}-{self._weights_key()}-{GRAPH_FORMAT}.{RANGES_FILE}"

    def prepare(self, size):
        """The ONNX Runtime session for ``size``: loaded from the cache, or built and cached first.
        At most ``max_sessions`` sizes stay loaded (least recently used goes), and the cache on
        disk stays under its bound (``prune_cache``)."""
        size = tuple(size)
        with self._lock:  # one build per size, even with many sessions asking at once
            if size not in self._sessions:
                import onnxruntime as ort
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = self.threads, 1
                so.log_severity_level = 3
                so.enable_cpu_mem_arena = False  # hand activations back after each run (docs/decisions.md)
                # no busy-waiting between calls: it steals the cores from whatever runs next
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                built = not self.cached_path(size).is_file()
                path = self.graph_path(size)
                self._sessions[size] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)  # a run still using it holds its own reference
                os.utime(path)  # its mtime is its last use: the cache bound removes the oldest first
                prune_cache(keep=[self.cached_path(s) for s in self._sessions])
                if built:  # exporting and quantising leave freed heap behind
                    gc.collect()
                    release_memory()
            self._sessions.move_to_end(size)
            return self._sessions[size]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N,3,H,W) uint8 -> (N,C,H,W) float32 logits."""
        sess = self.prepare(tuple(images.shape[-2:]))  # InferenceSession.run is thread-safe
        x = np.asarray(images, np.float32)
        outs = [sess.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))]
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
