"""Many browser sessions uploading a photo each to Segment at once, against a fresh app server.

    python tools/app_load.py [--sessions 10] [--memory-mb 700] [--photos DIR] [--data-dir DIR]

Starts `streamlit run` on 127.0.0.1 (inside a cgroup v1 memory limit of ``--memory-mb`` when
given: a hosted instance simulated; needs root), waits for one session to segment a first
upload (cold start to first result), then opens ``--sessions`` Chromium sessions that each
upload a different photo to Segment at the same moment, and finally times one more upload in a
session that is already open (warm upload-to-result). Samples the server's RSS every 100 ms.

Prints one line per session and a summary; ``--json`` prints the summary as JSON: sessions
answered, exceptions on the pages, server peak RSS, whether the kernel OOM-killed the server,
whether libtorch was ever mapped into the server, the cold and warm times.
Photos: ``--photos`` (default ../shared/camvid/val, else assets/samples), resized per session to
a different size so that no two uploads are the same file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CG = Path("/sys/fs/cgroup/memory")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos(folder: Path, n: int, out: Path) -> list[Path]:
    """``n`` different JPEGs: real frames, each at a different size (no two uploads alike)."""
    src = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        im = Image.open(src[i % len(src)]).convert("RGB")
        scale = 1.0 + 0.25 * (i % 5)  # 480x360 up to 960x720: some need a resize to the work size
        im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
        path = out / f"photo_{i:02d}.jpg"
        im.save(path, quality=92)
        files.append(path)
    return files


class Server:
    """The app server, optionally in its own memory cgroup, with its RSS sampled."""

    def __init__(self, data_dir: Path, memory_mb: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir / "server.log"
        self.cgroup = None
        cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(self.port),
               "--server.address", "127.0.0.1", "--server.headless", "true"]
        if memory_mb:
            self.cgroup = CG / f"sis-load-{os.getpid()}"
            self.cgroup.mkdir()
            (self.cgroup / "memory.limit_in_bytes").write_text(str(memory_mb * 2**20))
            try:
                (self.cgroup / "memory.memsw.limit_in_bytes").write_text(str(memory_mb * 2**20))  # no swap way out
            except OSError:
                pass
            # the shell joins the cgroup, then becomes the server: every allocation is counted
            cmd = ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *cmd]
        env = dict(os.environ, SIS_DATA_DIR=str(data_dir), SIS_OFFLINE="1")
        self.t0 = time.time()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        self.peak = 0
        self.torch_mapped = False
        self._stop = False
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        p = psutil.Process(self.proc.pid)
        n = 0
        while not self._stop:
            try:
                self.peak = max(self.peak, p.memory_info().rss)
                if n % 10 == 0 and not self.torch_mapped:
                    self.torch_mapped = any("libtorch" in m.path for m in p.memory_maps())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return
            n += 1
            time.sleep(0.1)

    def wait_healthy(self, timeout=120) -> float:
        for _ in range(timeout * 2):
            try:
                if urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1).read() == b"ok":
                    return time.time() - self.t0
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the server did not start: " + self.log.read_text()[-2000:])

    def oom_killed(self) -> bool:
        if self.cgroup is None:
            return False
        fields = dict(line.split() for line in (self.cgroup / "memory.oom_control").read_text().splitlines())
        return int(fields.get("oom_kill", 0)) > 0

    def close(self):
        self._stop = True
        alive = self.proc.poll() is None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if self.cgroup is not None:
            for _ in range(20):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.2)
        return alive


async def idle(page, timeout_s: float) -> None:
    """Until the script run has finished (Streamlit's 'Running' indicator is gone)."""
    await page.wait_for_timeout(300)
    await page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                                 timeout=timeout_s * 1000)


