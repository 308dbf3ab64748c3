"""The one module that joins the library to Streamlit: caching, session identity, shared widgets."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas  # noqa: F401 - imported up front: plotly peeks at a half-imported pandas when another
import psutil  # session's thread is importing it (st.dataframe), and a chart then fails with AttributeError
import streamlit as st
import torch

from . import backends, catalog, jobs, runtime, zoo
from .classes import ClassSet
from .infer import ImageError, load_for_inference, load_image

MAX_UPLOAD_FILES = 8
MAX_UPLOAD_MB = 25  # also server.maxUploadSize in .streamlit/config.toml
MAX_IMAGE_MP = 40


_ROUTED = False


def mark_routed() -> None:
    """Called by the router: from now on this server process knows the st.navigation pages."""
    global _ROUTED
    _ROUTED = True


def ensure_router(page_file: str) -> None:
    """A deep link into pages/ on a server that has not run the router yet gets Streamlit's old
    folder-based navigation; send it through the router, which then opens the same page."""
    if not _ROUTED:
        st.session_state["_deep_link"] = f"pages/{os.path.basename(page_file)}"
        st.switch_page("streamlit_app.py")


def follow_deep_link() -> None:
    """Router side of ``ensure_router``."""
    target = st.session_state.pop("_deep_link", None)
    if target:
        st.switch_page(target)


@st.cache_resource
def startup() -> jobs.JobManager:
    """Once per server process: thread count, the job manager (which marks stale runs interrupted)."""
    threads = int(os.environ.get("SIS_THREADS", psutil.cpu_count(logical=False) or 1))
    torch.set_num_threads(max(1, threads))
    runtime.limit_malloc_arenas(2)  # keeps the server's RSS near its working set (hosted: ~1 GB)
    return jobs.JobManager()


@st.cache_resource(max_entries=6, show_spinner="Loading model...")
def _load(folder: str, mtime: float):
    return load_for_inference(folder)


def get_model(entry: catalog.Entry):
    """A read-only model (eval, no grads), loaded once per process and shared by every session."""
    return _load(str(entry.folder), (entry.folder / "model.safetensors").stat().st_mtime)


@st.cache_resource(max_entries=8, show_spinner=False)
def _runner(folder: str, mtime: float, backend: str):
    if backends.is_graph(backend):  # no PyTorch weights resident: loaded only to build a new graph
        return backends.get_runner(None, zoo.read_config(Path(folder)), backend, folder=Path(folder))
    if backend == "torch-bf16":  # its own bf16 copy, the fp32 weights it was made from not kept
        return backends.TorchBf16Runner(*load_for_inference(folder), keep_model=False)
    model, cfg = _load(folder, mtime)
    return backends.get_runner(model, cfg, backend)


def get_config(entry: catalog.Entry) -> zoo.ModelConfig:
    return zoo.read_config(entry.folder)


# below this much memory the server keeps to graph engines: torch-bf16 on all four shipped models
# peaked at 1211 MB (CUDA build, tools/app_memory.py) against 945 MB on their int8 graphs
SMALL_HOST_MB = 2048


def measured_engines(entry: catalog.Entry) -> dict:
    """This host's kept engine comparison for ``entry`` ({} if none). On a small host (under
    SMALL_HOST_MB, e.g. a hosted instance's 1 GB) only engines that need no PyTorch model compete."""
    from .bench import measured_engines as kept
    here = kept(entry.folder) or {}
    if here and runtime.memory_limit_bytes() < SMALL_HOST_MB * 2**20:
        here = {n: r for n, r in here.items() if n == backends.REFERENCE or backends.is_graph(n)}
    return here


def dashboard_rows(entries: dict[str, catalog.Entry]) -> list[dict]:
    """report.dashboard_rows with this host's kept engine comparisons."""
    from . import report
    return report.dashboard_rows(entries, {k: measured_engines(e) for k, e in entries.items()})


def default_backend(entry: catalog.Entry) -> str:
    """The model's fast path: the fastest available backend that passed its accuracy check, by
    this host's own engine comparison where the Benchmark page (or the CLI) kept one, else by the card."""
    return backends.default_backend(zoo.read_card(entry.folder), measured=measured_engines(entry))


def get_runner(entry: catalog.Entry, backend: str | None = None):
    """The shared runner of ``entry`` on ``backend`` (default: its fast path); one per process."""
    return _runner(str(entry.folder), (entry.folder / "model.safetensors").stat().st_mtime,
                   backend or default_backend(entry))


