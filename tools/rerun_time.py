"""Time of one Segment rerun with the opacity slider moved, and the SQLite connections it opens.

    python tools/rerun_time.py [CHECKOUT] [--reruns N]

CHECKOUT: the repository to measure (default: this one), so that two versions can be timed in one
run on one machine. Runs the app's Segment page in Streamlit's AppTest on the default model and the
first sample frame, in a fresh data folder: one run to segment (not timed), then N reruns that
each move the slider (the result is kept: only the page's own work is timed). Prints the median,
min and max of the reruns in milliseconds and the SQLite connections per rerun.
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("checkout", nargs="?", default=str(Path(__file__).resolve().parents[1]))
p.add_argument("--reruns", type=int, default=15)
a = p.parse_args()
root = Path(a.checkout).resolve()
os.environ["SIS_DATA_DIR"] = tempfile.mkdtemp()
os.chdir(root)
sys.path.insert(0, str(root))

connects = [0]
_connect = sqlite3.connect


def counting(*args, **kw):
    connects[0] += 1
    return _connect(*args, **kw)


sqlite3.connect = counting
from streamlit.testing.v1 import AppTest  # noqa: E402

at = AppTest.from_file(str(root / "streamlit_app.py"), default_timeout=300)
at.run()
at.switch_page("pages/segment.py")
at.run()
assert not at.exception, at.exception
times, conns = [], []
for i in range(a.reruns):
    slider = at.slider(key="seg_alpha")
    c0, t0 = connects[0], time.perf_counter()
    slider.set_value(0.3 if i % 2 == 0 else 0.7).run()
    times.append((time.perf_counter() - t0) * 1000)
    conns.append(connects[0] - c0)
    assert not at.exception, at.exception
print(f"{root.name}: Segment rerun with the slider moved: median {statistics.median(times):.0f} ms "
      f"(min {min(times):.0f}, max {max(times):.0f}, {a.reruns} reruns); "
      f"SQLite connections per rerun: {statistics.median(conns):.0f}")
