"""Street video: clips in and out, segmentation frame by frame, and what happens over time.

    clips     probe, decode and write clips (PyAV), or read a folder of frames
    segment   every N-th frame of a clip on an engine, smoothed, measured, written
    temporal  flicker between frames; probabilities carried along the optical flow
"""
from sis.video.clips import (
                             EXTENSIONS,
                             MAX_OUT_SIDE,
                             MAX_PIXELS,
                             PREVIEW_SIDE,
                             SAMPLE_CLIP,
                             VideoError,
                             VideoInfo,
                             iter_frames,
                             out_size,
                             probe,
)
from sis.video.segment import DEFAULT_SMOOTH, MAX_SECONDS, VideoPlan, VideoResult, frame_cap, plan, segment_video
