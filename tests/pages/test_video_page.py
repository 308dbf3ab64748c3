"""Video (AppTest): a clip in a worker and bad clips."""
from pathlib import Path

import numpy as np
import pytest
from apptest import _app, _clip_bytes, _png, _run_job_from_page, _unsure_of_everything


@pytest.mark.slow
def test_video_page_segments_the_sample_clip_in_a_worker(app_env):
    """Sample clip, 1 frame in 25: the plan is said before the run; the result shows the overlay, the
    frame count, flicker, the class shares over time and both downloads."""
    import zipfile
    from pathlib import Path
    at = _app("pages/video.py")
    at.selectbox(key="vid_model").set_value("run:tiny").run()
    at.number_input(key="vid_stride").set_value(25).run()
    assert at.info[0].value.startswith("480x360 at 15 fps, 6.7 s (101 frames). Segmenting 1 frame in 25: 5 frames")
    manager = _run_job_from_page(at, "vid_run", "video")
    assert at.metric[0].label == "Frames segmented" and at.metric[0].value == "5"
    assert at.metric[2].label == "Flicker" and at.metric[2].value.endswith("%")
    assert not [w for w in at.warning if "is unsure of this" in w.value]
    _unsure_of_everything(app_env / "models" / "tiny")
    at.run()
    said = [w.value for w in at.warning if "is unsure of this" in w.value]
    assert len(said) == 1 and said[0].startswith("run:tiny is unsure of this clip: "), said
    assert said[0].endswith("adapting to this clip (Adapt, no labels needed) may help.") and "Accurate" not in said[0]
    assert len(at.get("video")) == 1 and len(at.get("plotly_chart")) == 1 and len(at.get("download_button")) == 2
    out = Path(at.session_state["vid_last"][1])
    with zipfile.ZipFile(out / "labels.zip") as z:
        assert [n for n in z.namelist()] == [f"labels/{i:06d}.png" for i in (0, 25, 50, 75, 100)]
    manager.jobs.clear()


@pytest.mark.parametrize("name,make,message", [
    ("photo.mp4", lambda: _png(np.zeros((8, 8, 3), np.uint8)), "photo.mp4 is a still image, not a video"),
    ("notes.mov", lambda: b"hello, not a clip", "notes.mov is not a video file FFmpeg can read"),
    ("song.mp4", lambda: _clip_bytes("audio"), "song.mp4 has no video stream"),
    ("cut.mp4", lambda: _clip_bytes("cut"), "cut.mp4 is not a video file FFmpeg can read"),
])
def test_video_bad_uploads_show_one_sentence(app_env, name, make, message):
    at = _app("pages/video.py")
    at.radio(key="vid_source").set_value("Upload").run()
    at.file_uploader(key="vid_upload").upload(name, make(), "video/mp4").run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(message), [e.value for e in at.error]
    assert not at.button and not list((app_env / "uploads").glob("*"))  # nothing to start, nothing kept


def test_video_keeps_an_uploaded_clip_across_a_switch_of_source(app_env, tmp_path, monkeypatch):
    from conftest import clip_frames, write_clip

    from sis import video
    clip = write_clip(tmp_path / "drive.mp4", clip_frames(6, 48, 64))
    probed = []
    real_probe = video.probe
    monkeypatch.setattr(video, "probe", lambda p: probed.append(Path(p).name) or real_probe(p))
    at = _app("pages/video.py")
    at.radio(key="vid_source").set_value("Upload").run()
    at.file_uploader(key="vid_upload").upload("drive.mp4", clip.read_bytes(), "video/mp4").run()
    at.radio(key="vid_source").set_value("Sample clip").run()
    assert not at.info[0].value.startswith("64x48")
    at.radio(key="vid_source").set_value("Upload").run()
    at.file_uploader(key="vid_upload").clear().run()  # a browser's uploader comes back empty (AppTest keeps it)
    assert not at.exception and at.info[0].value.startswith("64x48 at 10 fps"), [i.value for i in at.info]
    assert any(c.value.startswith("Still here from before: the clip you uploaded") for c in at.caption)
    at.run()
    assert len(probed) == len(set(probed)), probed  # each clip is probed once per session, not on every rerun
    at.button(key="vid_upload:clear").click().run()
    assert at.info[0].value.startswith("Upload a clip")
