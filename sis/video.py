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
MAX_OUT_SIDE = 1280    # the overlay and label PNGs are at most this long (720p stays 720p; 4K is scaled down)
PREVIEW_SIDE = 854     # the preview a page plays (480p): the server holds what it shows in memory
EXTENSIONS = ("mp4", "mov", "webm", "mkv", "avi")
SAMPLE_CLIP = Path(__file__).resolve().parent.parent / "assets" / "samples" / "0016E5_val.mp4"


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
        raise VideoError(f"{path.name} has no video stream (an audio-only or empty file)")
    if container.format.name.endswith("_pipe") or container.format.name == "image2":
        container.close()  # FFmpeg reads a still image as a one-frame "video"
        raise VideoError(f"{path.name} is a still image, not a video; segment it on the Segment page or with predict")
    return container


def probe(path: Path) -> VideoInfo:
    """The clip's frame rate, size, length and rotation, from its header and its first frame."""
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
        first = _first_frame(c, path)
        # the display matrix (phone clips record their orientation there) rides on every decoded frame
        return VideoInfo(fps, first.width, first.height, frames, seconds, (getattr(first, "rotation", 0) or 0) % 360)


def _first_frame(container, path: Path):
    import av
    try:
        for frame in container.decode(container.streams.video[0]):
            return frame
    except av.error.FFmpegError:
        raise VideoError(f"{path.name} is truncated or corrupt: no frame could be decoded") from None
    raise VideoError(f"{path.name} holds no video frames")


