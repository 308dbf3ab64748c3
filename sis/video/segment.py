"""Segment a clip: every N-th frame on an engine, smoothed over time, measured, written out.

Frames stream through (decode -> segment -> encode), one at a time: a clip costs no more memory
than a photo. A folder of images counts as a clip too (frames in name order, ``fps`` given), which is
how the CamVid val sequence, whose ground truth is per frame, is measured."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sis.classes import DEFAULT_PALETTE
from sis.data.images import resize_rgb
from sis.engines.predict import softmax, work_logits, work_size
from sis.video.clips import PREVIEW_SIDE, ClipWriter, VideoError, VideoInfo, iter_frames, out_size, probe
from sis.video.temporal import Flicker, Motion
from sis.vis.paint import class_share, overlay

MAX_SECONDS = 60.0     # of input processed by default; a longer clip is cut there (said in the result)
DEFAULT_SMOOTH = 0.3   # the page's and `sis video`'s smoothing: within 1 point of none on fast motion (docs/video.md)


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
    agreement: float | None = None       # with smoothing: share of pixels labelled as without it
    stable_flicker: float | None = None  # with ground truth: label changes where the truth stays the same
    stable_flicker_raw: float | None = None
    truth_flicker: float | None = None   # with ground truth: where the truth itself changes (both frames labelled)
    miou: float | None = None            # with ground truth
    per_class_iou: dict | None = None
    share: list = field(default_factory=list)  # per processed frame: (C,) pixel share per class
    indices: list = field(default_factory=list)  # the clip's frame index of each processed frame
    confidence: list = field(default_factory=list)  # per processed frame: its mean calibrated confidence, unsmoothed
    out: str | None = None
    cut: str | None = None     # why the clip was cut short, in words

    @property
    def mean_confidence(self) -> float:
        """The clip's mean confidence: its processed frames' means, averaged (nan before any frame)."""
        return float(np.mean(self.confidence)) if self.confidence else float("nan")

    @classmethod
    def from_dict(cls, d: dict) -> "VideoResult":
        """Back from the plain dict a worker process sends (``dataclasses.asdict`` + extra keys)."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names})


def segment_video(engine, src: Path, out: Path | None = None, stride: int = 1, max_seconds: float | None = MAX_SECONDS,
                  smooth: float = 0.0, labels_dir: Path | None = None, truth_dir: Path | None = None,
                  alpha: float = 0.5, fps: float | None = None, flow: bool = True, preview: Path | None = None,
                  progress: Callable[[int, int | None], None] | None = None,
                  stop: Callable[[], bool] | None = None, palette: str = DEFAULT_PALETTE) -> VideoResult:
    """Segment every ``stride``-th frame of ``src`` on ``engine``; write the overlay to ``out`` (H.264,
    yuv420p, at the input rate / stride) and, with ``labels_dir``, one class-id PNG per processed frame;
    ``preview``: the same overlay at most PREVIEW_SIDE long and more compressed, for a page to play; the
    overlay drawn in ``palette`` (classes.PALETTES).

    ``smooth`` in [0, 1): an exponential moving average of the class probabilities over processed
    frames, s_t = smooth * warp(s_(t-1)) + (1 - smooth) * p_t, before the argmax (0: off), where warp
    carries the previous average along the picture's optical flow, on the pixels whose flow passed the
    forward-backward check (``temporal.Motion``; elsewhere s_t = p_t) (``flow=False``: no warp, the plain
    average everywhere, which lags behind anything that moves). ``truth_dir``:
    label PNGs of the clip's frames in name order (a CamVid sequence), for mIoU and stable flicker.
    """
    from sis import metrics
    from sis.data.dataset import read_label
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
    c, palette = classes.num_classes, classes.in_palette(palette).palette()  # the overlay's colours
    flick, raw_flick = Flicker(c), Flicker(c)
    cm = np.zeros((c, c), np.int64) if truths else None
    if labels_dir:
        Path(labels_dir).mkdir(parents=True, exist_ok=True)
    writer = ClipWriter(Path(out), info.fps / stride) if out else None
    small = ClipWriter(Path(preview), info.fps / stride, crf=28) if preview else None
    res = VideoResult(0, info.fps, info.fps / stride, 0.0, 0.0, 0.0, 0.0, {})
    state = None
    kept = [0, 0]  # pixels whose smoothed label is the frame's own, of all
    motion = Motion() if smooth and flow else None
    t0 = time.perf_counter()
    try:
        for idx, rgb in iter_frames(src, stride, max_frames):
            if stop is not None and stop():
                res.cut = "stopped"
                break
            h, w = rgb.shape[:2]
            wh, ww = work_size(h, w, tuple(engine.cfg.base_size))
            logits, seen = work_logits(engine, rgb, (wh, ww))
            p = softmax(logits, axis=0)
            x = np.ascontiguousarray(seen.transpose(2, 0, 1))[None]
            raw = p.argmax(0).astype(np.uint8)
            if state is not None and state.shape != p.shape:
                state = None  # the clip changed size mid-stream: start the average afresh
            trust = None
            if motion:
                state, trust = motion.follow(state, x[0])
            state = p if state is None or smooth == 0 else smooth * state + (1 - smooth) * p if trust is None else \
                np.where(trust, smooth * state + (1 - smooth) * p, p)  # the past only where its motion was followed
            labels = state.argmax(0).astype(np.uint8) if smooth else raw
            if smooth:
                kept[0] += int((labels == raw).sum())
                kept[1] += raw.size
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
            res.confidence.append(float(p.max(0).mean()))
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
        res.agreement = kept[0] / kept[1] if kept[1] else None
    if cm is not None:
        s = metrics.summarize(cm, classes.names)
        res.miou, res.per_class_iou = s["miou"], s["per_class_iou"]
    res.out = str(out) if out else None
    return res
