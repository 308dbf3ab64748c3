"""What the page tests share: an app run on a page, uploads, waiting for a job."""
import io

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from sis.studio import ui  # noqa: E402


def _app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    if page:
        at.switch_page(page)
        at.run()
    assert not at.exception, at.exception
    return at


def _select_run(at):
    at.selectbox(key="seg_model").set_value("run:tiny").run()


def _upload(at, name, data, mime="image/png"):
    at.radio(key="seg_source").set_value("Upload").run()
    at.file_uploader(key="seg_upload").upload(name, data, mime).run()
    return at


def _png(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr, **kw).save(buf, "PNG")
    return buf.getvalue()


def _unsure_of_everything(folder):
    """A card whose unfamiliar-photo threshold no photo reaches (a mean confidence of 100%)."""
    from sis import zoo
    zoo.update_card(folder, calibration={"temperature": 1.0, "low_confidence": 1.0, "low_percentile": 5})


def _wait_for_jobs(timeout=240):
    import time

    manager = ui.startup()
    t = time.time()
    while any(j.active for j in manager.jobs.values()) and time.time() - t < timeout:
        for j in list(manager.jobs.values()):
            manager.poll(j.id)
        time.sleep(0.3)
    return manager


def _run_job_from_page(at, button: str, kind: str):
    """Press ``button``; the job of ``kind`` it starts runs in a worker process to its end; the page's next
    run shows the result. Returns the job manager."""
    import os
    at.button(key=button).click().run()
    assert not at.exception, at.exception
    manager = _wait_for_jobs()
    (job,) = manager.jobs.values()
    assert job.kind == kind and job.process.pid != os.getpid() and job.status == "done", job.message
    at.run()  # the page's next poll shows the result
    assert not at.exception, at.exception
    return manager


def _jpeg(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _exif_portrait():
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(Image.new("RGB", (80, 40), (90, 90, 90)), exif=exif.tobytes())


def _clip_bytes(kind: str) -> bytes:
    import tempfile
    from pathlib import Path

    import av
    from conftest import clip_frames, write_clip
    with tempfile.TemporaryDirectory() as d:
        if kind == "audio":
            with av.open(str(Path(d) / "a.mp4"), "w") as c:
                s = c.add_stream("aac", rate=8000)
                frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                frame.sample_rate = 8000
                for p in [*s.encode(frame), *s.encode()]:
                    c.mux(p)
            return (Path(d) / "a.mp4").read_bytes()
        data = write_clip(Path(d) / "c.mp4", clip_frames(20)).read_bytes()
        return data[: len(data) // 3]  # truncated


def _draft(at):
    """The draft the Correct page shows (the session's most recent)."""
    return list(at.session_state["_drafts"].values())[-1]
