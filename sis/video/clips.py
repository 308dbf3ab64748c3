"""Clips in and out: probe and decode a video (or a folder of frames), write H.264 mp4s. PyAV."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

MAX_PIXELS = 3840 * 2160  # a frame larger than 4K is refused: its decode alone would dwarf the model


MAX_OUT_SIDE = 1280    # the overlay and label PNGs are at most this long (720p stays 720p; 4K is scaled down)


PREVIEW_SIDE = 854     # the preview a page plays (480p): the server holds what it shows in memory


EXTENSIONS = ("mp4", "mov", "webm", "mkv", "avi")


SAMPLE_CLIP = Path(__file__).resolve().parents[2] / "assets" / "samples" / "0016E5_val.mp4"


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


def _image_files(folder: Path) -> list[Path]:
    from sis.data.dataset import IMAGE_EXTS
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


class ClipWriter:
    """H.264 yuv420p mp4 (what every browser plays), opened on the first frame; odd sizes lose a pixel."""

    def __init__(self, path: Path, fps: float, crf: int = 23):
        self.path, self.fps, self.crf = path, fps, crf
        self.container = self.stream = None

    def write(self, rgb: np.ndarray) -> None:
        from fractions import Fraction

        import av
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
