"""Peak RSS of the app server with every shipped model loaded and one inference on each.

    python tools/app_memory.py [DATA_DIR]

DATA_DIR: the app's data folder to start on (default: a fresh one, as on a first start); e.g. a
copy of one holding this host's engine comparisons, to measure the engines they pick.

Starts `streamlit run` on 127.0.0.1, opens the Compare page in Chromium (which runs every
shipped model on one frame) and the Segment page, samples the server's RSS every 100 ms
with psutil, and prints the peak: RSS, and its anonymous part (RSS minus file-backed pages such
as torch's shared libraries, which the kernel can drop and re-read under a memory limit).
"""
from __future__ import annotations

import atexit
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_load import Server  # noqa: E402 - the one way the tools start the app server

server = Server(Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()), None)
atexit.register(server.close)  # also when the browser or a page fails: no server left behind
server.wait_healthy()
proc, url, LOG = server.proc, server.url, server.log  # the server's output, if a page fails
peak, peak_anon, done = 0, 0, False
timeline: list[tuple[float, int]] = []  # (s since start, RSS MB), written beside the log


def sample():
    global peak, peak_anon
    p = psutil.Process(proc.pid)
    while not done:
        m = p.memory_info()
        peak, peak_anon = max(peak, m.rss), max(peak_anon, m.rss - m.shared)
        timeline.append((round(time.time() - t_start, 2), m.rss >> 20))
        time.sleep(0.1)


t_start = time.time()
threading.Thread(target=sample, daemon=True).start()
m0 = psutil.Process(proc.pid).memory_info()
idle, idle_anon = m0.rss, m0.rss - m0.shared
with sync_playwright() as pw:
    b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                           args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
    page = b.new_page()
    page.set_default_timeout(300_000)
    page.goto(f"{url}/compare")
    page.get_by_text("Pixels where the models disagree").wait_for()
    n_models = page.locator("[data-testid='stImage']").count() - 2
    page.goto(f"{url}/segment")
    try:
        page.get_by_text("Against the ground truth").wait_for()
    except Exception:
        page.screenshot(path=str(LOG.with_suffix(".png")), full_page=True)
        raise
    time.sleep(2)
    b.close()
done = True
time.sleep(0.2)
cuda_kb = 0  # resident pages of CUDA libraries, which a CPU-only torch wheel does not load
with open(f"/proc/{proc.pid}/smaps") as f:
    path = ""
    for line in f:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            path = head[5] if len(head) > 5 else ""
        elif head and head[0] == "Rss:" and any(k in path for k in ("cuda", "nvidia", "cudnn", "cublas", "nccl")):
            cuda_kb += int(head[1])
torch_mapped = "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
server.close()
LOG.with_suffix(".timeline.csv").write_text("s,rss_mb\n" + "".join(f"{t},{r}\n" for t, r in timeline))
print(f"server RSS: {idle / 2**20:.0f} MB after start (anonymous {idle_anon / 2**20:.0f} MB), peak "
      f"{peak / 2**20:.0f} MB (anonymous {peak_anon / 2**20:.0f} MB) with {n_models} models loaded and run "
      f"once each (Compare) plus one Segment inference; at the end {cuda_kb / 1024:.0f} MB of the RSS were "
      f"pages of CUDA libraries; libtorch mapped into the server: {torch_mapped}")
