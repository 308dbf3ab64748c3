"""The one module that joins the library to Streamlit: caching, session identity, shared widgets.

It imports no torch: on a graph engine the server never loads PyTorch (a hosted instance has
about 1 GB); the torch engines import it on first use.
"""
from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas  # noqa: F401 - imported up front: plotly peeks at a half-imported pandas when another
import streamlit as st  # session's thread is importing it (st.dataframe), and a chart then fails with AttributeError

from . import catalog, correct, engines, files, host, jobs, report, store, uncertainty, userdata, video, zoo
from .classes import ClassSet
from .engines.accurate import ACCURATE_MODE
from .data import extract_dataset_zip, list_pairs
from .infer import ImageError, load_image

MAX_UPLOAD_FILES = 8
MAX_UPLOAD_MB = 25  # also server.maxUploadSize in .streamlit/config.toml
MAX_IMAGE_MP = 40
MAX_VIDEO_MB = 200  # server.maxUploadSize in .streamlit/config.toml; photos are held to MAX_UPLOAD_MB here
KEEP_CLIPS_H = 24   # uploaded clips and their results are deleted this many hours after they were written


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
    for folder in ("uploads", "videos", "sessions"):  # sessions: visitors' datasets on a shared server
        files.prune_older(store.data_dir() / folder, KEEP_CLIPS_H * 3600)
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


def offered_ensembles(entry: catalog.Entry) -> list[report.EnsembleNote]:
    """Measured ensembles holding ``entry``'s model that beat their best member on val, in the mode
    measured, whose members are all here (weights/ensembles.json; report.EnsembleNote.offered)."""
    here = catalog.available_models()
    return [n for n in report.ensemble_notes()
            if n.offered and entry.key in n.members and all(m in here for m in n.members)]


def _ensemble_label(note: report.EnsembleNote) -> str:
    return f"Ensemble: {note.name}" + ("" if note.mode == "none" else f" ({note.mode})")


def mode_picker(entry: catalog.Entry, key: str) -> str:
    """Fast (one pass on the model's engine), Accurate (multi-scale + flip test-time augmentation) and
    any offered ensemble holding the model, each with its val mIoU from the card (the ensemble's from
    its measurement) and, for Accurate, its time against Fast on the machine that measured it."""
    card = zoo.read_card(entry.folder)
    acc = card.modes.get(ACCURATE_MODE)
    fig = engine_choice(entry).figure
    ms = fig.median_ms if fig is not None else None
    where = "" if ms is None else " here" if fig.timed_here else " when shipped"
    ensembles = {_ensemble_label(n): n for n in offered_ensembles(entry)}

    def caption(mode: str) -> str:
        if mode == "Fast":
            return (f"val mIoU {100 * card.val_miou:.1f}" if card.val_miou is not None else "one pass") + \
                (f" · {ms:.0f} ms{where}" if ms else "")
        if mode in ensembles:
            n = ensembles[mode]
            return f"val mIoU {100 * n.miou:.1f} ({len(n.members)} models; best alone {100 * n.best_member_miou:.1f})"
        if acc is None or acc.miou is None:
            return "multi-scale + flip (not measured for this model)"
        return f"val mIoU {100 * acc.miou:.1f}, about {acc.latency_x:.0f}x the time" + \
            (f" (~{ms * acc.latency_x:.0f} ms{where})" if ms else "")
    options = [*MODES, *ensembles]
    return st.radio("Mode", options, horizontal=True, key=f"{key}:{entry.key}", captions=[caption(m) for m in options],
                    help="Accurate averages the model's class probabilities over four scales (0.75-1.5) and their "
                         "mirror images: better on thin and small objects, about ten times slower. An ensemble "
                         "averages several models and is offered only where it beat its best member on val.")


def _mode_engine(entry: catalog.Entry, engine: str | None, mode: str):
    base = get_engine(entry, engine)
    if mode == "Fast":
        return base
    if mode == "Accurate":
        return engines.AccurateEngine([base], engines.TTA.from_mode(ACCURATE_MODE))
    note = next(n for n in offered_ensembles(entry) if _ensemble_label(n) == mode)
    here = catalog.available_models()
    members = [base if m == entry.key else get_engine(here[m], None if engine != engines.REFERENCE else engine)
               for m in note.members]
    return engines.AccurateEngine(members, engines.TTA.from_mode(note.mode), names=list(note.members))


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


