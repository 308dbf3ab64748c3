"""Models served to the pages: engines cached once per process, the inference gate, and the
library calls the pages make, with a fallback to PyTorch fp32 when an engine fails here.

It imports no torch: on a graph engine the server never loads PyTorch (a hosted instance has
about 1 GB); the torch engines import it on first use."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from sis import engines, host, zoo
from sis.engines.accurate import ACCURATE_MODE
from sis.studio import catalog, correct, uncertainty
from sis.studio.ui.session import inference_gate, latest
from sis.studio.ui.uploads import read_upload
from sis.vis import report


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


def get_engine(entry: catalog.Entry, name: str | None = None) -> engines.Guarded:
    """The shared engine of ``entry`` (default: the policy's choice); one per process, every session.
    Whatever it raises while it loads or runs arrives as engines.EngineFailed (``_run`` falls back on it)."""
    name = name or engine_choice(entry).name
    try:
        engine = _engine(str(entry.folder), _mtime(entry), name)
    except engines.EngineError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot load on this engine: the engine's failure
        raise engines.EngineFailed(f"{type(e).__name__}: {e}") from e
    return engines.Guarded(engine)


MODES = ("Fast", "Accurate")


def offered_ensembles(entry: catalog.Entry) -> list[report.EnsembleNote]:
    """Measured ensembles holding ``entry``'s model that beat their best member on val, in the mode
    measured, whose members are all here (weights/ensembles.json; report.EnsembleNote.offered)."""
    here = catalog.available_models()
    return [n for n in report.ensemble_notes()
            if n.offered and entry.key in n.members and all(m in here for m in n.members)]


ENSEMBLE_MODE_WORDS = {"none": "", "flip": " (flip)", "ms": " (multi-scale + flip)"}


def ensemble_label(note: report.EnsembleNote) -> str:
    """The members by name (what a user picks), not the measurement's name for the group."""
    return f"Ensemble: {' + '.join(note.members)}" + ENSEMBLE_MODE_WORDS.get(note.mode, f" ({note.mode})")


def _mode_engine(entry: catalog.Entry, engine: str | None, mode: str):
    base = get_engine(entry, engine)
    if mode == "Fast":
        return base
    if mode == "Accurate":
        return engines.AccurateEngine([base], engines.TTA.from_mode(ACCURATE_MODE))
    note = next(n for n in offered_ensembles(entry) if ensemble_label(n) == mode)
    here = catalog.available_models()
    members = [base if m == entry.key else get_engine(here[m], None if engine != engines.REFERENCE else engine)
               for m in note.members]
    return engines.AccurateEngine(members, engines.TTA.from_mode(note.mode), names=list(note.members))


def _run(fast, fallback):
    """fast() on the chosen engine; if that engine fails here, fallback() on PyTorch fp32, with a
    note in the result that says so (shown on every rerun, not only the one that failed)."""
    try:
        return fast()
    except engines.EngineError as e:  # only the engine's failures: a bug elsewhere surfaces
        res = fallback()
        res.note = f"The inference engine failed here ({e}); used PyTorch fp32 instead."
        return res


def dashboard_rows(entries: dict[str, catalog.Entry]) -> list[report.DashboardRow]:
    return [report.dashboard_row(k, e.folder, engine_choice(e)) for k, e in entries.items()]


def segment_cached(entry: catalog.Entry, image_key: str, image, truth=None,
                   engine: str | None = None, slot: str = "segment", mode: str = "Fast") -> report.Segmentation:
    """report.segment for (model, engine, mode, image), remembering only the latest result per ``slot``
    (a page) in the session."""
    engine = engine or engine_choice(entry).name

    def run():
        words = f"Segmenting with {engine} (a new image size builds its graph once)..." if mode == "Fast" else (
            f"Segmenting in {mode} mode with {engine}: several passes at several scales; the first photo of a size "
            "builds a graph per scale, which can take a minute on a small CPU...")
        with st.spinner(words, show_time=True), inference_gate():
            res = _run(lambda: report.segment(_mode_engine(entry, engine, mode), image, truth),
                       lambda: report.segment(_mode_engine(entry, engines.REFERENCE, mode), image, truth))
        res.unfamiliar = report.unfamiliarity(res.mean_confidence, zoo.read_card(entry.folder), entry.key,
                                              unsure_of=res.unsure_of,
                                              help_=report.advice("photo", mode != "Fast", report.adapted(entry.folder)))
        host.release_memory()
        return res
    return latest(f"_seg_last:{slot}", (str(entry.folder), engine, mode, image_key), run)


def compare_models(entries: list[catalog.Entry], image, mode: str = "Fast") -> report.Comparison:
    """report.compare over the shared engines (in ``mode``), then hand the activations' memory back."""
    words = f"Segmenting with {len(entries)} models" + (
        "..." if mode == "Fast" else f" in {mode} mode: several passes each; the first photo of a size builds "
        "their graphs, which can take minutes on a small CPU...")
    with st.spinner(words, show_time=True), inference_gate():
        res = _run(lambda: report.compare([(e.key, _mode_engine(e, None, mode)) for e in entries], image),
                   lambda: report.compare([(e.key, _mode_engine(e, engines.REFERENCE, mode)) for e in entries], image))
    res.unfamiliar = report.unfamiliar_to([(r.name, r.mean_confidence, zoo.read_card(e.folder))
                                           for r, e in zip(res.results, entries)])
    host.release_memory()
    return res


class _Gated:
    """An engine that takes the server's inference gate for each call, so that a long ranking lets
    other sessions' photos through between its frames."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):  # cfg, name, temperature, prepare: the engine's own
        return getattr(self.engine, name)

    def __call__(self, x):
        with inference_gate():
            return self.engine(x)


KEEP_DRAFTS = 4  # images whose corrections a session keeps while it moves between them


def correction_draft(entry: catalog.Entry, image_key: str, rgb) -> tuple[correct.Draft, list[str]]:
    """The session's draft for (model, image): the model's answer at its working size and the corrections
    so far, and the other images (by key) whose corrections are kept unsaved. Moving to another image keeps
    a draft (the KEEP_DRAFTS most recent), so that coming back finds its corrections."""
    drafts: dict = st.session_state.setdefault("_drafts", {})
    key = (str(entry.folder), image_key)
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
    return latest("_ranked", ("photos", str(entry.folder), tuple(u.file_id for u in uploads)), rank)


def rank_clip(entry: catalog.Entry, path: Path, stride: int, top: int = 6) -> list[uncertainty.Uncertainty]:
    """The ``top`` least sure of every ``stride``-th frame of a clip (at most video.MAX_SECONDS of it)."""
    def rank():
        with st.spinner("Ranking the clip's frames by the model's uncertainty..."):
            return uncertainty.rank_clip(_Gated(get_engine(entry)), path, stride, top)
    return latest("_ranked", ("clip", str(entry.folder), str(path), stride), rank)
