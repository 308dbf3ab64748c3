"""Every page at once (AppTest): thin pages, the router, the session's colours, a server that never loads torch."""
import ast
import json
import shutil

import numpy as np
import pytest
from apptest import _app, _select_run
from conftest import ROOT
from PIL import Image

from sis.classes import CAMVID
from sis.studio import ui

PAGES = sorted((ROOT / "pages").glob("*.py"))


def test_pages_hold_no_torch_or_numpy():
    """Pages are thin: widgets in, one sis call, render out."""
    for page in PAGES:
        tree = ast.parse(page.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"torch", "numpy", "segmentation_models_pytorch", "PIL"}, page.name


def test_every_page_registered():
    router = (ROOT / "streamlit_app.py").read_text()
    for page in PAGES:
        assert f'"pages/{page.name}"' in router


@pytest.mark.slow
def test_the_sessions_colours_draw_the_legend_on_every_page(app_env, tiny_model):
    """High contrast by default (Car blue, far from Road's purple); the dataset's own once picked in the router's
    sidebar (AppTest runs a switched-to page without the router, so the choice is set as the radio sets it)."""
    shutil.copytree(tiny_model, app_env / "models" / "tiny2", ignore=shutil.ignore_patterns("checkpoint"))
    home = _app()
    assert home.sidebar.radio(key=ui.widgets.PALETTE_KEY).value == "contrast"
    at = _app("pages/segment.py")
    _select_run(at)

    def legend_has(rgb):
        return any(f"background:rgb{rgb}" in m.value for m in at.markdown)
    car = CAMVID.names.index("Car")
    assert legend_has(CAMVID.in_palette().colors[car]) and not legend_has(CAMVID.colors[car])
    at.session_state[ui.widgets.PALETTE_KEY] = "dataset"
    at.run()
    assert legend_has(CAMVID.colors[car]) and not at.exception
    at.switch_page("pages/compare.py").run()
    at.session_state[ui.widgets.PALETTE_KEY] = "dataset"
    at.multiselect(key="cmp_models").set_value(["run:tiny", "run:tiny2"]).run()
    assert legend_has(CAMVID.colors[car]) and not at.exception


@pytest.mark.slow
def test_serving_an_upload_imports_no_torch(tmp_path):
    """A fresh interpreter runs the app's own pages, Segment with an upload and Compare on the default
    engine: torch (and smp, timm, torchvision) never load in the server. The graphs come from the shipped
    templates; fine-tuning and benchmarks import torch in their worker processes. OpenCV (about 14 MB) loads
    only for a clip's smoothing, not here."""
    import subprocess
    import sys
    code = f"""
import io, sys
import numpy as np
from PIL import Image
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(ROOT / "streamlit_app.py")!r}, default_timeout=300)
at.run()
at.switch_page("pages/segment.py").run()
at.radio(key="seg_source").set_value("Upload").run()
buf = io.BytesIO()
street = np.zeros((300, 400, 3), np.uint8)  # flat blocks with edges
street[:120], street[120:, :200], street[120:, 200:] = (120, 160, 210), (90, 90, 90), (150, 120, 80)
Image.fromarray(street).save(buf, "PNG")
at.file_uploader(key="seg_upload").upload("street.png", buf.getvalue(), "image/png").run()
res = at.session_state["_seg_last:segment"][1]
assert not at.exception and res.size == (300, 400), at.exception
at.switch_page("pages/compare.py").run()
assert not at.exception and at.metric, at.exception
for page in ("pages/home.py", "pages/video.py", "pages/finetune.py", "pages/benchmark.py"):  # every page's own imports
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
print(res.engine, sorted(m for m in ("torch", "segmentation_models_pytorch", "timm", "torchvision", "cv2") if m in sys.modules))
"""
    env = dict(__import__("os").environ, SIS_DATA_DIR=str(tmp_path / "data"), SIS_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "onnxruntime-int8 []"


@pytest.mark.slow
@pytest.mark.parametrize("memory_mb,expected", [(700, "onnxruntime-int8"), (16384, "torch-bf16")])
def test_cli_and_app_choose_the_same_engine(app_env, monkeypatch, tmp_path, memory_mb, expected):
    """One policy: on a simulated small host and a big one, `predict` and the Segment page run the same
    engine. This host's kept comparison timed torch-bf16 fastest; a small host keeps to graph engines."""
    import subprocess
    import sys

    from sis import host, store
    from sis.engines.cache import file_key
    folder = app_env / "models" / "tiny"
    c = json.loads((folder / "card.json").read_text())
    c["fast_path"] = {"backends": {n: {"miou_delta": 0.0, "speedup_vs_eager": 1.5}
                                   for n in ("eager", "torch-bf16", "onnxruntime", "onnxruntime-int8")}}
    (folder / "card.json").write_text(json.dumps(c))
    here = {n: {"speedup_vs_eager": s, "miou_delta": None}
            for n, s in (("eager", 1.0), ("torch-bf16", 5.0), ("onnxruntime", 1.2), ("onnxruntime-int8", 2.0))}
    store.put_engines(host.host_key(), file_key(folder), "pspnet-resnet18", here)
    monkeypatch.setenv("SIS_CPU_BF16", "1")  # bf16 runs on any CPU here: the memory rule alone differs
    monkeypatch.setenv("SIS_MEMORY_LIMIT_MB", str(memory_mb))
    img = tmp_path / "street.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), np.uint8)).save(img)
    out = subprocess.run([sys.executable, "-m", "sis", "predict", "--model", str(folder), "--out", str(tmp_path / "o"),
                          str(img)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"pspnet-resnet18 on {expected} (")
    at = _app("pages/segment.py")
    _select_run(at)
    assert at.selectbox(key="seg_engine:run:tiny").value == expected
    assert any(f"on {expected};" in c.value for c in at.caption)


def test_links_open_their_page_on_the_context_they_name(app_env):
    """Home's 'Segment your photos' opens Segment on Upload, Video's link opens Correct on the clip's
    frames (?open=...); the visitor's own choice holds afterwards."""
    at = _app()
    link = next(e for e in at.get("page_link") if e.proto.label == "Segment your photos")
    assert "open=upload" in str(link.proto)
    at.query_params["open"] = "upload"
    at.switch_page("pages/segment.py")
    at.run()
    assert at.radio(key="seg_source").value == "Upload" and "open" not in at.query_params
    at.radio(key="seg_source").set_value("Camera").run()
    assert at.radio(key="seg_source").value == "Camera"
    at.query_params["open"] = "clip"
    at.switch_page("pages/correct.py")
    at.run()
    assert not at.exception and at.radio(key="cor_source").value == "Frames of a clip"