async def upload(browser, url: str, photo: Path, timeout_s: float) -> dict:
    """One session: open Segment, upload ``photo``, wait for its result. Times the upload to the result."""
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1800})
    page = await ctx.new_page()
    page.set_default_timeout(timeout_s * 1000)
    out = {"photo": photo.name, "ok": False}
    try:
        await page.goto(f"{url}/segment")
        await page.get_by_text("Against the ground truth").wait_for()  # the page's own sample is shown
        await page.get_by_text("Upload", exact=True).click()
        await page.locator("input[type=file]").wait_for(state="attached")
        await idle(page, timeout_s)  # as a person would: the page has settled before they pick a photo
        t = time.perf_counter()
        await page.locator("input[type=file]").set_input_files(str(photo))
        w, h = Image.open(photo).size
        await page.get_by_text(f"Original {w}x{h}", exact=True).wait_for()  # this photo's result is shown
        caption = page.get_by_text(re.compile(r"^Inference \d+ ms")).first
        await caption.wait_for()
        out["s"] = round(time.perf_counter() - t, 2)
        out["caption"] = (await caption.inner_text())[:120]
        out["exception"] = await page.locator("[data-testid='stException']").count() > 0
        out["ok"] = not out["exception"]
    except Exception as e:  # a session that never got its result counts as unanswered
        out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    out["page"] = page
    out["ctx"] = ctx
    return out


async def run(a) -> dict:
    from playwright.async_api import async_playwright
    work = Path(tempfile.mkdtemp(prefix="sis-load-"))
    data = Path(a.data_dir) if a.data_dir else work / "data"
    data.mkdir(parents=True, exist_ok=True)
    pics = photos(Path(a.photos), a.sessions + 2, work / "photos")
    server = Server(data, a.memory_mb)
    res: dict = {"sessions": a.sessions, "memory_mb": a.memory_mb}
    try:
        res["healthy_s"] = round(server.wait_healthy(), 1)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            first = await upload(browser, server.url, pics[0], a.timeout)
            res["cold_first_result_s"] = round(time.time() - server.t0, 1)
            res["cold_upload_s"] = first.get("s")
            await first["ctx"].close()
            t = time.perf_counter()
            runs = await asyncio.gather(*(upload(browser, server.url, p, a.timeout) for p in pics[1:a.sessions + 1]))
            res["concurrent_wall_s"] = round(time.perf_counter() - t, 1)
            for r in runs:
                print(f"  {r['photo']}: {'ok' if r['ok'] else 'FAILED'} {r.get('s', '-')} s "
                      f"{r.get('caption') or r.get('error', '')}", file=sys.stderr)
            res["answered"] = sum(r["ok"] for r in runs)
            res["exceptions"] = sum(bool(r.get("exception")) for r in runs)
            res["upload_s"] = sorted(r["s"] for r in runs if r["ok"])
            for r in runs:  # the ten sessions end (tabs closed) before the warm uploads are timed
                await r["ctx"].close()
            # warm: the graphs are built; a new session uploads a photo, one after another
            warm = []
            for p in pics[a.sessions + 1:a.sessions + 2] + pics[1:3]:
                r = await upload(browser, server.url, p, a.timeout)
                warm.append(r.get("s"))
                await r["ctx"].close()
            res["warm_upload_s"] = warm
            await browser.close()
    finally:
        res["oom_killed"] = server.oom_killed()
        res["server_alive"] = server.close()
        res["peak_rss_mb"] = round(server.peak / 2**20)
        res["libtorch_mapped"] = server.torch_mapped
        res["log_tail"] = server.log.read_text()[-600:] if not res.get("answered") else ""
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--memory-mb", type=int, help="run the server in a cgroup v1 memory limit (root)")
    default = ROOT.parent / "shared" / "camvid" / "val"
    ap.add_argument("--photos", default=str(default if default.is_dir() else ROOT / "assets" / "samples"))
    ap.add_argument("--data-dir", help="the app's data folder (default: a fresh one, as on a first start)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds a session waits for its result")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = asyncio.run(run(a))
    print(json.dumps(out) if a.json else
          f"{out.get('answered', 0)}/{a.sessions} sessions answered ({out.get('exceptions', 0)} page exceptions), "
          f"server peak RSS {out['peak_rss_mb']} MB"
          + (f" in a {a.memory_mb} MB cgroup, OOM-killed: {out['oom_killed']}" if a.memory_mb else "")
          + f", libtorch mapped: {out['libtorch_mapped']}; cold start to first result {out.get('cold_first_result_s')} s,"
          f" concurrent uploads {out.get('upload_s')} s, warm upload {out.get('warm_upload_s')} s")