def backend_picker(entry: catalog.Entry, key: str) -> str:
    """Select an inference engine for ``entry``; its fast path is preselected. The widget is keyed
    per model (``key:model``): another model starts on its own fast path, not on the last choice."""
    ok = [b for b, why in backends.available().items() if why is None]
    card, here = zoo.read_card(entry.folder), measured_engines(entry)
    default = backends.default_backend(card, measured=here)

    def label(b: str) -> str:
        speed, delta, timed_here = backends.engine_figures(card, here, b)
        extra = f" ({speed:.1f}x{' here' if timed_here else ''}, {delta:+.2f} mIoU)" \
            if speed is not None and delta is not None else ""
        return b + extra + (" — fast path" if b == default else "") + (" — reference" if b == backends.REFERENCE else "")
    return st.selectbox("Inference engine", ok, index=ok.index(default), key=f"{key}:{entry.key}", format_func=label,
                        help="eager = PyTorch fp32, the reference. The fast path is the fastest engine whose "
                             "val mIoU stayed within 0.5 point of it (checked per model, in its card).")


def _run(fast, fallback) -> dict:
    """fast() on the chosen engine; if that engine fails here, fallback() on PyTorch fp32, with a
    note in the result that says so (shown on every rerun, not only the one that failed)."""
    try:
        return fast()
    except Exception as e:  # noqa: BLE001 - any engine failure: degrade, never break the page
        res = fallback()
        res["note"] = f"The fast inference engine failed here ({type(e).__name__}: {e}); used PyTorch fp32 instead."
        return res


def session_id() -> str:
    if "sid" not in st.session_state:
        try:
            from streamlit.runtime.scriptrunner import get_script_run_ctx
            st.session_state.sid = get_script_run_ctx().session_id
        except Exception:
            st.session_state.sid = uuid.uuid4().hex
    return st.session_state.sid


def model_picker(label: str, entries: dict[str, catalog.Entry], key: str) -> catalog.Entry | None:
    if not entries:
        st.error("No trained models are available: the weights/ folder is empty. Train one with "
                 "`python -m sis train` or on the Fine-tune page.")
        return None
    keys = list(entries)
    default = catalog.default_key(entries)
    labels = {k: _describe(k, entries[k]) for k in keys}
    choice = st.selectbox(label, keys, index=keys.index(default), key=key, format_func=labels.__getitem__)
    return entries[choice]


def _describe(key: str, entry: catalog.Entry | None = None) -> str:
    """Picker label: name, the card's val mIoU (so the most accurate is easy to find), paper pair."""
    miou = (zoo.read_card(entry.folder).get("val") or {}).get("miou") if entry is not None else None
    score = f" · val mIoU {100 * miou:.1f}" if isinstance(miou, (int, float)) else ""
    if key.startswith("run:"):
        return f"{key[4:]} (fine-tuned here){score}"
    paper = zoo.MODELS[key].paper if key in zoo.MODELS else None
    # the score right after the name: narrow columns cut the end of the label
    return (f"{key}" + score + (f" — {paper}" if paper else "") +
            (" (default)" if key == zoo.DEFAULT_MODEL else ""))


def legend(classes: ClassSet, share=None) -> None:
    chips = []
    for i, (n, c) in enumerate(zip(classes.names, classes.colors)):
        extra = f" {100 * share[i]:.1f}%" if share is not None else ""
        chips.append(f"<span style='display:inline-block;margin:2px 8px 2px 0;white-space:nowrap'>"
                     f"<span style='display:inline-block;width:14px;height:14px;border-radius:3px;"
                     f"background:rgb{tuple(c)};vertical-align:middle;border:1px solid #8886'></span> "
                     f"{n}{extra}</span>")
    st.markdown("<div class='sis-legend'>" + "".join(chips) + "</div>", unsafe_allow_html=True)


def read_upload(upload):
    """The LoadedImage of an st.file_uploader / st.camera_input file, or None after showing
    the one-sentence reason it cannot be used."""
    if upload.size > MAX_UPLOAD_MB * 2**20:
        st.error(f"{upload.name} is {upload.size / 2**20:.0f} MB, above the {MAX_UPLOAD_MB} MB limit")
        return None
    try:
        return load_image(upload.getvalue(), max_pixels=MAX_IMAGE_MP * 10**6, name=upload.name)
    except ImageError as e:
        st.error(str(e))
        return None


def segment_cached(entry: catalog.Entry, image_key: str, image, truth=None, backend: str | None = None) -> dict:
    """report.segment for (model, engine, image), remembering only the latest result in the session."""
    from . import report
    backend = backend or default_backend(entry)
    key = (str(entry.folder), backend, image_key)
    last = st.session_state.get("_seg_last")
    if last is None or last[0] != key:
        cfg = get_config(entry)
        with st.spinner(f"Segmenting with {backend} (a new image size builds its engine once)..."):
            res = _run(lambda: report.segment(None, cfg, image, truth, get_runner(entry, backend)),
                       lambda: report.segment(*get_model(entry), image, truth))
        last = (key, res)
        st.session_state["_seg_last"] = last
        runtime.release_memory()
    return last[1]


def compare_models(entries: list[catalog.Entry], image) -> dict:
    """report.compare over cached models on their fast paths, then hand the activations' memory back."""
    from . import report
    res = _run(lambda: report.compare([(e.key, None, get_config(e), get_runner(e)) for e in entries], image),
               lambda: report.compare([(e.key, *get_model(e)) for e in entries], image))
    runtime.release_memory()
    return res