def access() -> userdata.Access:
    return userdata.Access.from_env()


def datasets_home() -> Path:
    """The datasets folder this session sees: every dataset, or on a shared server its own (userdata.Access)."""
    return access().home(session_id())


SERVER_FOLDER = "a folder on this server (typed below)"


def training_sources(camvid: Path | None) -> dict[str, Path | None]:
    """What the Fine-tune page may train on, by label: CamVid when present, the datasets this session sees,
    the zips it uploaded, and (None) a typed server folder where the operator allows it (userdata.Access)."""
    out: dict[str, Path | None] = {}
    if camvid is not None:
        val = len(list_pairs(camvid, "val")) if (camvid / "val").is_dir() else 0
        out[f"CamVid ({len(list_pairs(camvid, 'train'))} train frames, {val} val)"] = camvid
    for ds in userdata.list_datasets(datasets_home()):
        out[f"{ds.name} ({len(ds.frames)} frames, from the Correct page)"] = ds.root
    for name, root in st.session_state.get("_ft_zips", {}).items():
        if Path(root).is_dir():  # uploads are pruned after KEEP_CLIPS_H hours
            out[f"{name} (uploaded zip)"] = Path(root)
    if access().server_paths:
        out[SERVER_FOLDER] = None
    return out


def stash_dataset_zip(upload) -> Path:
    """Extract an uploaded SegNet-layout zip under data/uploads/ once per upload; it is then listed for
    this session (training_sources). Raises DatasetError for a zip that is not a dataset."""
    zips = st.session_state.setdefault("_ft_zips", {})
    key = f"{upload.name} #{upload.file_id[:6]}"
    if key not in zips or not Path(zips[key]).is_dir():
        zips[key] = str(extract_dataset_zip(upload.getvalue(), store.data_dir() / "uploads" / uuid.uuid4().hex))
    return Path(zips[key])


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


@st.fragment(run_every=1.0)
def follow_job(kind: str, slot: str) -> None:
    """This session's running job of ``kind``: a progress bar (with the time left where the job
    knows it) and Stop, refreshed every second; when the job ends, (result, message) go into
    ``st.session_state[slot]`` and the whole page reruns once to show them."""
    manager, sid = startup(), session_id()
    job = manager.for_session(sid, kind)
    if job is None or st.session_state.get(f"_shown:{kind}") == job.id:
        return
    snap = manager.poll(job.id)
    last, status = snap["last"], snap["status"]
    if status in ("starting", "running", "stopping"):
        if last:
            frac = last["step"] / max(last["total_steps"], 1) if last["total_steps"] else 0.0
            eta = last.get("eta_s")
            text = f"{status}: {last['model']}, {last['step']}/{last['total_steps'] or '?'} {last.get('unit', '')}" + \
                (f", about {eta:.0f} s left" if eta is not None else "")
        else:
            frac, text = 0.0, f"{status}: starting the worker..."
        st.progress(min(frac, 1.0), text=text)
        if st.button("Stop", key=f"{kind}_stop"):
            manager.stop(job.id)
        return
    st.session_state[f"_shown:{kind}"] = job.id
    st.session_state[slot] = (snap["result"], snap["out"], snap["message"] if status != "done" else "")
    st.rerun()  # once, the whole page: what follows the progress bar shows the result


def _copy(upload, target: Path) -> None:
    """The upload's bytes to ``target`` in 1 MB pieces (getvalue() would hold a second copy of a clip)."""
    import shutil
    upload.seek(0)
    with open(target, "wb") as f:
        shutil.copyfileobj(upload, f, 2**20)


def stash_clip(upload) -> tuple[Path, video.VideoInfo] | None:
    """Write an st.file_uploader clip to the data folder once (a worker process reads it from there)
    and probe it; None after showing the one-sentence reason it cannot be used."""
    if upload.size > MAX_VIDEO_MB * 2**20:
        st.error(f"{upload.name} is {upload.size / 2**20:.0f} MB, above the {MAX_VIDEO_MB} MB limit for clips")
        return None
    key = f"_clip:{upload.file_id}"
    if key not in st.session_state:
        suffix = Path(upload.name).suffix.lower()
        path = store.data_dir() / "uploads" / f"{upload.file_id}{suffix}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write(path, lambda tmp: _copy(upload, tmp))
            st.session_state[key] = (path, video.probe(path))
        except (video.VideoError, files.DiskFullError) as e:
            files.remove(path)
            st.session_state[key] = str(e)
    got = st.session_state[key]
    if isinstance(got, str):
        st.error(got.replace(f"{upload.file_id}{Path(upload.name).suffix.lower()}", upload.name))
        return None
    return got


