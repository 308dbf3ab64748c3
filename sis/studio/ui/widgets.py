"""Widgets the pages share: model, engine and mode pickers, the class legend, a job's progress."""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import streamlit as st

from sis import engines, zoo
from sis.classes import DEFAULT_PALETTE, PALETTES, ClassSet
from sis.engines.accurate import ACCURATE_MODE
from sis.studio import catalog
from sis.studio.ui.serving import MODES, engine_choice, ensemble_label, offered_ensembles
from sis.studio.ui.session import session_id, startup


def engine_picker(entry: catalog.Entry, key: str) -> str:
    """Select an engine for ``entry``; the policy's choice is preselected. The widget is keyed per
    model (``key:model``): another model starts on its own choice, not on the last one."""
    choice = engine_choice(entry)

    def label(n: str) -> str:
        f = choice.figures.get(n)
        extra = f" ({f.speedup:.1f}x{' here' if f.timed_here else ''}, {f.delta_said()})" \
            if f is not None and f.speedup is not None and f.miou_delta is not None else ""
        return n + extra + (" — chosen here" if n == choice.name else "") + \
            (" — reference" if n == engines.REFERENCE else "")
    options = choice.runnable
    return st.selectbox("Inference engine", options, index=0, key=f"{key}:{entry.key}", format_func=label,
                        help="eager = PyTorch fp32, the reference. Chosen here: the fastest engine whose val "
                             f"mIoU stayed within {engines.MAX_MIOU_DELTA} point of it, timed on this host where "
                             "the Benchmark page kept a comparison, else on the machine that shipped the model.")


def mode_picker(entry: catalog.Entry, key: str) -> str:
    """Fast (one pass on the model's engine), Accurate (multi-scale + flip test-time augmentation) and
    any offered ensemble holding the model, each with its val mIoU from the card (the ensemble's from
    its measurement) and, for Accurate, its time against Fast on the machine that measured it."""
    card = zoo.read_card(entry.folder)
    acc = card.modes.get(ACCURATE_MODE)
    fig = engine_choice(entry).figure
    ms = fig.median_ms if fig is not None else None
    where = "" if ms is None else " here" if fig.timed_here else " when shipped"
    ensembles = {ensemble_label(n): n for n in offered_ensembles(entry)}

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


def model_picker(label: str, entries: dict[str, catalog.Entry], key: str) -> catalog.Entry | None:
    if not entries:
        st.error("No trained models are available: the weights/ folder is empty. Train one with "
                 "`python -m sis train` or on the Fine-tune page.")
        return None
    keys = list(entries)
    default = catalog.default_key(entries)
    labels = {k: describe(k, entries[k], default) for k in keys}
    choice = st.selectbox(label, keys, index=keys.index(default), key=key, format_func=labels.__getitem__)
    compared = catalog.verdict(entries[choice])
    if compared is not None and compared.forgot:
        st.warning(f"{choice[4:]} lost {-100 * compared.elsewhere.gain:.1f} points of mIoU on "
                   f"{compared.elsewhere.name.split(' (')[0]} after its fine-tune: it may do worse than the model it "
                   "started from on streets other than yours.")
    return entries[choice]


def describe(key: str, entry: catalog.Entry | None = None, default: str | None = None) -> str:
    """Picker label: name, the card's val mIoU (so the most accurate is easy to find), paper pair; for a
    model fine-tuned here, its before/after verdict where it has one."""
    card = zoo.read_card(entry.folder) if entry is not None else zoo.ModelCard()
    score = f" · val mIoU {100 * card.val_miou:.1f}" if isinstance(card.val_miou, (int, float)) else ""
    if key.startswith("run:"):
        compared = catalog.verdict(entry) if entry is not None else None
        stopped = card.status == "stopped"
        how = "fine-tuned here" if card.adapted_origin is None else "adapted here, no labels"
        # the figures right after the name, how it was made last: a narrow picker cuts the end
        return (f"{key[4:]}" + (f" · {compared.verdict()}" if compared is not None and compared.scores else score) +
                f" ({how}{', stopped' if stopped else ''})")
    paper = zoo.MODELS[key].paper if key in zoo.MODELS else None
    # the score right after the name: narrow columns cut the end of the label
    return (f"{key}" + score + (f" — {paper}" if paper else "") +
            (" (default)" if key == default else ""))


