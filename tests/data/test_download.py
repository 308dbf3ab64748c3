"""download_camvid against a local HTTP server on 127.0.0.1 (never the internet)."""
import functools
import http.server
import threading

import numpy as np
import pytest
from PIL import Image

from sis.data.dataset import DatasetError, load_split
from sis.data.download import download_camvid


@pytest.fixture
def server(tmp_path):
    site = tmp_path / "site"
    for split in ("train", "val", "test"):
        (site / split).mkdir(parents=True)
        (site / f"{split}annot").mkdir()
        lines = []
        for i in range(2):
            Image.new("RGB", (8, 6), (i, 0, 0)).save(site / split / f"x{i}.png")
            Image.fromarray(np.full((6, 8), i, np.uint8)).save(site / f"{split}annot" / f"x{i}.png")
            lines.append(f"/SegNet/CamVid/{split}/x{i}.png /SegNet/CamVid/{split}annot/x{i}.png")
        (site / f"{split}.txt").write_text("\n".join(lines) + "\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_then_load(server, tmp_path):
    site, url = server
    counts = download_camvid(tmp_path / "cv", url)
    assert counts == {"train": 2, "val": 2, "test": 2}
    frames = load_split(tmp_path / "cv", "val")
    assert frames.names == ["x0", "x1"] and int(frames.masks[1].max()) == 1
    # a corrupt leftover is fetched again; valid files are kept
    (tmp_path / "cv" / "train" / "x0.png").write_bytes(b"broken")
    download_camvid(tmp_path / "cv", url, splits=("train",))
    assert Image.open(tmp_path / "cv" / "train" / "x0.png").size == (8, 6)


def test_download_checks_what_arrived(server, tmp_path):
    site, url = server
    (site / "val" / "x1.png").write_text("<html>rate limited</html>")
    with pytest.raises(DatasetError, match="downloaded val/x1.png is not a valid image"):
        download_camvid(tmp_path / "cv", url, splits=("val",))
    Image.new("RGB", (4, 4)).save(site / "val" / "x1.png")
    with pytest.raises(DatasetError, match=r"val/x1.png is \(4, 4\) but its label valannot/x1.png is \(8, 6\)"):
        download_camvid(tmp_path / "cv", url, splits=("val",))


def test_download_unreachable(tmp_path):
    with pytest.raises(DatasetError, match="cannot download http://127.0.0.1:9/train.txt"):
        download_camvid(tmp_path, "http://127.0.0.1:9", timeout=2)
