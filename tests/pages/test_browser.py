"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run`.

Screenshots of every page land in artifacts/screenshots/ (look at them).
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REAL_CAMVID, ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"
pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI needs Debian's chromium for the browser tests: apt-get install -y chromium")
    pytest.skip("no /usr/bin/chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    data = tmp_path_factory.mktemp("appdata")
    shutil.copytree(tiny_model, data / "models" / "tiny", ignore=shutil.ignore_patterns("checkpoint"))
    port = _free_port()
    env = dict(os.environ, SIS_DATA_DIR=str(data), SIS_OFFLINE="1")
    log = open(data / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start: " + (data / "server.log").read_text()[-2000:])
    os.environ["SIS_BROWSER_DATA"] = str(data)
    yield url
    proc.terminate()
    assert proc.wait(timeout=20) in (0, -15), (data / "server.log").read_text()[-2000:]  # it stopped on SIGTERM
    noise = [line for line in (data / "server.log").read_text().splitlines()
             if "missing ScriptRunContext" in line or "already registered" in line or "bare mode" in line]
    assert not noise, noise[:3]  # workers do not run the page again; the canvas is registered quietly


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])  # a test pattern as the camera
        yield b
        b.close()


def _page(browser, url, path="", height=2000):
    ctx = browser.new_context(viewport={"width": 1400, "height": height})  # the app scrolls inside: tall enough
    page = ctx.new_page()
    _RECEIVED[page] = 0
    page.on("websocket", lambda ws: ws.on("framereceived", lambda _: _RECEIVED.__setitem__(page, _RECEIVED[page] + 1)))
    page.set_default_timeout(120_000)
    page.goto(f"{url}/{path}")
    page.wait_for_selector("[data-testid='stApp']")
    return page


_RECEIVED = {}  # per page: the messages its session has received from the server


def _left_alone(page, seconds: float = 3.0) -> int:
    """How many messages the server sends ``page`` while nobody touches it for ``seconds``."""
    before = _RECEIVED[page]
    page.wait_for_timeout(1000 * seconds)
    return _RECEIVED[page] - before


def _idle(page):
    """Wait until the script run finished (the status widget's 'Running' indicator is gone)."""
    page.wait_for_timeout(500)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    # lazily loaded widgets (selects, tables, charts) show skeletons first
    page.wait_for_function("() => !document.querySelector('[data-testid^=\"stSkeleton\"]')", timeout=60_000)
    page.wait_for_timeout(500)


def _shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _frame() -> Path:
    real = REAL_CAMVID / "val" / "0016E5_07959.png"
    return real if real.exists() else ROOT / "assets" / "samples" / "0016E5_07959.jpg"


def test_home_and_navigation(server, browser):
    page = _page(browser, server)
    page.get_by_text("Model zoo").wait_for()
    _idle(page)
    _shot(page, "home")
    page.get_by_role("link", name="Compare").first.click()
    page.get_by_text("Dashboard").wait_for()
    _idle(page)
    _shot(page, "compare")


def test_segment_upload_real_frame(server, browser):
    page = _page(browser, server, "segment")
    page.get_by_text("Upload", exact=True).click()
    page.locator("input[type=file]").set_input_files(str(_frame()))
    page.get_by_text("Overlay", exact=True).wait_for()
    page.get_by_text("Pixel share per class").wait_for()
    _idle(page)
    legend = page.locator(".sis-legend").inner_text()
    assert "Road" in legend and "Sky" in legend
    page.get_by_text("on onnxruntime-int8").wait_for()  # the fast path is the default engine
    assert page.locator("[data-testid='stImage'] img").count() >= 4
    _shot(page, "segment")
    page.get_by_text("Sample frames", exact=True).click()  # a look at the samples, then back: the photo stays
    page.get_by_text("CamVid val frame (with ground truth)").wait_for()
    _idle(page)
    page.get_by_text("Upload", exact=True).click()
    # kept by the page's own copy, or, where the click's rerun came soon enough, still in the uploader itself
    kept = page.get_by_text(f"Still here from before: {_frame().name}").or_(
        page.locator("[data-testid='stFileUploader']").get_by_text(_frame().name, exact=True))
    kept.first.wait_for()
    page.get_by_text("on onnxruntime-int8").wait_for()
    _idle(page)
    _shot(page, "segment_kept_upload")