PALETTE_KEY = "sis_palette"


def palette_picker() -> None:
    """The session's colours for label maps (the router's sidebar, so every page keeps the choice)."""
    st.radio("Label colours", list(PALETTES), format_func=PALETTES.get, key=PALETTE_KEY, horizontal=True,
             help="High contrast keeps Road and Car, and every other pair of classes, far apart; the dataset's own "
                  "are CamVid's, whose Road and Car are two purples. Overlays, legends, downloads and videos follow.")


def palette() -> str:
    """The session's palette name (PALETTES): what a worker drawing a clip is given."""
    return st.session_state.get(PALETTE_KEY, DEFAULT_PALETTE)


def shown(classes: ClassSet) -> ClassSet:
    """``classes`` in the session's colours (palette_picker)."""
    return classes.in_palette(palette())


def legend(classes: ClassSet, share=None) -> None:
    chips = []
    for i, (n, c) in enumerate(zip(classes.names, classes.colors)):
        extra = f" {100 * share[i]:.1f}%" if share is not None else ""
        chips.append(f"<span style='display:inline-block;margin:2px 8px 2px 0;white-space:nowrap'>"
                     f"<span style='display:inline-block;width:14px;height:14px;border-radius:3px;"
                     f"background:rgb{tuple(c)};vertical-align:middle;border:1px solid #8886'></span> "
                     f"{n}{extra}</span>")
    st.markdown("<div class='sis-legend'>" + "".join(chips) + "</div>", unsafe_allow_html=True)


def follow_job(kind: str, slot: str) -> None:
    """This session's running job of ``kind``: a progress bar (with the time left where the job
    knows it) and Stop, refreshed every second; when the job ends, (result, message) go into
    ``st.session_state[slot]`` and the whole page reruns once to show them. With no job to follow
    nothing polls: an open page left alone costs the server nothing."""
    job = startup().for_session(session_id(), kind)
    if job is not None and st.session_state.get(f"_shown:{kind}") != job.id:
        _follow(kind, slot, job.id)


@st.fragment(run_every=1.0)
def _follow(kind: str, slot: str, job_id: str) -> None:
    """follow_job's job ``job_id``, polled each second (a fragment reruns with the arguments it was given)."""
    manager = startup()
    snap = manager.poll(job_id)
    last, status = snap.last, snap.status
    if status in ("starting", "running", "stopping"):
        if last:
            frac = last.step / max(last.total_steps, 1) if last.total_steps else 0.0
            eta = last.eta_s
            text = f"{status}: {last.model}, {last.step}/{last.total_steps or '?'} {last.unit}" + \
                (f", about {eta:.0f} s left" if eta is not None else "")
        else:
            frac, text = 0.0, f"{status}: starting the worker..."
        st.progress(min(frac, 1.0), text=text)
        if st.button("Stop", key=f"{kind}_stop"):
            manager.stop(job_id)
        return
    st.session_state[f"_shown:{kind}"] = job_id
    st.session_state[slot] = (snap.result, snap.out, snap.message if status != "done" else "")
    st.rerun()  # once, the whole page: what follows the progress bar shows the result


