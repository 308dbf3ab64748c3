"""Street video (sis/video/) on tiny clips that PyAV writes in the test."""
from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, clip_frames, in_process, write_clip
from PIL import Image

from sis import engines, zoo
from sis.engines.predict import predict
from sis.video.clips import VideoError, iter_frames, probe
from sis.video.segment import plan, segment_video

av = pytest.importorskip("av")


class Const:
    """An engine answering fixed logits: class ``k`` everywhere, or classes alternating per call."""
    name = "const"
    temperature = 1.0

    def __init__(self, seq: list[int]):
        self.seq, self.n, self.cfg = seq, 0, zoo.make_config("pspnet-resnet18")

    def prepare(self, size):
        pass

    def __call__(self, images):
        k = self.seq[self.n % len(self.seq)]
        self.n += 1
        out = np.zeros((len(images), 11, *images.shape[-2:]), np.float32)
        out[:, k] = 5.0
        return out


def test_frame_count_rate_and_stride(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", clip_frames(9), fps=10)
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.frames) == (64, 48, 10.0, 9)
    assert [i for i, _ in iter_frames(clip, stride=3)] == [0, 3, 6]
    res = segment_video(Const([0]), clip, tmp_path / "o.mp4", stride=3, labels_dir=tmp_path / "l")
    assert res.frames == 3 and res.fps_in == 10 and res.fps_out == pytest.approx(10 / 3) and res.indices == [0, 3, 6]
    out = probe(tmp_path / "o.mp4")
    assert out.frames == 3 and out.fps == pytest.approx(10 / 3, rel=0.01)
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and c.streams.video[0].codec_context.pix_fmt == "yuv420p"
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == ["000000.png", "000003.png", "000006.png"]


def test_labels_equal_the_photo_path_for_the_same_frames(tmp_path, tiny_model):
    engine = engines.load_engine(tiny_model, "eager")
    clip = write_clip(tmp_path / "c.mp4", clip_frames(4, 64, 96, seed=1))
    segment_video(engine, clip, None, labels_dir=tmp_path / "l")
    for i, rgb in iter_frames(clip):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "l" / f"{i:06d}.png")), predict(engine, rgb).labels)