def test_links_keep_their_context_and_segment_names_its_downloads(server, browser):
    """Home's 'Segment your photos' opens Segment on Upload; an upload's downloads are named after it;
    unticking classes unpaints them in the mask as well as in the overlay."""
    page = _page(browser, server)
    page.get_by_text("Model zoo").wait_for()
    _idle(page)
    page.get_by_role("link", name="Segment your photos").click()
    page.locator("input[type=file]").wait_for(state="attached")
    assert page.get_by_role("radio", name="Upload").is_checked()
    page.locator("input[type=file]").set_input_files(str(_frame()))
    page.get_by_text("Overlay", exact=True).wait_for()
    _idle(page)
    with page.expect_download() as got:
        page.get_by_role("button", name="Download coloured mask (PNG)").click()
    assert got.value.suggested_filename == f"{_frame().stem}_mask_color.png"
    mask = page.locator("[data-testid='stImage'] img").nth(1).get_attribute("src")
    page.locator("[data-testid='stMultiSelect'] input").click()
    page.keyboard.press("Backspace")  # untick the last class (Bicyclist)
    page.keyboard.press("Escape")
    _idle(page)
    assert page.locator("[data-testid='stImage'] img").nth(1).get_attribute("src") != mask
    _shot(page, "segment_upload_link")


def test_segment_sample_ground_truth(server, browser):
    page = _page(browser, server, "segment")
    page.get_by_text("Against the ground truth").wait_for()
    _idle(page)
    _shot(page, "segment_sample")


def test_benchmark_tiny(server, browser):
    page = _page(browser, server, "benchmark")
    page.get_by_text("Run benchmark").wait_for()
    page.get_by_label("Timed steps").fill("1")
    page.get_by_label("Warm-up steps").fill("0")
    page.get_by_text("Run benchmark").click()
    page.get_by_text("This run", exact=True).wait_for()
    page.get_by_role("button", name="Download CSV").wait_for()
    assert page.locator(".js-plotly-plot").count() == 0  # one model: its table row says it all, no one-bar charts
    page.get_by_label("Timed rounds").fill("2")
    # the cheapest shipped model: the page's flow is the same for each
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="pspnet-resnet18", exact=True).click()
    page.get_by_role("button", name="Compare engines").click()
    page.get_by_text("ms per image (lower is better)").wait_for()
    _idle(page)
    page.get_by_text(re.compile(r"^pspnet-resnet18 at 360x480")).first.wait_for()
    _shot(page, "benchmark")


def _start_finetune(page, data, steps):
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="a folder on this server (typed below)").click()
    page.get_by_role("textbox", name="Folder on this server (SegNet layout)").fill(str(data))
    page.get_by_label("How many").fill(str(steps))
    page.get_by_role("button", name="Start").click()


def test_finetune_live_curve_while_another_session_segments(server, browser, tiny_data):
    page = _page(browser, server, "finetune")
    page.get_by_role("button", name="Start").wait_for()
    _idle(page)
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="run:tiny").click()  # the cheapest model to step: the curve moves sooner
    _start_finetune(page, tiny_data, 1000)  # stopped below, once the curve moved
    try:
        _live_curve_then_second_session(page, browser, server)
    finally:  # a job left running would hold the server's one job slot and refuse the Video test's clip
        stop = page.get_by_role("button", name="Stop")
        if stop.count():
            stop.click()
        page.get_by_text(re.compile(r"Run (stopped|done) after")).wait_for()
    _idle(page)  # the page reruns once when the run ends: the runs table shows how it ended
    _shot(page, "finetune_done")


