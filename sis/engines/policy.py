"""The one answer to "which engine runs this model here", with the reason for every other.

Every caller asks ``choose_engine``: the app's pickers and dashboard, ``predict``, the Benchmark
page and the tests. The rule, in order:

1. An engine that cannot run here is passed over (missing package, CPU-only engine on CUDA,
   no fast bf16 on this CPU).
2. On a small host (under ``host.SMALL_HOST_MB``, e.g. a hosted instance's 1 GB) only graph
   engines compete: a PyTorch model beside the graphs does not fit.
3. An engine competes only with an accuracy check: its val mIoU within ``MAX_MIOU_DELTA``
   points of eager fp32, and faster than eager.
4. Speeds come from this host's kept comparison where there is one (only the engines it timed
   compete: speeds from two machines do not compare), else from the card (the machine that
   shipped the model); accuracy deltas from this host's run where it had val frames, else the card's.
5. The fastest wins; eager fp32 runs when nothing passes. On CUDA, bf16 runs unless its check failed.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sis import host, store
from sis.engines.cache import file_key
from sis.engines.names import ENGINES, REFERENCE, is_graph, unavailable_reason
from sis.zoo.card import EngineRecord, ModelCard, read_card
from sis.zoo.registry import read_config

MAX_MIOU_DELTA = 0.5  # points of val mIoU an engine may lose against eager fp32
KEEP_MIN_ROUNDS = 5  # a comparison of fewer rounds is too noisy to pick a host's default engine
BUSY_SHARE = 0.2  # other processes' share of the CPU above which a timing is not this host's (docs/decisions.md)


@dataclass(frozen=True)
class EngineFigure:
    """What is known of one engine for one model: speed-up over eager, accuracy delta, and where from."""
    speedup: float | None
    miou_delta: float | None
    median_ms: float | None
    timed_here: bool  # speed from this host's kept comparison (else the card's)
    delta_of_start: bool = False  # miou_delta is the start's, not its own (EngineRecord.delta_of_start)

    def delta_said(self, against: str = "") -> str:
        """The accuracy delta in words (``against``: what it is against, after the figure), '' where unknown."""
        if self.miou_delta is None:
            return ""
        return f"{self.miou_delta:+.2f} mIoU{against}" + (", its start's figure" if self.delta_of_start else "")


@dataclass(frozen=True)
class EngineChoice:
    """The engine to run, its figures, and why each other engine was passed over."""
    name: str
    figures: dict = field(default_factory=dict)      # engine -> EngineFigure, where anything is known
    passed_over: dict = field(default_factory=dict)  # engine -> one sentence
    unavailable: frozenset = frozenset()              # those of passed_over that cannot run here at all

    @property
    def figure(self) -> EngineFigure | None:
        return self.figures.get(self.name)

    @property
    def runnable(self) -> list[str]:
        """Engines a user may pick here: the chosen one first, then those passed over on merit only."""
        return [self.name] + [n for n in ENGINES if n != self.name and n in self.passed_over
                              and n not in self.unavailable]

    def reason(self) -> str:
        """One line: the engine, its figures and their source."""
        f = self.figure
        if f is None or f.speedup is None:
            return f"{self.name} (no checked faster engine for this model here)"
        delta = f", {f.delta_said(' against it')}" if f.miou_delta is not None else ""
        return f"{self.name} ({f.speedup:.1f}x eager{delta}; {'timed on this host' if f.timed_here else 'card'})"


_UNAVAILABLE = "unavailable: "


def figures(card: ModelCard, here: dict[str, EngineRecord] | None) -> dict[str, EngineFigure]:
    """Each engine's speed (this host's comparison where it timed it, else the card's) and accuracy
    delta (this host's run where it had val frames, else the card's)."""
    out = {}
    for n in ENGINES:
        h, c = (here or {}).get(n), card.engines.get(n)
        if h is None and c is None:
            continue
        timed = h if here else c  # with a comparison here, the card's speeds do not count
        own = h is not None and h.miou_delta is not None
        delta = h.miou_delta if own else (c.miou_delta if c else None)
        out[n] = EngineFigure(timed.speedup if timed else None, delta, timed.median_ms if timed else None,
                              bool(here) and h is not None, not own and c is not None and c.delta_of_start)
    return out


def decide(card: ModelCard, here: dict[str, EngineRecord] | None = None, device: str = "cpu",
           small_host: bool = False, probe: bool = True) -> EngineChoice:
    """The rule above, on given facts (``choose_engine`` gathers them for a folder and this host)."""
    figs = figures(card, here)
    passed: dict[str, str] = {}
    unavailable: set[str] = set()
    ranked: list[tuple[float, str]] = []
    cuda = device.startswith("cuda")
    for n in ENGINES:
        if n == REFERENCE:
            continue
        why = unavailable_reason(n, device, probe=False)
        if why:
            passed[n] = _UNAVAILABLE + why
            unavailable.add(n)
            continue
        if small_host and not is_graph(n):
            passed[n] = (f"needs the PyTorch model in memory; this host has under {host.SMALL_HOST_MB} MB, "
                         "so it keeps to graph engines")
            continue
        f = figs.get(n)
        delta = f.miou_delta if f else None
        if delta is not None and abs(delta) > MAX_MIOU_DELTA:
            passed[n] = f"its val mIoU moved {delta:+.2f} points from eager's (the gate is {MAX_MIOU_DELTA})"
        elif cuda:  # the card's speeds are CPU timings; bf16 pays on every CUDA GPU
            ranked.append((float("inf"), n))
        elif here and (f is None or not f.timed_here):
            passed[n] = "not timed in this host's kept engine comparison"
        elif f is None or f.speedup is None:
            passed[n] = "no speed recorded for it (the card or a comparison on this host)"
        elif delta is None:
            passed[n] = "no accuracy check recorded for these weights"
        elif f.speedup <= 1.0:
            passed[n] = f"not faster than eager ({f.speedup:.2f}x)"
        else:
            ranked.append((f.speedup, n))
    chosen = None
    for speed, n in sorted(ranked, reverse=True):
        if chosen is None:
            why = unavailable_reason(n, device, probe=probe)  # now worth timing bf16's probe
            if why:
                passed[n] = _UNAVAILABLE + why
                unavailable.add(n)
                continue
            chosen = n
        else:
            best = figs[chosen].speedup if chosen in figs else None
            passed[n] = f"slower than {chosen}" + (f" ({speed:.1f}x against {best:.1f}x)" if best and speed != float("inf")
                                                     and best != float("inf") else "")
    if chosen is None:
        chosen = REFERENCE
    else:
        passed[REFERENCE] = f"the fp32 reference; {chosen} passed its accuracy check and is faster"
    return EngineChoice(chosen, figs, passed, frozenset(unavailable))


def choose_engine(folder: Path, device: str = "cpu") -> EngineChoice:
    """The engine that runs the model in ``folder`` on ``device`` on this host, and why (see the module).
    Decided once per version of the model's files and of the kept comparisons: a page's rerun asks
    several times and reads no database."""
    folder = Path(folder).resolve()
    card = folder / "card.json"
    card_stamp = card.stat().st_mtime_ns if card.is_file() else None
    facts = (host.is_small(), "torch" in sys.modules, os.environ.get("SIS_CPU_BF16"))  # what availability reads
    return _choose(folder, device, file_key(folder), card_stamp, store.stamp() if device == "cpu" else None, facts)


@functools.lru_cache(maxsize=64)
def _choose(folder: Path, device: str, weights: str, card_stamp, store_stamp, facts: tuple) -> EngineChoice:
    here = kept_comparison(folder) if device == "cpu" else None
    return decide(read_card(folder), here, device, facts[0])


def kept_comparison(folder: Path) -> dict[str, EngineRecord] | None:
    """This host's kept engine comparison for ``folder``'s weights, or None."""
    got = store.get_engines(host.host_key(), file_key(folder))
    return {n: EngineRecord.from_dict(r) for n, r in got["backends"].items()} if got else None


@dataclass(frozen=True)
class NotKept:
    """Why an engine comparison does not stand as this host's timing: a kind to act on, a sentence to show."""
    kind: str      # size | rounds | engines | busy (busy: the same comparison may stand on a quiet machine)
    sentence: str


