"""The sample clip the app and tests ship with: CamVid val sequence 0016E5 (101 frames in name order,
15 Hz) as H.264 at 15 fps, 480x360, CRF 28.

    python tools/make_sample_clip.py [--data ../shared/camvid] [--out assets/samples/0016E5_val.mp4]
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "camvid"))
    ap.add_argument("--out", default=str(ROOT / "assets" / "samples" / "0016E5_val.mp4"))
    a = ap.parse_args()
    frames = sorted((Path(a.data) / "val").glob("0016E5_*.png"))
    with av.open(a.out, "w") as c:
        s = c.add_stream("libx264", rate=Fraction(15))
        s.width, s.height, s.pix_fmt = 480, 360, "yuv420p"
        s.options = {"crf": "28", "preset": "slow", "movflags": "+faststart"}
        for f in frames:
            rgb = np.asarray(Image.open(f).convert("RGB"))
            for p in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    print(f"{len(frames)} frames -> {a.out} ({Path(a.out).stat().st_size / 1e3:.0f} KB)", file=sys.stderr)