def _live_curve_then_second_session(page, browser, server):
    page.locator(".js-plotly-plot").first.wait_for()  # the live curve appears...
    first = int(re.search(r"step (\d+)", page.get_by_text(re.compile(r"running: step \d+")).inner_text())[1])
    # ...and moves (a step of the default model on full frames takes seconds on a slow CPU: wait for it)
    page.wait_for_function("""first => { const m = document.body.innerText.match(/(running|done|stopped): step (\\d+)/);
                                         return m && Number(m[2]) > first; }""", arg=first, timeout=120_000)
    _shot(page, "finetune")

    # a second session segments while the job trains: it stays responsive and right
    other = _page(browser, server, "segment")
    t0 = time.perf_counter()
    other.get_by_text("Against the ground truth").wait_for()
    latency = time.perf_counter() - t0
    text = other.get_by_text("Against the ground truth").inner_text()
    print(f"\nsecond session: segmented a sample in {latency:.1f} s while a fine-tune ran")
    shown = float(re.search(r"mIoU ([\d.]+)%", text)[1])
    assert latency < 90
    from PIL import Image

    from sis import engines
    from sis.data.dataset import read_label
    from sis.studio import catalog
    from sis.vis import report
    os.environ["SIS_DATA_DIR"] = os.environ["SIS_BROWSER_DATA"]  # the server's models and engine timings
    try:
        entries = catalog.available_models()
        folder = entries[catalog.default_key(entries)].folder
        # the page's engine: the policy's, which reads the comparison the Benchmark test may have kept
        engine = engines.load_engine(folder)
    finally:
        del os.environ["SIS_DATA_DIR"]
    sample = catalog.samples()[0]  # the page's first sample, on the page's engine
    ref = report.segment(engine, Image.open(sample.image).convert("RGB"), read_label(sample.label))
    assert shown == pytest.approx(100 * ref.scores["miou"], abs=0.051)


def test_video_sample_clip_plays(server, browser):
    """The Video page on the shipped clip (1 frame in 10, the tiny model): progress, then the overlay
    plays in Chromium (H.264 decodes, time advances), the class-share chart and both downloads show."""
    page = _page(browser, server, "video")
    page.get_by_role("button", name="Segment the clip").wait_for()
    page.get_by_role("spinbutton", name="Segment every N-th frame").fill("10")
    page.get_by_role("spinbutton", name="Segment every N-th frame").press("Enter")
    page.get_by_text("Segmenting 1 frame in 10: 11 frames").wait_for()
    _idle(page)
    page.get_by_role("button", name="Segment the clip").click()
    try:
        page.locator("video").wait_for(timeout=240_000)
    except sync_api.TimeoutError:
        pytest.fail("no video after 240 s; the page said: " + page.locator("body").inner_text()[-1500:])
    state = page.evaluate("""async () => {
        const v = document.querySelector('video'); v.muted = true;
        for (let i = 0; i < 100 && v.readyState < 2; i++) await new Promise(r => setTimeout(r, 100));
        await v.play();
        await new Promise(r => setTimeout(r, 1000));
        return {t: v.currentTime, w: v.videoWidth, h: v.videoHeight, err: v.error && v.error.code}; }""")
    assert state["err"] is None and state["t"] > 0 and (state["w"], state["h"]) == (480, 360), state
    page.get_by_text("Pixel share per class over time").wait_for()
    page.get_by_role("button", name="Overlay (mp4)").wait_for()
    page.get_by_role("button", name="Label PNGs (zip)").wait_for()
    _idle(page)
    _shot(page, "video")


def test_correct_a_mask_by_hand_and_save_it(server, browser):
    """The canvas in Chromium: a brush stroke changes pixels at once, Undo and Redo step over it, a click
    fills a whole region, Start over and Undo, and Save writes the corrected label into a dataset on the
    server. The canvas's own toolbar (a second undo) is hidden."""
    page = _page(browser, server, "correct")
    page.get_by_role("button", name="Save to my dataset").wait_for()
    _idle(page)
    changed = page.get_by_text("of the pixels changed")

    def share() -> float:
        return float(changed.inner_text().split("%")[0])

    def press(name: str) -> None:
        before = changed.inner_text().split("%")[0]
        page.get_by_role("button", name=name, exact=True).click()
        page.wait_for_function(f"() => !document.body.innerText.includes('{before}% of the pixels changed')")
        _idle(page)

    assert changed.inner_text().startswith("0.0%")
    assert page.get_by_role("button", name="Undo", exact=True).is_disabled()
    box = page.locator("canvas").last.bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 380)
    assert page.locator(".dc-toolbar").count() == 1 and page.locator(".dc-toolbar").is_hidden()
    page.mouse.down()
    page.mouse.move(box["x"] + 500, box["y"] + 400, steps=15)
    page.mouse.up()
    page.wait_for_function("() => !document.body.innerText.includes('0.0% of the pixels changed')")
    _idle(page)
    stroke = share()
    assert 0 < stroke < 5
    press("Undo")
    assert share() == 0
    press("Redo")
    assert share() == pytest.approx(stroke, abs=0.05)
    page.get_by_text("Fill a region").click()
    _idle(page)
    page.get_by_role("combobox", name="Class").click()
    page.get_by_role("option", name="Car", exact=True).click()
    _idle(page)
    box = page.locator("canvas").last.bounding_box()
    page.mouse.click(box["x"] + 200, box["y"] + 500)  # the road, near the bottom left
    page.wait_for_function(f"() => !document.body.innerText.includes('{changed.inner_text().split('%')[0]}% of')")
    _idle(page)
    filled = share()
    assert filled > stroke + 5, (stroke, filled)
    _shot(page, "correct")
    press("Undo")
    assert share() == pytest.approx(stroke, abs=0.05)
    press("Start over")
    assert share() == 0
    press("Undo")
    assert share() == pytest.approx(stroke, abs=0.05)
    page.get_by_role("button", name="Save to my dataset").click()
    page.get_by_text("Saved as").wait_for()
    data = Path(os.environ["SIS_BROWSER_DATA"]) / "datasets" / "my-street"
    assert len(list((data / "train").glob("*.png"))) == 1 == len(list((data / "trainannot").glob("*.png")))