def why_not_kept(res: dict) -> NotKept | None:
    """None where a ``bench.compare_engines`` result may stand as this host's engine timing, else one
    sentence why not: only a comparison at the model's base size, with every engine available here
    timed over at least KEEP_MIN_ROUNDS rounds (two rounds can rank engines the other way round),
    while other processes used at most BUSY_SHARE of the CPU (a busy machine slows every engine)."""
    folder = Path(res["folder"])
    runnable = {n for n, why in ((n, unavailable_reason(n)) for n in ENGINES) if why is None}
    base = list(read_config(folder).base_size)
    if list(res["size"]) != base:
        return NotKept("size", f"it was timed at {res['size'][0]}x{res['size'][1]}, not at the model's base size "
                               f"{base[0]}x{base[1]}")
    if res["repeats"] < KEEP_MIN_ROUNDS:
        return NotKept("rounds", f"{res['repeats']} rounds are too few to rank engines (at least {KEEP_MIN_ROUNDS})")
    if set(res["engines"]) != runnable:
        return NotKept("engines", "not every engine available here was timed")
    busy = res.get("others_cpu_share")
    if busy is not None and busy > BUSY_SHARE:
        return NotKept("busy", f"other programs used {100 * busy:.0f}% of the CPU while it ran (at most "
                               f"{100 * BUSY_SHARE:.0f}% counts as idle): run it again when the machine is quiet")
    return None


def judge_comparison(res: dict) -> NotKept | None:
    """Keep ``res`` (a ``bench.compare_engines`` result) as this host's engine timing for the model's weights
    (SQLite, the app's data folder) where ``why_not_kept`` finds nothing against it; ``choose_engine`` then
    prefers it to the card. Says so in ``res`` (``kept_for_this_host``, and ``not_kept``: {kind, sentence},
    for the page the worker hands it to) and returns why it was not kept, None where it was."""
    not_kept = why_not_kept(res)
    res["not_kept"] = None if not_kept is None else {"kind": not_kept.kind, "sentence": not_kept.sentence}
    res["kept_for_this_host"] = not_kept is None
    if not_kept is None:
        store.put_engines(res["host"]["host_key"], file_key(Path(res["folder"])), res["model"], res["engines"])
    return not_kept