def out_size(h: int, w: int, side: int = MAX_OUT_SIDE) -> tuple[int, int]:
    """(h, w) of the label PNGs for an upright (h, w) frame: the frame's own, or scaled down to at most
    ``side`` long. The overlay video is the same less an odd last row or column (yuv420p)."""
    f = side / max(h, w)
    return (h, w) if f >= 1 else (max(2, round(h * f) // 2 * 2), max(2, round(w * f) // 2 * 2))


@dataclass
class VideoPlan:
    """What a run on a clip will do, said before it starts."""
    info: VideoInfo
    stride: int
    max_seconds: float | None
    frames: int | None           # frames to segment (None: the container does not say)
    read: int | None             # frames of input read
    work: tuple[int, int]        # (h, w) the model sees
    out: tuple[int, int]         # (h, w) of the overlay and the label PNGs

    @property
    def cut(self) -> bool:
        return self.info.frames is not None and self.read is not None and self.read < self.info.frames

    def sentence(self) -> str:
        i, (h, w) = self.info, self.upright
        length = f"{i.seconds:.1f} s" if i.seconds else "length unknown"
        text = f"{w}x{h} at {i.fps:.3g} fps, {length}" + (f" ({i.frames} frames)" if i.frames else "") + \
            (f", turned {i.rotation} degrees for display" if i.rotation else "") + ". "
        if self.cut:
            text += f"Only the first {self.max_seconds:g} s are processed (the cap). "
        every = "every frame" if self.stride == 1 else f"1 frame in {self.stride}"
        text += f"Segmenting {every}" + (f": {self.frames} frames" if self.frames else "") + \
            f", each at {self.work[1]}x{self.work[0]}; the overlay is written at {self.out[1]}x{self.out[0]}."
        return text

    @property
    def upright(self) -> tuple[int, int]:
        i = self.info
        return (i.width, i.height) if i.rotation in (90, 270) else (i.height, i.width)


def frame_cap(info: VideoInfo, max_seconds: float | None) -> int | None:
    """How many frames of input ``max_seconds`` allows (None: no cap)."""
    return max(1, int(round(max_seconds * info.fps))) if max_seconds else None


def plan(info: VideoInfo, stride: int, max_seconds: float | None, base: tuple[int, int]) -> VideoPlan:
    """The frames, work size and output size of a run over ``info`` (``base``: the model's base size)."""
    pl = VideoPlan(info, stride, max_seconds, None, None, (0, 0), (0, 0))
    h, w = pl.upright
    cap = frame_cap(info, max_seconds)
    pl.read = min(info.frames, cap) if info.frames and cap else (info.frames or cap)
    pl.frames = -(-pl.read // stride) if info.frames and pl.read else None
    pl.work, pl.out = work_size(h, w, tuple(base)), out_size(h, w)
    return pl


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
    truth_flicker: float | None = None   # with ground truth: where the truth itself changes (both frames labelled)
    miou: float | None = None            # with ground truth
    per_class_iou: dict | None = None
    share: list = field(default_factory=list)  # per processed frame: (C,) pixel share per class
    indices: list = field(default_factory=list)  # the clip's frame index of each processed frame
    out: str | None = None
    cut: str | None = None     # why the clip was cut short, in words

    @classmethod
    def from_dict(cls, d: dict) -> "VideoResult":
        """Back from the plain dict a worker process sends (``dataclasses.asdict`` + extra keys)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


class _Flicker:
    """Running counts of label changes between consecutive frames (at the work size)."""

    def __init__(self, num_classes: int):
        self.c = num_classes
        self.changed = self.total = 0
        self.per_class = np.zeros((2, num_classes), np.int64)  # changed, total per class of the earlier frame
        self.stable_changed = self.stable_total = 0
        self.truth_changed = self.truth_total = 0
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
                both = (truth != void) & (self.prev_truth != void) if void is not None else np.ones_like(same)
                self.truth_changed += int((~same & both).sum())
                self.truth_total += int(both.sum())
        self.prev, self.prev_truth = labels, truth

    @property
    def share(self) -> float:
        return self.changed / self.total if self.total else 0.0

    @property
    def stable_share(self) -> float | None:
        return self.stable_changed / self.stable_total if self.stable_total else None


def segment_video(engine, src: Path, out: Path | None = None, stride: int = 1, max_seconds: float | None = MAX_SECONDS,
                  smooth: float = 0.0, labels_dir: Path | None = None, truth_dir: Path | None = None,
                  alpha: float = 0.5, fps: float | None = None, flow: bool = True, preview: Path | None = None,
                  progress: Callable[[int, int | None], None] | None = None,
                  stop: Callable[[], bool] | None = None) -> VideoResult:
    """Segment every ``stride``-th frame of ``src`` on ``engine``; write the overlay to ``out`` (H.264,
    yuv420p, at the input rate / stride) and, with ``labels_dir``, one class-id PNG per processed frame;
    ``preview``: the same overlay at most PREVIEW_SIDE long and more compressed, for a page to play.

    ``smooth`` in [0, 1): an exponential moving average of the class probabilities over processed
    frames, s_t = smooth * warp(s_(t-1)) + (1 - smooth) * p_t, before the argmax (0: off), where warp
    carries the previous average along the picture's optical flow (``flow=False``: no warp, the plain
    average, which lags behind anything that moves). ``truth_dir``:
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
    max_frames = frame_cap(info, max_seconds)
    total = plan(info, stride, max_seconds, engine.cfg.base_size).frames
    truths = sorted(Path(truth_dir).glob("*.png")) if truth_dir else None
    classes = engine.cfg.class_set
    c, palette = classes.num_classes, classes.palette()
    flick, raw_flick = _Flicker(c), _Flicker(c)
    cm = np.zeros((c, c), np.int64) if truths else None
    if labels_dir:
        Path(labels_dir).mkdir(parents=True, exist_ok=True)
    writer = _Writer(Path(out), info.fps / stride) if out else None
    small = _Writer(Path(preview), info.fps / stride, crf=28) if preview else None
    res = VideoResult(0, info.fps, info.fps / stride, 0.0, 0.0, 0.0, 0.0, {})
    state = None
    motion = _Motion() if smooth and flow else None
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
            if state is not None and state.shape != p.shape:
                state = None  # the clip changed size mid-stream: start the average afresh
            if motion:
                state = motion.follow(state, x[0])
            state = p if state is None or smooth == 0 else smooth * state + (1 - smooth) * p
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
            oh, ow = out_size(h, w)
            if (oh, ow) != (h, w):
                rgb = resize_rgb(rgb, (oh, ow))
            full = labels if (wh, ww) == (oh, ow) else \
                np.asarray(Image.fromarray(labels, "L").resize((ow, oh), Image.NEAREST))
            res.share.append(class_share(labels, c))
            res.indices.append(idx)
            if writer or small:
                shown = overlay(rgb, full, palette, alpha)
                if writer:
                    writer.write(shown)
                if small:
                    ph, pw = out_size(oh, ow, PREVIEW_SIDE)
                    small.write(shown if (ph, pw) == (oh, ow) else resize_rgb(shown, (ph, pw)))
            if labels_dir:
                Image.fromarray(full, "L").save(Path(labels_dir) / f"{idx:06d}.png")
            res.frames += 1
            if progress:
                progress(res.frames, total)
    finally:
        for w in (writer, small):
            if w:
                w.close()
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
    res.truth_flicker = flick.truth_changed / flick.truth_total if flick.truth_total else None
    if smooth:
        res.flicker_raw, res.stable_flicker_raw = raw_flick.share, raw_flick.stable_share
    if cm is not None:
        s = metrics.summarize(cm, classes.names)
        res.miou, res.per_class_iou = s["miou"], s["per_class_iou"]
    res.out = str(out) if out else None
    return res


class _Motion:
    """Carries a (C, h, w) map along the picture's motion from one frame to the next: OpenCV's DIS
    optical flow (its fastest preset) from the new frame back to the previous one, then a bilinear
    remap of every channel, so that an average over frames follows a passing car instead of trailing it."""

    def __init__(self):
        import cv2  # only smoothing needs it
        from .host import threads
        cv2.setNumThreads(threads())
        self.cv2, self.dis = cv2, cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self.grey = self.grid = None

    def follow(self, state: np.ndarray | None, chw: np.ndarray) -> np.ndarray | None:
        """``state`` (C, h, w), aligned with the previous frame, moved onto the new frame ``chw``
        ((3, h, w) uint8, the work size); the new frame is remembered for the next call."""
        cv2 = self.cv2
        grey = cv2.cvtColor(np.ascontiguousarray(chw.transpose(1, 2, 0)), cv2.COLOR_RGB2GRAY)
        prev, self.grey = self.grey, grey
        if state is None or prev is None or prev.shape != grey.shape:
            return state
        flow = self.dis.calc(grey, prev, None)  # for each new pixel: where it was in the previous frame
        h, w = grey.shape
        if self.grid is None or self.grid[0].shape != (h, w):
            self.grid = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        mx, my = self.grid[0] + flow[..., 0], self.grid[1] + flow[..., 1]
        return np.stack([cv2.remap(c, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE) for c in state])


class _Writer:
    """H.264 yuv420p mp4 (what every browser plays), opened on the first frame; odd sizes lose a pixel."""

    def __init__(self, path: Path, fps: float, crf: int = 23):
        self.path, self.fps, self.crf = path, fps, crf
        self.container = self.stream = None

    def write(self, rgb: np.ndarray) -> None:
        import av
        from fractions import Fraction
        h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # yuv420p needs even sides (out_size gives them)
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), "w")
            self.stream = self.container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            self.stream.options = {"crf": str(self.crf), "preset": "veryfast", "movflags": "+faststart"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
