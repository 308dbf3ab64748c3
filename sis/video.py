"""Street video: decode a clip, segment every N-th frame on an engine, smooth over time, measure
flicker, and write the overlay as an H.264 mp4 that browsers play. numpy, Pillow and PyAV only.

Frames stream through (decode -> segment -> encode), one at a time: a clip costs no more memory
than a photo. A folder of images counts as a clip too (frames in name order, ``fps`` given), which is
how the CamVid val sequence, whose ground truth is per frame, is measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from .engines.accurate import softmax
from .infer import class_share, overlay, resize_rgb, work_size

MAX_SECONDS = 60.0     # of input processed by default; a longer clip is cut there (said in the result)
MAX_PIXELS = 3840 * 2160  # a frame larger than 4K is refused: its decode alone would dwarf the model


class VideoError(ValueError):
    """A clip a user gave cannot be used; the message says why."""


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int | None   # from the container; None where it does not say
    seconds: float | None
    rotation: int = 0    # degrees the frames are turned for display (phone clips)


def _open(path: Path):
    import av
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise VideoError(f"{path.name}: file not found") from None
        raise VideoError(f"{path.name} is not a video file FFmpeg can read") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path.name} has no video stream (audio only?)")
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        container.close()  # FFmpeg reads a still image as a one-frame "video"
        raise VideoError(f"{path.name} is a still image, not a video; segment it on the Segment page or with predict")
    return container


def probe(path: Path) -> VideoInfo:
    """The clip's frame rate, size, length and rotation, from its header (nothing decoded)."""
    path = Path(path)
    if path.is_dir():
        frames = _image_files(path)
        w, h = Image.open(frames[0]).size
        return VideoInfo(15.0, w, h, len(frames), len(frames) / 15.0)
    with _open(path) as c:
        s = c.streams.video[0]
        fps = float(s.average_rate or s.guessed_rate or 0) or 25.0
        seconds = float(s.duration * s.time_base) if s.duration else (c.duration / 1e6 if c.duration else None)
        frames = s.frames or (round(seconds * fps) if seconds else None)
        rotation = 0
        try:  # display matrix side data: phone clips record their orientation there
            rotation = int(round(getattr(s.codec_context, "rotation", 0) or 0))
        except (AttributeError, ValueError):
            pass
        return VideoInfo(fps, s.codec_context.width, s.codec_context.height, frames, seconds, rotation % 360)


def _image_files(folder: Path) -> list[Path]:
    from .data import IMAGE_EXTS
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise VideoError(f"{folder} holds no images")
    return files


