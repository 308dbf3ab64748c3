"""The one module that joins the library to Streamlit: caching, session identity, shared widgets.

It imports no torch: on a graph engine the server never loads PyTorch (a hosted instance has
about 1 GB); the torch engines import it on first use.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import pandas  # noqa: F401 - imported up front: plotly peeks at a half-imported pandas when another
import streamlit as st  # session's thread is importing it (st.dataframe), and a chart then fails with AttributeError

from . import catalog, engines, host, jobs, report, zoo
from .classes import ClassSet
from .engines.accurate import ACCURATE_MODE
from .infer import ImageError, load_image

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
    """Once per server process: malloc arenas, the job manager (which marks stale runs interrupted
    and reaps orphaned jobs on its own thread)."""
    host.limit_malloc_arenas(2)  # keeps the server's RSS near its working set (docs/memory.md)
    return jobs.JobManager()


@st.cache_resource
def _inference_gate() -> threading.Semaphore:
    """At most SIS_INFERENCE_SLOTS inferences at once in the server (default 2, 1 on a host under 2 GB):
    an engine already uses every core, so more at once add only memory (each holds its own activations)."""
    default = "1" if host.is_small() else "2"
    return threading.BoundedSemaphore(max(1, int(os.environ.get("SIS_INFERENCE_SLOTS", default))))


def _mtime(entry: catalog.Entry) -> float:
    return (entry.folder / "model.safetensors").stat().st_mtime


@st.cache_resource(max_entries=8, show_spinner=False)
def _engine(folder: str, mtime: float, name: str):
    return engines.load_engine(Path(folder), name)


def get_config(entry: catalog.Entry) -> zoo.ModelConfig:
    return zoo.read_config(entry.folder)


def engine_choice(entry: catalog.Entry) -> engines.EngineChoice:
    """``engines.choose_engine`` for ``entry`` on this host (the CLI asks the same function)."""
    return engines.choose_engine(entry.folder)


def get_engine(entry: catalog.Entry, name: str | None = None):
    """The shared engine of ``entry`` (default: the policy's choice); one per process, every session."""
    return _engine(str(entry.folder), _mtime(entry), name or engine_choice(entry).name)


def engine_picker(entry: catalog.Entry, key: str) -> str:
    """Select an engine for ``entry``; the policy's choice is preselected. The widget is keyed per
    model (``key:model``): another model starts on its own choice, not on the last one."""
    choice = engine_choice(entry)

    def label(n: str) -> str:
        f = choice.figures.get(n)
        extra = f" ({f.speedup:.1f}x{' here' if f.timed_here else ''}, {f.miou_delta:+.2f} mIoU)" \
            if f is not None and f.speedup is not None and f.miou_delta is not None else ""
        return n + extra + (" — chosen here" if n == choice.name else "") + \
            (" — reference" if n == engines.REFERENCE else "")
    options = choice.runnable
    return st.selectbox("Inference engine", options, index=0, key=f"{key}:{entry.key}", format_func=label,
                        help="eager = PyTorch fp32, the reference. Chosen here: the fastest engine whose val "
                             f"mIoU stayed within {engines.MAX_MIOU_DELTA} point of it, timed on this host where "
                             "the Benchmark page kept a comparison, else on the machine that shipped the model.")


MODES = ("Fast", "Accurate")


def mode_picker(entry: catalog.Entry, key: str) -> str:
    """Fast (one pass on the model's engine) or Accurate (multi-scale + flip test-time augmentation),
    each with its val mIoU from the card and, for Accurate, its time against Fast on the machine that measured it."""
    card = zoo.read_card(entry.folder)
    acc = card.modes.get(ACCURATE_MODE)
    fig = engine_choice(entry).figure
    ms = fig.median_ms if fig is not None else None
    where = "" if ms is None else " here" if fig.timed_here else " when shipped"

    def caption(mode: str) -> str:
        if mode == "Fast":
            return (f"val mIoU {100 * card.val_miou:.1f}" if card.val_miou is not None else "one pass") + \
                (f" · {ms:.0f} ms{where}" if ms else "")
        if acc is None or acc.miou is None:
            return "multi-scale + flip (not measured for this model)"
        return f"val mIoU {100 * acc.miou:.1f}, about {acc.latency_x:.0f}x the time" + \
            (f" (~{ms * acc.latency_x:.0f} ms{where})" if ms else "")
    return st.radio("Mode", MODES, horizontal=True, key=f"{key}:{entry.key}", captions=[caption(m) for m in MODES],
                    help="Accurate averages the model's class probabilities over four scales (0.75-1.5) and their "
                         "mirror images: better on thin and small objects, about ten times slower.")


def _mode_engine(entry: catalog.Entry, engine: str | None, mode: str):
    base = get_engine(entry, engine)
    return base if mode == "Fast" else engines.AccurateEngine([base], engines.TTA.from_mode(ACCURATE_MODE))


def _run(fast, fallback):
    """fast() on the chosen engine; if that engine fails here, fallback() on PyTorch fp32, with a
    note in the result that says so (shown on every rerun, not only the one that failed)."""
    try:
        return fast()
    except Exception as e:  # noqa: BLE001 - any engine failure: degrade, never break the page
        res = fallback()
        res.note = f"The inference engine failed here ({type(e).__name__}: {e}); used PyTorch fp32 instead."
        return res


def dashboard_rows(entries: dict[str, catalog.Entry]) -> list[report.DashboardRow]:
    return [report.dashboard_row(k, e.folder, engine_choice(e)) for k, e in entries.items()]


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
    labels = {k: _describe(k, entries[k], default) for k in keys}
    choice = st.selectbox(label, keys, index=keys.index(default), key=key, format_func=labels.__getitem__)
    return entries[choice]


def _describe(key: str, entry: catalog.Entry | None = None, default: str | None = None) -> str:
    """Picker label: name, the card's val mIoU (so the most accurate is easy to find), paper pair."""
    miou = zoo.read_card(entry.folder).val_miou if entry is not None else None
    score = f" · val mIoU {100 * miou:.1f}" if isinstance(miou, (int, float)) else ""
    if key.startswith("run:"):
        return f"{key[4:]} (fine-tuned here){score}"
    paper = zoo.MODELS[key].paper if key in zoo.MODELS else None
    # the score right after the name: narrow columns cut the end of the label
    return (f"{key}" + score + (f" — {paper}" if paper else "") +
            (" (default)" if key == default else ""))


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


def segment_cached(entry: catalog.Entry, image_key: str, image, truth=None,
                   engine: str | None = None, slot: str = "segment", mode: str = "Fast") -> report.Segmentation:
    """report.segment for (model, engine, mode, image), remembering only the latest result per ``slot``
    (a page) in the session."""
    engine = engine or engine_choice(entry).name
    key = (str(entry.folder), engine, mode, image_key)
    last = st.session_state.get(f"_seg_last:{slot}")
    if last is None or last[0] != key:
        with st.spinner(f"Segmenting with {engine} (a new image size builds its graph once)..."), _inference_gate():
            res = _run(lambda: report.segment(_mode_engine(entry, engine, mode), image, truth),
                       lambda: report.segment(_mode_engine(entry, engines.REFERENCE, mode), image, truth))
        last = (key, res)
        st.session_state[f"_seg_last:{slot}"] = last
        host.release_memory()
    return last[1]


def compare_models(entries: list[catalog.Entry], image, mode: str = "Fast") -> report.Comparison:
    """report.compare over the shared engines (in ``mode``), then hand the activations' memory back."""
    with _inference_gate():
        res = _run(lambda: report.compare([(e.key, _mode_engine(e, None, mode)) for e in entries], image),
                   lambda: report.compare([(e.key, _mode_engine(e, engines.REFERENCE, mode)) for e in entries], image))
    host.release_memory()
    return res