def test_correct_a_camera_shot(server, browser):
    """The Camera source on Correct in Chromium, whose fake camera films a test pattern: a shot is taken,
    segmented, and shown on the canvas ready to correct."""
    page = _page(browser, server, "correct")
    page.get_by_role("button", name="Save to my dataset").wait_for()
    _idle(page)
    page.get_by_text("Camera", exact=True).click()
    page.get_by_role("button", name="Take Photo").wait_for()
    # the shot is taken from the live stream: wait until the camera plays
    page.wait_for_function("() => { const v = document.querySelector('video'); return v && v.readyState >= 2; }")
    page.get_by_role("button", name="Take Photo").click()
    page.get_by_text("of the pixels changed").wait_for()
    _idle(page)
    assert page.get_by_text("of the pixels changed").inner_text().startswith("0.0%")
    assert page.locator("canvas").count() >= 1
    _shot(page, "correct_camera")


def test_adapt_to_my_uploaded_photos_without_labels(server, browser):
    """Four photos of one street uploaded on Segment, one click: the model adapted to them in a worker,
    the page saying how many frames it saw, how much of the training city it kept, how many steps fitted it
    to them and where the new model is;
    the new model then in the picker."""
    page = _page(browser, server, "segment", height=2400)
    _idle(page)
    # a shipped model that adapts in less than half the default's time: the flow is the same for every model
    page.get_by_role("combobox", name="Model", exact=True).first.click()
    page.get_by_role("option", name=re.compile(r"^pspnet-resnet18 ")).click()
    _idle(page)
    page.get_by_text("Upload", exact=True).click()
    samples = sorted((ROOT / "assets" / "samples").glob("*[0-9].jpg"))[:4]
    page.locator("input[type=file]").set_input_files([str(f) for f in samples])
    page.get_by_text("Overlay", exact=True).first.wait_for()
    _idle(page)
    button = page.get_by_role("button", name=re.compile(r"^Adapt .* to these 4 photos \(no labels needed\)$"))
    button.click()
    said = page.get_by_text(re.compile(r"^Adapted on 4 frames in \d+ s, keeping 67% of the training city's statistics, "
                                       r"then 40 fitting steps: run:pspnet-resnet18-adapted-to-4-photos-\S+ is in every model picker"))
    try:
        said.wait_for(timeout=300_000)
    except sync_api.TimeoutError:
        _shot(page, "segment_adapt_timeout")
        pytest.fail("no adaptation after 300 s; the page said: " + page.locator("body").inner_text()[-2000:])
    _idle(page)
    new = re.search(r"run:(\S+-adapted-to-4-photos-\d{4}-\d{6})", said.inner_text()).group(1)
    assert _left_alone(page) == 0  # the job has ended: the page left open polls the server no more
    _shot(page, "segment_adapted")
    page.get_by_role("combobox", name="Model", exact=True).first.click()
    assert page.get_by_role("option", name=re.compile(re.escape(new))).count() == 1
    page.keyboard.press("Escape")
    page.get_by_role("button", name=f"Use run:{new} here").click()  # the photos segmented with it, one click on
    page.get_by_text(f"Now using run:{new}.", exact=False).wait_for()
    _idle(page)
    # its int8 graph passed the check against its start's on the adaptation frames: it runs where its start does
    page.get_by_text(re.compile(rf"^Inference \d+ ms on CPU at .* with run:{re.escape(new)} on onnxruntime-int8;"
                                )).wait_for()
    page.get_by_role("button", name=f"Use run:{new} here").wait_for(state="detached")
    # no labels to score its int8 graph on: the picker says whose figure it shows
    picked = page.get_by_role("combobox", name="Inference engine").input_value()
    assert re.search(r"onnxruntime-int8 \(.*mIoU, its start's figure\) — chosen here", picked), picked
    _shot(page, "segment_adapted_in_use")
    page.get_by_text(re.compile(r"^Show \S+, the model it was adapted from, beside it$")).click()
    page.get_by_text(re.compile(r"^Adapting changed the label of \d+\.\d% of this photo's pixels\.$")).wait_for()
    _idle(page)
    _shot(page, "segment_adapted_beside_original")


