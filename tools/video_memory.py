"""A clip in the browser: the server's RSS while the Video page processes it, and how fast a
second session is served meanwhile.

    python tools/video_memory.py --make-clip clip.mp4      # 60 s of 1280x720 at 30 fps from CamVid frames
    python tools/video_memory.py --clip clip.mp4 [--stride 1] [--json]

Starts `streamlit run` on 127.0.0.1 with a fresh data folder (app_load.Server), opens the Video page in Chromium and
notes the server's RSS (psutil, every 200 ms) before the upload; uploads the clip, starts it
with the page's defaults, and samples the server's RSS (the worker process separately) until the
overlay plays. Meanwhile a second browser session opens the Segment page on a sample frame, again
and again: its time to a segmented frame is compared with the same before the clip started.
"""
from __future__ import annotations

import argparse
import atexit
import json
import statistics
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAMVID = ROOT.parent / "shared" / "camvid"


def make_clip(out: Path, seconds: int = 60, fps: int = 30, size=(720, 1280)) -> None:
    """CamVid train frames (cropped to 16:9, scaled to ``size``), each held for 3 frames, as H.264."""
    import av
    import numpy as np
    from PIL import Image
    frames = sorted((CAMVID / "train").glob("*.png")) or sorted((ROOT / "assets" / "samples").glob("*.jpg"))
    with av.open(str(out), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for i in range(seconds * fps):
            im = Image.open(frames[(i // 3) % len(frames)]).convert("RGB")
            w, h = im.size
            crop = im.crop((0, (h - w * 9 // 16) // 2, w, (h + w * 9 // 16) // 2)).resize(size[::-1], Image.BILINEAR)
            for p in s.encode(av.VideoFrame.from_ndarray(np.asarray(crop), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    print(f"wrote {out}: {seconds} s of {size[1]}x{size[0]} at {fps} fps, {out.stat().st_size / 2**20:.1f} MB")


def segment_once(browser, url: str) -> float:
    """Seconds from opening the Segment page in a new session to its segmented sample frame."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.set_default_timeout(300_000)
    t = time.time()
    page.goto(f"{url}/segment")
    page.get_by_text("Against the ground truth").wait_for()
    dt = time.time() - t
    ctx.close()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--make-clip", help="write the 60-s 720p test clip here and stop")
    ap.add_argument("--clip", help="the clip to upload")
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--every", type=float, default=15.0, help="seconds between the second session's visits "
                    "(0: none; each visit is a new session whose result stays in the server until it expires)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.make_clip:
        make_clip(Path(a.make_clip))
        return 0
    import psutil
    from playwright.sync_api import sync_playwright
    clip = Path(a.clip)
    from app_load import Server  # the same server start and health wait as the load test
    app = Server(Path(tempfile.mkdtemp()), memory_mb=None)
    atexit.register(app.close)
    app.wait_healthy()
    url, log = app.url, app.log
    server = psutil.Process(app.proc.pid)
    peak = {"server": 0, "worker": 0}
    sampling = threading.Event()
    timeline, t_start = [], time.time()  # (s, server RSS MB, what happened then), written beside the log

    def mark(what: str) -> None:
        timeline.append((round(time.time() - t_start, 1), server.memory_info().rss >> 20, what))

    def sample():
        while True:
            if sampling.is_set():
                rss = server.memory_info().rss
                if rss > peak["server"] and (rss - peak["server"]) >> 20 >= 5:
                    timeline.append((round(time.time() - t_start, 1), rss >> 20, ""))
                peak["server"] = max(peak["server"], rss)
                for ch in server.children(recursive=True):
                    try:
                        peak["worker"] = max(peak["worker"], ch.memory_info().rss)
                    except psutil.Error:
                        pass
            time.sleep(0.2)
    threading.Thread(target=sample, daemon=True).start()

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        idle_times = [segment_once(b, url) for _ in range(3)]  # the first also loads the engine
        page = b.new_page()
        page.set_default_timeout(900_000)
        page.goto(f"{url}/video")
        page.get_by_text("Segment the clip").wait_for()
        time.sleep(2)
        before = server.memory_info().rss
        sampling.set()
        mark("before the upload")
        page.get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").set_input_files(str(clip))
        page.get_by_text("Segmenting").wait_for()
        mark("uploaded and probed")
        if a.stride != 1:
            box = page.get_by_role("spinbutton", name="Segment every N-th frame")
            box.fill(str(a.stride))
            box.press("Enter")
            time.sleep(2)
        t0 = time.time()
        page.get_by_role("button", name="Segment the clip").click()
        mark("started")
        busy_times, last_visit = [], time.time()
        while page.locator("video").count() == 0:
            if page.get_by_text("Not started").count() or page.locator("[data-testid='stAlertContentError']").count():
                raise SystemExit("the page refused the clip: " + page.inner_text("[data-testid='stMain']")[-500:])
            if a.every and time.time() - last_visit >= a.every:
                busy_times.append(segment_once(b, url))
                last_visit = time.time()
                mark("second session served")
            time.sleep(0.5)
        wall = time.time() - t0
        mark("overlay shown")
        page.wait_for_timeout(2000)
        mark("result page settled")
        sampling.clear()
        frames = page.locator("[data-testid='stMetricValue']").first.inner_text()
        b.close()
    app.close()
    log.with_suffix(".timeline.csv").write_text("s,server_rss_mb,event\n" + "".join(f"{t},{r},{e}\n" for t, r, e in timeline))
    out = {"clip": clip.name, "clip_mb": round(clip.stat().st_size / 2**20, 1), "stride": a.stride,
           "server_rss_before_upload_mb": round(before / 2**20), "server_peak_mb": round(peak["server"] / 2**20),
           "server_peak_above_before_mb": round((peak["server"] - before) / 2**20),
           "worker_peak_mb": round(peak["worker"] / 2**20), "frames": frames, "wall_s": round(wall, 1),
           "second_session_idle_s": [round(t, 2) for t in idle_times],
           "second_session_busy_s": [round(t, 2) for t in busy_times],
           "second_session_busy_median_s": round(statistics.median(busy_times), 2) if busy_times else None}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