def segment_cached(entry: catalog.Entry, image_key: str, image, truth=None,
                   engine: str | None = None, slot: str = "segment", mode: str = "Fast") -> report.Segmentation:
    """report.segment for (model, engine, mode, image), remembering only the latest result per ``slot``
    (a page) in the session."""
    engine = engine or engine_choice(entry).name

    def run():
        with st.spinner(f"Segmenting with {engine} (a new image size builds its graph once)..."), _inference_gate():
            res = _run(lambda: report.segment(_mode_engine(entry, engine, mode), image, truth),
                       lambda: report.segment(_mode_engine(entry, engines.REFERENCE, mode), image, truth))
        host.release_memory()
        return res
    return _latest(f"_seg_last:{slot}", (str(entry.folder), engine, mode, image_key), run)


def _latest(slot: str, key: tuple, compute):
    """``compute()`` once per key; the session keeps only the latest result under ``slot``."""
    if st.session_state.get(slot, (None,))[0] != key:
        st.session_state[slot] = (key, compute())
    return st.session_state[slot][1]


def compare_models(entries: list[catalog.Entry], image, mode: str = "Fast") -> report.Comparison:
    """report.compare over the shared engines (in ``mode``), then hand the activations' memory back."""
    with _inference_gate():
        res = _run(lambda: report.compare([(e.key, _mode_engine(e, None, mode)) for e in entries], image),
                   lambda: report.compare([(e.key, _mode_engine(e, engines.REFERENCE, mode)) for e in entries], image))
    host.release_memory()
    return res


class _Gated:
    """An engine that takes the server's inference gate for each call, so that a long ranking lets
    other sessions' photos through between its frames."""

    def __init__(self, engine):
        self.engine, self.cfg, self.name = engine, engine.cfg, engine.name

    def prepare(self, size):
        self.engine.prepare(size)

    def __call__(self, x):
        with _inference_gate():
            return self.engine(x)


KEEP_DRAFTS = 4  # images whose corrections a session keeps while it moves between them


def correction_draft(entry: catalog.Entry, image_key: str, rgb) -> tuple[correct.Draft, list[str]]:
    """The session's draft for (model, image): the model's answer at its working size and the corrections
    so far, and the other images (by key) whose corrections are kept unsaved. Moving to another image keeps
    a draft (the KEEP_DRAFTS most recent), so that coming back finds its corrections."""
    drafts: dict = st.session_state.setdefault("_drafts", {})
    key = (str(entry.folder), image_key)
    if drafts and next(reversed(drafts)) != key:
        drafts[next(reversed(drafts))].settle()  # leaving an image: its strokes on the canvas become a step
    draft = drafts.pop(key, None)
    if draft is None:
        with st.spinner("Segmenting..."):
            draft = correct.start(_Gated(get_engine(entry)), rgb)
    drafts[key] = draft  # the most recent last
    while len(drafts) > KEEP_DRAFTS:
        drafts.pop(next(iter(drafts)))
    return draft, [k[1] for k, d in drafts.items() if k != key and d.unsaved]


def rank_photos(entry: catalog.Entry, uploads) -> list[uncertainty.Uncertainty]:
    """Uploaded photos, least sure first (by mean entropy), each with its confidence map; photos that
    cannot be read are said once and left out."""
    def rank():
        loaded = [(u.name, read_upload(u)) for u in uploads]
        with st.spinner(f"Ranking {len(uploads)} photos by the model's uncertainty..."):
            return uncertainty.rank(_Gated(get_engine(entry)), [(n, np.asarray(got.image)) for n, got in loaded if got])
    return _latest("_ranked", ("photos", str(entry.folder), tuple(u.file_id for u in uploads)), rank)


def rank_clip(entry: catalog.Entry, path: Path, stride: int, top: int = 6) -> list[uncertainty.Uncertainty]:
    """The ``top`` least sure of every ``stride``-th frame of a clip (at most video.MAX_SECONDS of it)."""
    def rank():
        with st.spinner("Ranking the clip's frames by the model's uncertainty..."):
            return uncertainty.rank_clip(_Gated(get_engine(entry)), path, stride, top)
    return _latest("_ranked", ("clip", str(entry.folder), str(path), stride), rank)