def test_adapt_a_model_on_my_frames_and_see_before_and_after(server, browser):
    """The loop's end in Chromium: three corrected frames in a dataset of the user's, a fine-tune from a
    model on them (replay of CamVid when the server has it), the before/after figures and masks, and the
    new model in Segment's picker."""
    import numpy as np
    from PIL import Image

    from sis.classes import CAMVID
    from sis.data import userdata
    from sis.data.dataset import read_label
    from sis.studio import catalog
    os.environ["SIS_DATA_DIR"] = os.environ["SIS_BROWSER_DATA"]
    try:
        for sample in catalog.samples()[:3]:
            userdata.save_frame("street-3", np.asarray(Image.open(sample.image).convert("RGB")), read_label(sample.label),
                                CAMVID, source=sample.name)
    finally:
        del os.environ["SIS_DATA_DIR"]
    page = _page(browser, server, "finetune", height=3400)
    page.get_by_role("button", name="Start").wait_for()
    _idle(page)
    page.get_by_role("combobox", name="Model", exact=True).click()
    page.get_by_role("option", name="run:tiny").click()
    page.get_by_role("combobox", name="Dataset").click()
    page.get_by_role("option", name="street-3 (3 frames, from the Correct page)").click()
    page.get_by_label("How many").fill("2")
    page.get_by_role("button", name="Start").click()
    page.get_by_text("Validation: none: the dataset has no val/ split and 3 frames").wait_for()
    # the heading, not the progress bar's "scoring the model before and after"
    page.get_by_role("heading", name="Before and after").wait_for(timeout=300_000)
    page.get_by_text("Training frames: your label, the model before, the model after.").wait_for()
    _idle(page)
    assert _left_alone(page) == 0  # the run has ended: the page left open polls the server no more
    if catalog.camvid_dir() is not None:
        forget = page.locator("p", has_text="val (what the model may forget)").inner_text()
        assert re.search(r"\(20 frames\): mIoU [\d.]+% before, [\d.]+% after \([+-][\d.]+ points\)", forget), forget
    page.wait_for_function("() => document.querySelectorAll(\"[data-testid='stImage'] img\").length >= 9")  # 3 x 3
    _shot(page, "finetune_before_after")
    segment = _page(browser, server, "segment")
    segment.get_by_text("Against the ground truth").wait_for()
    _idle(segment)
    segment.get_by_role("combobox", name="Model", exact=True).first.click()
    # the new model arrives with its before/after verdict beside its name (scored on CamVid val where the
    # server has CamVid: three frames hold none out of their own)
    verdict = r" · [+-][\d.]+ on " if catalog.camvid_dir() is not None else r""
    new = segment.get_by_role("option", name=re.compile(r"^pspnet-resnet18-ft-\S*" + verdict + r".* \(fine-tuned here\)$"))
    assert new.count() >= 1
    name = new.first.inner_text().split(" · ")[0].split(" (fine-tuned here)")[0]
    segment.keyboard.press("Escape")
    # and it can be removed on Fine-tune: gone from the pickers, its files gone
    page = _page(browser, server, "finetune", height=3400)
    page.get_by_role("heading", name="Models fine-tuned or adapted here").wait_for()
    _idle(page)
    page.get_by_role("combobox", name="Fine-tuned model").click()
    page.get_by_role("option", name=re.compile(f"^{re.escape(name)} ")).click()
    _idle(page)  # a click while the pick's rerun is still running can be lost on a slow host
    page.get_by_role("button", name="Remove it").click()
    page.get_by_text(f"Removed {name}").wait_for()
    _idle(page)
    assert not (Path(os.environ["SIS_BROWSER_DATA"]) / "models" / name).exists()