def test_smoothing_off_is_unsmoothed_and_flicker_is_counted_by_hand(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", clip_frames(5))
    steady = segment_video(Const([3]), clip)
    assert steady.flicker == 0.0 and steady.flicker_raw is None  # a constant answer never flickers
    flip = segment_video(Const([3, 4]), clip)
    assert flip.flicker == 1.0 and flip.flicker_per_class["Road"] == 1.0  # every pixel changes every frame
    half = segment_video(Const([3, 3, 4, 4]), clip)  # 3 3 4 4 3: changes at 2 of 4 transitions
    assert half.flicker == pytest.approx(0.5)
    smooth = segment_video(Const([3, 4]), clip, smooth=0.9, flow=False)  # EMA: class 3 (first) keeps the lead
    assert smooth.flicker_raw == 1.0 and smooth.flicker == 0.0
    assert smooth.agreement == pytest.approx(3 / 5)  # 3 3 3 3 3 against 3 4 3 4 3
    assert steady.agreement is None  # no smoothing, nothing to agree with


def test_smoothing_carries_nothing_across_frames_whose_motion_cannot_be_followed(tmp_path):
    """Five unrelated pictures (a cut at every frame): the flow's forward-backward check fails almost
    everywhere, so the smoothed labels are mostly each frame's own, where the plain average keeps the first."""
    clip = write_clip(tmp_path / "c.mp4", clip_frames(5))
    followed = segment_video(Const([3, 4]), clip, smooth=0.9)
    plain = segment_video(Const([3, 4]), clip, smooth=0.9, flow=False)
    assert followed.agreement > 0.8 and followed.flicker > 0.7  # the plain average: one class throughout
    assert plain.agreement == pytest.approx(0.6) and plain.flicker == 0.0


def test_stable_flicker_counts_only_where_the_truth_stays(tmp_path):
    frames = tmp_path / "frames"
    truth = tmp_path / "truth"
    frames.mkdir(), truth.mkdir()
    for i, f in enumerate(clip_frames(3, 36, 48)):
        Image.fromarray(f).save(frames / f"f{i}.png")
        lbl = np.full((36, 48), 3, np.uint8)
        lbl[:18] = 3 if i < 2 else 5  # the top half's truth changes at the second transition
        Image.fromarray(lbl, "L").save(truth / f"f{i}.png")
    res = segment_video(Const([3, 4]), frames, truth_dir=truth)
    # transition 1: truth all same, all pixels change (1.0); transition 2: bottom half same, changes: 1.0
    assert res.stable_flicker == 1.0 and res.miou is not None
    res = segment_video(Const([3, 3, 4]), frames, truth_dir=truth)
    # transition 1: no change on 1728 same pixels; transition 2: 864 same pixels, all change
    assert res.stable_flicker == pytest.approx(864 / (1728 + 864))
    assert res.truth_flicker == pytest.approx(864 / (2 * 1728))  # the truth's own change: the top half, once


@pytest.mark.parametrize("name,make,message", [
    ("photo.mp4", lambda p: Image.new("RGB", (8, 8)).save(p, "JPEG"), "is a still image, not a video"),
    ("notes.mp4", lambda p: p.write_text("hello"), "is not a video file FFmpeg can read"),
    ("missing.mp4", None, "file not found"),
])
def test_bad_inputs_say_why(tmp_path, name, make, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(VideoError, match=message):
        segment_video(Const([0]), path)


def test_truncated_and_audio_only_clips(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", clip_frames(20))
    data = clip.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoError):
        segment_video(Const([0]), tmp_path / "cut.mp4")
    with av.open(str(tmp_path / "a.m4a"), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    with pytest.raises(VideoError, match="has no video stream"):
        segment_video(Const([0]), tmp_path / "a.m4a")


def test_odd_sizes_encode(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", clip_frames(3, 48, 64))
    frames = tmp_path / "odd"
    frames.mkdir()
    for i, f in enumerate(clip_frames(3, 37, 51)):
        Image.fromarray(f).save(frames / f"{i}.png")
    res = segment_video(Const([1]), frames, tmp_path / "o.mp4")
    assert res.frames == 3 and (probe(tmp_path / "o.mp4").width, probe(tmp_path / "o.mp4").height) == (50, 36)
    assert probe(clip).frames == 3


@pytest.mark.slow
def test_cli_video_json(tmp_path, tiny_model, capsys):
    clip = write_clip(tmp_path / "c.mp4", clip_frames(4, 64, 96))
    r = in_process(capsys, "video", clip, "--model", tiny_model, "--out", tmp_path / "o.mp4", "--smooth", "0.5", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"frames", "fps_in", "fps_out", "seconds", "frames_per_s", "flicker", "flicker_raw"} <= res.keys()
    assert res["frames"] == 4 and 0 <= res["flicker"] <= 1 and res["frames_per_s"] > 0
    bad = subprocess.run([sys.executable, "-m", "sis", "video", str(tmp_path / "nope.mp4"), "--model", str(tiny_model)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: nope.mp4: file not found"


def test_the_shipped_sample_clip():
    """assets/samples/0016E5_val.mp4: CamVid's val sequence at 15 fps, small enough to ship."""
    clip = ROOT / "assets" / "samples" / "0016E5_val.mp4"
    info = probe(clip)
    assert (info.width, info.height, info.frames, info.fps) == (480, 360, 101, 15.0) and clip.stat().st_size < 2e6
    res = segment_video(engines.load_engine(zoo.shipped_models()["pspnet-resnet18"]), clip, stride=25)
    assert res.frames == 5 and res.indices == [0, 25, 50, 75, 100] and 0 < res.flicker < 0.5


class ByColour(Const):
    """An engine that reads the picture: class 1 where the red channel is bright, else class 0."""

    def __call__(self, images):
        out = np.zeros((len(images), 11, *images.shape[-2:]), np.float32)
        bright = images[:, 0] > 127
        out[:, 1], out[:, 0] = 5.0 * bright, 5.0 * ~bright
        return out


def test_smoothing_follows_the_motion(tmp_path):
    """A textured picture sliding 3 px a frame: the flow-guided average stays on the picture (its labels
    match each frame's own answer), the plain average trails behind it."""
    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 256, (12, 24, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 96x192, 8-px blocks
    clip = tmp_path / "slide"
    clip.mkdir()
    for i in range(8):
        Image.fromarray(np.ascontiguousarray(base[:, 40 - 3 * i: 168 - 3 * i])).save(clip / f"{i:02d}.png")

    def labels(name, **kw):
        segment_video(ByColour([0]), clip, labels_dir=tmp_path / name, **kw)
        return [np.asarray(Image.open(f)) for f in sorted((tmp_path / name).glob("*.png"))]
    raw, plain, flow = labels("raw"), labels("plain", smooth=0.8, flow=False), labels("flow", smooth=0.8)
    agree = {name: float(np.mean([(a == r)[:, 8:-8].mean() for a, r in zip(got[1:], raw[1:])]))
             for name, got in (("plain", plain), ("flow", flow))}
    assert agree["flow"] > 0.95 and agree["plain"] < 0.8, agree


def _write_rotated(path: Path, degrees: int) -> Path:
    """A landscape 64x48 clip whose top quarter is red, tagged to be shown turned by ``degrees`` (a phone clip)."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.set_display_rotation(degrees)
        for _ in range(3):
            f = np.zeros((48, 64, 3), np.uint8)
            f[:12] = (255, 0, 0)
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_a_phone_clip_is_turned_upright_and_its_mask_lines_up(tmp_path):
    """FFmpeg's display matrix turns the picture counterclockwise by its angle: the red top edge of the
    coded frame is the left edge of the upright one, and so is the predicted class."""
    clip = _write_rotated(tmp_path / "phone.mp4", 90)
    info = probe(clip)
    assert info.rotation == 90 and (info.width, info.height) == (64, 48)
    pl = plan(info, 1, None, (360, 480))
    assert pl.upright == (64, 48) and "48x64 at 10 fps" in pl.sentence() and "turned 90 degrees" in pl.sentence()
    idx, rgb = next(iter_frames(clip))
    assert rgb.shape == (64, 48, 3) and rgb[:, :10, 0].min() > 200 and rgb[:, 14:, 0].max() < 60
    segment_video(ByColour([0]), clip, tmp_path / "o.mp4", labels_dir=tmp_path / "labels")
    labels = np.asarray(Image.open(tmp_path / "labels" / "000000.png"))
    assert labels.shape == (64, 48) and (labels[:, :10] == 1).all() and (labels[:, 14:] == 0).all()
    assert (probe(tmp_path / "o.mp4").width, probe(tmp_path / "o.mp4").height) == (48, 64)


def test_a_clip_without_frames_and_a_variable_frame_rate(tmp_path):
    with av.open(str(tmp_path / "empty.mp4"), "w") as c:  # a header and no frame
        s = c.add_stream("libx264", rate=Fraction(10))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.start_encoding()
    with pytest.raises(VideoError, match=r"empty.mp4 has no video stream \(an audio-only or empty file\)"):
        probe(tmp_path / "empty.mp4")
    with av.open(str(tmp_path / "vfr.mp4"), "w") as c:  # frames 40-300 ms apart
        s = c.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for f, t in zip(clip_frames(6), [0, 40, 80, 380, 420, 720]):
            frame = av.VideoFrame.from_ndarray(f, format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    res = segment_video(Const([2]), tmp_path / "vfr.mp4", tmp_path / "o.mp4")
    assert res.frames == 6 and res.fps_in > 0 and probe(tmp_path / "o.mp4").frames == 6


def test_the_plan_of_a_4k_clip_caps_work_output_and_length():
    from sis.video.clips import VideoInfo
    pl = plan(VideoInfo(30.0, 3840, 2160, 30 * 120, 120.0), 2, 60.0, (360, 480))
    assert pl.read == 1800 and pl.frames == 900 and pl.cut and pl.out == (720, 1280)
    assert pl.work[0] * pl.work[1] == pytest.approx(360 * 480, rel=0.01)
    assert pl.sentence() == ("3840x2160 at 30 fps, 120.0 s (3600 frames). Only the first 60 s are processed (the cap). "
                             f"Segmenting 1 frame in 2: 900 frames, each at {pl.work[1]}x{pl.work[0]}; "
                             "the overlay is written at 1280x720.")
