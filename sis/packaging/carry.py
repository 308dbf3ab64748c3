"""A model derived from a shipped one (fine-tuned or adapted, the same architecture) given its start's graphs:
the templates carried over and filled from its own weights, its fp32 and int8 graphs checked against eager fp32
on a few of its own frames, and its start's engine timings kept for the engines that pass."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch

from sis.zoo import models


GRAPH = "onnxruntime"  # the fp32 graph: eager's arithmetic, so a model derived from one with graphs may run on it
INT8 = "onnxruntime-int8"  # the int8 graph: checked against the start's own int8 graph, not against eager alone
CHECK_FRAMES = 4       # frames a derived model's graphs are checked on: int8's agreement varies frame to frame
INT8_SLACK = 0.02      # int8 agreement it may lose to its start's: above noise, below harm (docs/robustness.md)
CARRY_STAGES = 3       # what carried_engines tells ``say``: its fp32 graph checked, its int8 graph checked, scored


def check_picks(frames: list) -> list:
    """The CHECK_FRAMES of ``frames``, spread over them, that a derived model's graphs are checked on."""
    return frames[:: max(1, len(frames) // CHECK_FRAMES)][:CHECK_FRAMES]


def eager_labels(model: torch.nn.Module, cfg, images: list) -> list:
    """Eager fp32's labels of ``model`` for each of ``images`` ((1, 3, h, w) uint8 each): what a graph's are
    checked against (agreement_matrices)."""
    from sis import engines as E
    eager = E.create_engine(E.REFERENCE, model, cfg)
    with torch.inference_mode():
        return [eager(x).argmax(1) for x in images]


def agreement_matrices(folder: Path, model: torch.nn.Module, cfg, images: list, name: str = GRAPH,
                       truth: list | None = None) -> list:
    """Per image of ``images`` ((1, 3, h, w) uint8 each, as the model is given them), the confusion matrix of
    engine ``name``'s labels (the model saved in ``folder``) against eager fp32's on ``model`` (the same
    weights, in memory), or against ``truth`` (eager_labels' for them, where the caller has them)."""
    from sis import engines as E
    from sis.metrics import confusion_matrix
    # eager's labels first, then the graph alone: one engine's memory at a time
    truth = eager_labels(model, cfg, images) if truth is None else truth
    other = E.create_engine(name, None, cfg, folder=folder)
    out = []
    for x, t in zip(images, truth):
        other.prepare(tuple(x.shape[-2:]))
        out.append(confusion_matrix(other(x).argmax(1), t, cfg.class_set.num_classes))
    return out


def alike(matrices: list) -> float:
    """The mIoU of labels pooled over ``matrices`` (agreement_matrices'), 1.0 where they agree on every pixel."""
    import numpy as np

    from sis.metrics import mean_iou
    return mean_iou(np.asarray(sum(matrices)))


def agreement(folder: Path, model: torch.nn.Module, cfg, images: list, name: str = GRAPH,
              truth: list | None = None) -> float:
    """How alike engine ``name`` (the model saved in ``folder``) labels ``images`` to eager fp32 on ``model``
    (or to ``truth``, eager_labels' for them): the mIoU of its labels scored against eager's
    (agreement_matrices), 1.0 where they agree on every pixel. A check that needs no labels."""
    return alike(agreement_matrices(folder, model, cfg, images, name, truth))


def carried_engines(start: Path, out: Path, frames: list, given: Callable, said: str,
                    labelled: tuple | None = None, eager_miou: float | None = None,
                    say: Callable[[str], None] = lambda what: None) -> dict | None:
    """The engine figures (a card's ``fast_path``) of the model saved in ``out``, adapted or fine-tuned from
    the one in ``start`` with the same architecture: ``start``'s graph templates carried to it (filled from
    its own weights; engines.templates), its fp32 graph's labels checked against eager's on CHECK_FRAMES of
    ``frames`` spread over them, its int8 graph's against ``start``'s int8 graph's (_carried_int8), and
    ``start``'s timings of the engines that pass, the architecture's. ``given`` makes a frame the (1, 3, h, w)
    uint8 array the model is given; ``said`` names the frames, in words. ``labelled`` ((Frames, their name in
    words): a fine-tune's labelled frames it did not train on, where it has any) gives its int8 graph a val
    figure of its own (_scored_int8) in place of ``start``'s; ``eager_miou``: eager fp32's mIoU on them for
    the saved weights, where the caller has it. ``say`` is told each of its CARRY_STAGES, in words, as it starts.
    None where ``start``'s card has no such timings, or where no graph can be built for ``out`` or it is not
    eager's (its templates and graphs are then removed): the model in ``out`` then runs eager."""
    from sis import zoo
    from sis.engines import MAX_MIOU_DELTA, REFERENCE
    from sis.engines.cache import cached_for
    from sis.engines.templates import carry_templates
    fast = zoo.read_card(start).fast_path
    timed = fast.backends
    if not frames or not (timed.get(REFERENCE) or {}).get("median_ms") or \
            not (timed.get(GRAPH) or {}).get("speedup_vs_eager"):
        return None
    picks = check_picks(frames)
    say(f"building its fast graph and checking its labels against PyTorch's on {len(picks)} frames")
    carry_templates(start, out)
    try:
        model, cfg = models.load_model(out)  # as saved: a fine-tune may have saved fp16 weights
        seen = [given(f) for f in picks]
        truth = eager_labels(model, cfg, seen)  # one eager pass serves the fp32 and the int8 graph's checks
        agree = agreement(out, model, cfg, seen, GRAPH, truth)
    except Exception:  # any graph that cannot be built or run for these weights: the model still runs eager
        agree = None
    delta = None if agree is None else 100 * (agree - 1)
    if delta is None or abs(delta) > MAX_MIOU_DELTA:  # not eager's graph: none of it is kept, built or carried
        for t in [*Path(out).glob("graph-*.onnx"), *cached_for(out)]:
            t.unlink(missing_ok=True)
        return None
    kept = ("median_ms", "p90_ms", "images_per_s", "speedup_vs_eager")
    backends = {
        REFERENCE: {k: timed[REFERENCE].get(k) for k in kept} | {"miou_delta": 0.0},
        GRAPH: {k: timed[GRAPH].get(k) for k in kept} | {
            "miou_delta": delta, "agreement": agree,
            "miou_note": f"its labels scored against eager fp32's on {len(picks)} of {said}: "
                         f"{100 * agree:.2f}% mIoU alike"}}
    say(f"checking its int8 graph on the same {len(picks)} frames")
    int8 = _carried_int8(start, out, model, cfg, seen, timed.get(INT8) or {}, said, truth)
    if int8 and labelled is not None and len(labelled[0]):
        say(f"scoring its int8 graph on {len(labelled[0])} of {labelled[1]}")
        try:
            int8 = _scored_int8(out, cfg, labelled, int8, said, eager_miou)
        except Exception:  # an int8 graph that cannot score these frames: the fp32 graph serves
            int8 = _drop_int8(out)
    if int8:
        backends[INT8] = {k: timed[INT8].get(k) for k in kept} | int8
    return {"backends": backends,
            "size": fast.size, "threads": fast.threads, "cpu": fast.cpu,
            "timing_note": f"timings kept from {Path(start).name}'s card: the same architecture and graphs; "
                           f"{'the fp32 and int8 graphs' if int8 else 'only the fp32 graph'} checked for these "
                           "weights, the other engines unchecked"}


def _carried_int8(start: Path, out: Path, model, cfg, images: list, timed: dict, said: str,
                  truth: list | None = None) -> dict | None:
    """The accuracy figures of ``out``'s int8 graph, quantised with ``start``'s activation ranges (carried
    beside its weights): kept where its labels agree with eager's on ``images`` within INT8_SLACK of how
    ``start``'s int8 graph agrees with ``start``'s eager on the same frames, whose val check it passed. No
    labels, so no val figure of its own: the start's is kept, with both agreements. ``truth``: eager's labels
    of ``images`` for ``out``'s weights (eager_labels'), where the caller has them. None where ``start``
    has no checked int8 graph or this one labels less alike (the carried ranges are then removed)."""
    from sis.engines import MAX_MIOU_DELTA
    from sis.engines.int8 import RANGES_FILE
    from sis.files import atomic_write
    ranges = Path(start) / RANGES_FILE
    delta = timed.get("miou_delta")
    if not ranges.is_file() or not timed.get("speedup_vs_eager") or delta is None or abs(delta) > MAX_MIOU_DELTA:
        return None
    carried = Path(out) / RANGES_FILE
    atomic_write(carried, lambda tmp: shutil.copyfile(ranges, tmp))
    try:
        own = agreement(out, model, cfg, images, INT8, truth)
        theirs = agreement(start, *models.load_model(start), images, INT8)
    except Exception:  # no int8 graph for these weights: the fp32 graph serves
        own = theirs = None
    if own is None or own < theirs - INT8_SLACK:
        return _drop_int8(out)
    return {"miou_delta": delta, "agreement": own, "start_agreement": theirs,
            "miou_note": f"{Path(start).name}'s val figure, with its activation ranges; these weights' int8 labels "
                         f"{100 * own:.2f}% mIoU alike to eager fp32's on {len(images)} of {said}, "
                         f"{Path(start).name}'s {100 * theirs:.2f}% alike to its own on the same"}


def _drop_int8(out: Path) -> None:
    """Remove the ranges carried to ``out`` and any int8 graph cached for it: it runs on its fp32 graph."""
    from sis.engines.cache import cached_for
    from sis.engines.int8 import RANGES_FILE
    (Path(out) / RANGES_FILE).unlink(missing_ok=True)
    for t in cached_for(out, "*.int8.onnx"):
        t.unlink(missing_ok=True)


def _scored_int8(out: Path, cfg, labelled: tuple, int8: dict, said: str, eager_miou: float | None = None) -> dict:
    """``int8`` (_carried_int8's) with the val figure of ``out``'s own int8 graph: its mIoU on the ``labelled``
    frames ((Frames, words)) minus eager fp32's (``eager_miou``, else its fp32 graph's: eager's arithmetic,
    checked), as a shipped model's is measured. ``said`` names the frames it was checked on. The engine
    policy's gate then reads this figure."""
    from sis import engines as E
    from sis.engines import REFERENCE
    from sis.evaluation.evaluate import evaluate
    frames, named = labelled
    miou = {}
    for name in (INT8,) if eager_miou is not None else (GRAPH, INT8):  # one graph engine in memory at a time
        engine = E.create_engine(name, None, cfg, folder=out)
        miou[name] = evaluate(None, cfg, frames, torch.device("cpu"), amp=False, engine=engine)["miou"]
        del engine
    ref, against = (eager_miou, "eager fp32") if eager_miou is not None else (miou[GRAPH], "its fp32 graph")
    delta = 100 * (miou[INT8] - ref)
    return int8 | {"miou_delta": delta, "miou": miou[INT8], "val_frames": len(frames),
                   "against": REFERENCE if eager_miou is not None else GRAPH,
                   "start_miou_delta": int8["miou_delta"],
                   "miou_note": f"its own: mIoU on int8 {100 * miou[INT8]:.2f} against {100 * ref:.2f} on "
                                f"{against}, on all {len(frames)} of {named}; its int8 labels "
                                f"{100 * int8['agreement']:.2f}% mIoU alike to eager fp32's on {CHECK_FRAMES} of "
                                f"{said}, its start's {100 * int8['start_agreement']:.2f}% alike to its own"}
