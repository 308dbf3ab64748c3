"""Shared fixtures: a tiny synthetic SegNet-layout dataset and a tiny trained model."""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# the project's real data: $SIS_CAMVID, else ../shared/camvid beside the checkout, else the workspace copy
_CANDIDATES = [Path(os.environ["SIS_CAMVID"])] if os.environ.get("SIS_CAMVID") else [
    ROOT.parent / "shared" / "camvid", Path("/work/shared/camvid")]
REAL_CAMVID = next((p for p in _CANDIDATES if (p / "train").is_dir()), _CANDIDATES[0])

os.environ.setdefault("SIS_OFFLINE", "1")  # no test touches the network
if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite's workers share the host's cores: each runs one thread (torch, ONNX Runtime, OpenCV and the
    # jobs it starts) rather than all of them fighting over every core; set before torch is imported
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("SIS_THREADS", "1")
if "SIS_CPU_BF16" not in os.environ:
    # bf16 autocast where the CPU has the instructions, not where a timing on a busy host says: the suite's
    # trained weights, and what is checked against them, must not depend on the host's load
    from sis.host import cpu_has_bf16
    os.environ["SIS_CPU_BF16"] = "1" if cpu_has_bf16() else "0"
# ONNX / int8 graphs the fast path builds go to a throw-away folder, not the checkout's data/
_OWN_CACHE = None if os.environ.get("SIS_CACHE_DIR") else tempfile.mkdtemp(prefix="sis-test-cache-")
if _OWN_CACHE:
    os.environ["SIS_CACHE_DIR"] = _OWN_CACHE


def pytest_report_header(config):
    """Free disk where the suite writes: a full disk fails tests in ways that hide the cause."""
    from sis.files import free_mb
    return f"free disk: {free_mb(Path(tempfile.gettempdir())):.0f} MB in {tempfile.gettempdir()}, " \
           f"{free_mb(ROOT):.0f} MB in {ROOT}"


@pytest.fixture(autouse=True)
def _fresh_engine_choices():
    """choose_engine remembers its answers per file version; a test that patches what it reads starts afresh."""
    from sis.engines import policy
    policy._choose.cache_clear()
    yield


@pytest.fixture(autouse=True)
def _same_thread_count():
    """A test that runs the CLI in-process (``--threads 1``) must not change later tests' numerics."""
    import torch
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def in_process(capsys, *args):
    """``python -m sis ARGS`` without the interpreter's start (torch's import is paid once per test session):
    ``main``'s exit code, stdout and stderr, as the process would give them."""
    from types import SimpleNamespace

    from sis.cli import main
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def make_frame(rng: np.random.Generator, h: int, w: int, n_classes: int = 11, void: int = 11):
    """An image whose colour bands encode the label: learnable in a few steps."""
    from sis.classes import CAMVID
    lbl = np.zeros((h, w), np.uint8)
    bands = rng.permutation(n_classes)[:4]
    edges = np.sort(rng.integers(1, h, 3))
    for k, (a, b) in enumerate(zip([0, *edges], [*edges, h])):
        lbl[a:b] = bands[k]
    lbl[: max(1, h // 16), : max(1, w // 16)] = void
    pal = np.asarray(CAMVID.colors + ((0, 0, 0),), np.int16)
    img = pal[lbl] + rng.integers(-20, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), lbl


def write_dataset(root: Path, n_train=6, n_val=3, h=64, w=96, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, lbl = make_frame(rng, h, w)
            Image.fromarray(img).save(root / split / f"f{i:03d}.png")
            Image.fromarray(lbl, "L").save(root / f"{split}annot" / f"f{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("camvid_tiny"))


@pytest.fixture
def data_copy(tmp_path) -> Path:
    """A fresh synthetic dataset a test may break."""
    return write_dataset(tmp_path / "ds", n_train=3, n_val=2)


TINY_MODEL = "pspnet-resnet18"  # the cheapest registry model to train


@pytest.fixture(scope="session")
def tiny_model(tiny_data, tmp_path_factory) -> Path:
    """A model folder trained for 2 steps on the synthetic data."""
    from sis.training.config import TrainConfig
    from sis.training.loop import train
    out = tmp_path_factory.mktemp("models") / TINY_MODEL
    train(TrainConfig(model=TINY_MODEL, data=str(tiny_data), out=str(out), max_steps=2, batch_size=2,
                      threads=None), log=lambda m: None)
    return out


@pytest.fixture
def app_env(tmp_path, monkeypatch, tiny_model):
    """An empty data folder holding one tiny fine-tuned model, so pages run in seconds (tests/pages/)."""
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path / "data"))
    shutil.copytree(tiny_model, tmp_path / "data" / "models" / "tiny", ignore=shutil.ignore_patterns("checkpoint"))
    return tmp_path / "data"


# ------------------------------------------------------------------ helpers several test files share
def write_clip(path: Path, frames: list[np.ndarray], fps: int = 10, codec: str = "libx264") -> Path:
    """``frames`` written as a clip at ``path`` (lossless H.264 by default: decoded frames equal these)."""
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.options = {"crf": "0"} if codec == "libx264" else {}  # lossless: decoded frames equal the written ones
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def clip_frames(n=6, h=48, w=64, seed=0):
    """``n`` frames of noise, a clip's worth."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), np.uint8) for _ in range(n)]


def bomb_png(w: int, h: int) -> bytes:
    """A PNG header claiming w x h pixels with almost no data: refused before decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))