def adapt_button(entry: catalog.Entry, source: Path, what: str, key: str, picker: str, named: str) -> None:
    """A button that adapts ``entry``'s model to the unlabelled ``source`` (photos or a clip) in a worker,
    its progress and Stop, and when it ends where the new model is, with a button that switches the page's
    model picker (session-state key ``picker``) to it. ``named``: what the new model's name says it was
    adapted to (catalog.adapted_name)."""
    import time

    from sis.studio import jobs
    manager, sid = startup(), session_id()
    job = manager.for_session(sid, "adapt")
    name = catalog.adapted_name(entry.key, named, time.strftime('%m%d-%H%M%S'))
    if st.button(f"Adapt {entry.key} to {what} (no labels needed)", key=key, disabled=job is not None and job.active,
                 help="Re-estimates the model's BatchNorm statistics on these frames (AdaBN), keeping a share of the "
                      "training city's that shrinks as the frames grow in number, then fits its BatchNorm layers to "
                      "surer predictions on them (TENT): one to two minutes on an idle 2-core CPU, longer on a busy "
                      "one (the progress bar says the time left); the result is a new model in every "
                      "picker, the original is kept."):
        try:
            manager.start_adapt(sid, entry.folder, source, name)
        except jobs.JobError as e:
            st.error(f"Not started: {e}.")
    follow_job("adapt", f"{key}:last")
    done = st.session_state.get(f"{key}:last")
    if done:
        result, out, message = done
        if message:
            st.error(message)
        elif result:
            on = f"{result['frames']} frames" if result["offered"] == result["frames"] else \
                f"the first {result['frames']} of {result['offered']} frames (stopped)"
            if result["stride"] > 1:
                on += f" (one in {result['stride']} of the clip)"
            fit = result["fit_steps"]
            fitted = "" if not fit else f", then {fit} fitting steps" + (
                f" of {result['fit_planned']} (stopped)" if fit < result["fit_planned"] else "")
            adapted = f"run:{Path(out).name}"
            st.success(f"Adapted on {on} in {result['seconds']:.0f} s, keeping {result['training_share']:.0%} of the "
                       f"training city's statistics{fitted}: **{adapted}** is in every model picker (the original "
                       "is unchanged).")
            if entry.key == adapted:
                st.caption(f"Now using {adapted}. Without labels nothing here can tell whether adapting helped on "
                           "your street; your eyes can, with the original beside it (on Segment, the switch under "
                           "the photo; on Compare, any photo).")
            elif adapted in catalog.available_models():  # not where it was removed since
                st.button(f"Use {adapted} here", key=f"{key}:use", on_click=_pick, args=(picker, adapted),
                          help="Switches this page's model picker to the adapted model.")


def _pick(picker: str, key: str) -> None:
    st.session_state[picker] = key


CANVAS_COMPONENT = "streamlit-drawable-canvas.streamlit_drawable_canvas"
# Correct keeps one undo, over its own steps: the canvas's toolbar (undo, redo, reset of its strokes) is
# hidden, and with it the invisible hover strip it kept over the controls above the canvas
_CANVAS_CSS = ".dc-toolbar { display: none !important; }"


class _OneRegistration(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.args and record.args[0] == CANVAS_COMPONENT)


@functools.cache
def _canvas_component():
    """The drawing canvas registered again with its stylesheet plus the rule above (once per process)."""
    import streamlit_drawable_canvas as sdc
    build = Path(sdc.__file__).parent / "frontend" / "build"
    css = "\n".join(p.read_text() for p in sorted(build.glob("*.css"))) + "\n" + _CANVAS_CSS
    log = logging.getLogger("streamlit.components.v2.component_registry")
    quiet = _OneRegistration()
    log.addFilter(quiet)  # re-registering a name is deliberate here: no warning for it
    try:
        sdc.out = st.components.v2.component(CANVAS_COMPONENT, js="index-*.js", css=css,
                                             html='<div class="canvas-root"></div>', isolate_styles=True)
    finally:
        log.removeFilter(quiet)
    return sdc.st_canvas


def canvas(**kw):
    """st_canvas without its own toolbar (the page's buttons undo); the same arguments and result."""
    return _canvas_component()(**kw)
