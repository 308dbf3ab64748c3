"""Peak RSS of a first graph at a new image size, with every shipped model's 360x480 int8 session loaded.

    python tools/first_graph_memory.py MODEL [--size 480x360] [--weights weights]

What a server holds after a first start (the four int8 sessions), then what a first photo of
another shape adds: the graph is filled from the model's shipped template of that size, or,
with no template there, exported from the PyTorch model (which imports smp). ``--weights`` points
at a copy of weights/ to compare the two (e.g. one with only graph-360x480.onnx kept). The RSS is
sampled every 10 ms with psutil; the graph cache is an empty temporary folder.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--size", default="480x360")
    ap.add_argument("--weights", type=Path, default=ROOT / "weights")
    a = ap.parse_args()
    os.environ["SIS_CACHE_DIR"] = tempfile.mkdtemp(prefix="sis-first-graph-")
    atexit.register(shutil.rmtree, os.environ["SIS_CACHE_DIR"], True)  # the graphs are throw-away
    import psutil

    from sis import engines, host
    from sis.engines.templates import template_path
    os.environ.setdefault("SIS_THREADS", "2")
    host.limit_malloc_arenas(2)  # as the app does at start-up
    proc, peak = psutil.Process(), [0]

    def sample():
        while True:
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    runners = {}
    for folder in sorted(p for p in a.weights.iterdir() if (p / "config.json").is_file()):
        runners[folder.name] = engines.load_engine(folder, "onnxruntime-int8")
        runners[folder.name].prepare((360, 480))
    time.sleep(0.1)
    base = peak[0] = proc.memory_info().rss
    size = tuple(int(v) for v in a.size.split("x"))
    template = template_path(a.weights / a.model, size).is_file()
    t = time.perf_counter()
    runners[a.model].prepare(size)
    took = time.perf_counter() - t
    time.sleep(0.1)
    print(f"{a.model} {a.size} ({'from its template' if template else 'exported'}): {len(runners)} sessions at "
          f"360x480 {base / 2**20:.0f} MB; first graph peak {peak[0] / 2**20:.0f} MB, then "
          f"{proc.memory_info().rss / 2**20:.0f} MB; {took:.1f} s; smp imported: "
          f"{'segmentation_models_pytorch' in sys.modules}, torch imported: {'torch' in sys.modules}")