def iter_frames(path: Path, stride: int = 1, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index in the clip, (H, W, 3) uint8 RGB) of every ``stride``-th frame, turned upright."""
    path = Path(path)
    if path.is_dir():
        for i, f in enumerate(_image_files(path)):
            if max_frames is not None and i >= max_frames:
                return
            if i % stride == 0:
                yield i, np.asarray(Image.open(f).convert("RGB"))
        return
    import av
    with _open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        i = 0
        try:
            for frame in c.decode(stream):
                if max_frames is not None and i >= max_frames:
                    return
                if frame.width * frame.height > MAX_PIXELS:
                    raise VideoError(f"{path.name} is {frame.width}x{frame.height}, above 4K; downscale it first")
                if i % stride == 0:
                    rgb = frame.to_ndarray(format="rgb24")
                    turn = getattr(frame, "rotation", 0) or 0
                    if turn % 360:
                        rgb = np.rot90(rgb, k=round(turn / 90) % 4).copy()
                    yield i, rgb
                i += 1
        except av.error.FFmpegError:
            if i == 0:
                raise VideoError(f"{path.name} is truncated or corrupt: no frame could be decoded") from None
            # a clip cut short: what was decoded stands


@dataclass
class VideoResult:
    frames: int                # processed frames
    fps_in: float
    fps_out: float
    seconds: float             # of input covered by the processed frames
    wall_s: float
    frames_per_s: float        # processed frames / wall time, decode + segment + encode
    flicker: float             # share of pixels whose label changes between consecutive processed frames
    flicker_per_class: dict    # class -> share of its pixels (in the earlier frame) that change
    flicker_raw: float | None = None     # the same without smoothing (when smoothing is on)
    stable_flicker: float | None = None  # with ground truth: label changes where the truth stays the same
    stable_flicker_raw: float | None = None
    miou: float | None = None            # with ground truth
    per_class_iou: dict | None = None
    share: list = field(default_factory=list)  # per processed frame: (C,) pixel share per class
    indices: list = field(default_factory=list)  # the clip's frame index of each processed frame
    out: str | None = None
    cut: str | None = None     # why the clip was cut short, in words


class _Flicker:
    """Running counts of label changes between consecutive frames (at the work size)."""

    def __init__(self, num_classes: int):
        self.c = num_classes
        self.changed = self.total = 0
        self.per_class = np.zeros((2, num_classes), np.int64)  # changed, total per class of the earlier frame
        self.stable_changed = self.stable_total = 0
        self.prev = self.prev_truth = None

    def add(self, labels: np.ndarray, truth: np.ndarray | None = None, void: int | None = None) -> None:
        if self.prev is not None:
            diff = labels != self.prev
            self.changed += int(diff.sum())
            self.total += diff.size
            self.per_class[0] += np.bincount(self.prev[diff], minlength=self.c)[:self.c]
            self.per_class[1] += np.bincount(self.prev.ravel(), minlength=self.c)[:self.c]
            if truth is not None and self.prev_truth is not None:
                same = truth == self.prev_truth
                if void is not None:
                    same &= truth != void
                self.stable_changed += int((diff & same).sum())
                self.stable_total += int(same.sum())
        self.prev, self.prev_truth = labels, truth

    @property
    def share(self) -> float:
        return self.changed / self.total if self.total else 0.0

    @property
    def stable_share(self) -> float | None:
        return self.stable_changed / self.stable_total if self.stable_total else None


def segment_video(engine, src: Path, out: Path | None = None, stride: int = 1, max_seconds: float | None = MAX_SECONDS,
                  smooth: float = 0.0, labels_dir: Path | None = None, truth_dir: Path | None = None,
                  alpha: float = 0.5, fps: float | None = None, motion_gate: float = 0.0,
                  progress: Callable[[int, int | None], None] | None = None,
                  stop: Callable[[], bool] | None = None) -> VideoResult:
    """Segment every ``stride``-th frame of ``src`` on ``engine``; write the overlay to ``out`` (H.264,
    yuv420p, at the input rate / stride) and, with ``labels_dir``, one class-id PNG per processed frame.

    ``smooth`` in [0, 1): an exponential moving average of the class probabilities over processed
    frames, s_t = smooth * s_(t-1) + (1 - smooth) * p_t, before the argmax (0: off). ``truth_dir``:
    label PNGs of the clip's frames in name order (a CamVid sequence), for mIoU and stable flicker.
    """
    from . import metrics
    from .data import read_label
    if not 0 <= smooth < 1:
        raise VideoError(f"smoothing must be within 0 (off) and 1 (exclusive), got {smooth}")
    if stride < 1:
        raise VideoError(f"stride must be a positive integer, got {stride}")
    src = Path(src)
    info = probe(src)
    if fps:
        info.fps = float(fps)
    max_frames = None if not max_seconds else max(1, int(round(max_seconds * info.fps)))
    truths = sorted(Path(truth_dir).glob("*.png")) if truth_dir else None
    classes = engine.cfg.class_set
    c, palette = classes.num_classes, classes.palette()
    flick, raw_flick = _Flicker(c), _Flicker(c)
    cm = np.zeros((c, c), np.int64) if truths else None
    if labels_dir:
        Path(labels_dir).mkdir(parents=True, exist_ok=True)
    writer = _Writer(Path(out), info.fps / stride) if out else None
    res = VideoResult(0, info.fps, info.fps / stride, 0.0, 0.0, 0.0, 0.0, {})
    state = prev_grey = None
    t0 = time.perf_counter()
    try:
        for idx, rgb in iter_frames(src, stride, max_frames):
            if stop is not None and stop():
                res.cut = "stopped"
                break
            h, w = rgb.shape[:2]
            wh, ww = work_size(h, w, tuple(engine.cfg.base_size))
            x = np.ascontiguousarray(resize_rgb(rgb, (wh, ww)).transpose(2, 0, 1))[None]
            p = softmax(np.asarray(engine(x), np.float32))[0]
            raw = p.argmax(0).astype(np.uint8)
            grey = x[0].astype(np.int16).mean(0) if motion_gate else None
            if state is None or smooth == 0:
                state = p
            else:
                keep = smooth
                if motion_gate:  # where the picture itself changed, the new frame's answer wins: no lag on motion
                    keep = np.where(np.abs(grey - prev_grey) > motion_gate, 0.0, smooth)[None]
                state = keep * state + (1 - keep) * p
            prev_grey = grey
            labels = state.argmax(0).astype(np.uint8) if smooth else raw
            truth = None
            if truths is not None:
                if idx >= len(truths):
                    raise VideoError(f"{truth_dir} has {len(truths)} labels, fewer than the clip's frames")
                truth = np.asarray(Image.fromarray(read_label(truths[idx])).resize((ww, wh), Image.NEAREST))
                cm += metrics.confusion_matrix(labels, truth, c, classes.void)
            flick.add(labels, truth, classes.void)
            if smooth:
                raw_flick.add(raw, truth, classes.void)
            full = labels if (wh, ww) == (h, w) else \
                np.asarray(Image.fromarray(labels, "L").resize((w, h), Image.NEAREST))
            res.share.append(class_share(labels, c))
            res.indices.append(idx)
            if writer:
                writer.write(overlay(rgb, full, palette, alpha))
            if labels_dir:
                Image.fromarray(full, "L").save(Path(labels_dir) / f"{idx:06d}.png")
            res.frames += 1
            if progress:
                progress(res.frames, None if info.frames is None else -(-min(info.frames, max_frames or info.frames)
                                                                            // stride))
    finally:
        if writer:
            writer.close()
    if res.frames == 0:
        raise VideoError(f"{src.name} has no frames to segment")
    if max_frames and info.frames and info.frames > max_frames and res.cut is None:
        res.cut = f"only the first {max_seconds:g} s ({max_frames} frames) of {info.frames} were processed"
    res.wall_s = time.perf_counter() - t0
    res.frames_per_s = res.frames / res.wall_s
    res.seconds = (res.indices[-1] + 1) / info.fps
    res.flicker = flick.share
    res.flicker_per_class = {n: (float(a / b) if b else None) for n, a, b in
                             zip(classes.names, flick.per_class[0], flick.per_class[1])}
    res.stable_flicker = flick.stable_share
    if smooth:
        res.flicker_raw, res.stable_flicker_raw = raw_flick.share, raw_flick.stable_share
    if cm is not None:
        s = metrics.summarize(cm, classes.names)
        res.miou, res.per_class_iou = s["miou"], s["per_class_iou"]
    res.out = str(out) if out else None
    return res


class _Writer:
    """H.264 yuv420p mp4 (what every browser plays), opened on the first frame; odd sizes lose a pixel."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps = path, fps
        self.container = self.stream = None

    def write(self, rgb: np.ndarray) -> None:
        import av
        from fractions import Fraction
        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.options = {"crf": "23", "preset": "veryfast", "movflags": "+faststart"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
