"""Pick the int8 calibration frames shipped in assets/calibration/ (CamVid *train* frames).

    python tools/make_calibration.py ../shared/camvid

16 frames spread evenly over the sorted train list (all four CamVid sequences),
stored as quality-95 JPEGs (~50 kB each). The int8 backends calibrate their
activation ranges on these, so a server without the dataset can build them.
"""
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
N = 16

if __name__ == "__main__":
    train = sorted((Path(sys.argv[1]) / "train").iterdir())
    dest = ROOT / "assets" / "calibration"
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(N):
        src = train[i * len(train) // N]
        Image.open(src).convert("RGB").save(dest / (src.stem + ".jpg"), quality=95)
        print(src.name)
