"""The shift benchmark: a model on CamVid val under the shifts of ``sis.data.shifts``, each at three
severities, scored through the same image -> labels path as the app (``engines.predict``).

Reported per shift and severity: mIoU, pixel accuracy and the expected calibration error of the
confidence the pages show; and the mean over shifts (each shift weighs the same). Every image's
mean confidence is kept too, to measure how well a score tells shifted frames from clean ones.
numpy and Pillow only: it runs on the graph engines.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sis import metrics
from sis.classes import ClassSet
from sis.data.dataset import list_pairs, read_label, read_rgb
from sis.data.shifts import SEVERITIES, get_shift, shifted
from sis.engines.predict import predict

CLEAN = "clean"


@dataclass(frozen=True)
class ShiftScore:
    """One model on one shifted set (or the clean one: shift 'clean', severity 0)."""
    shift: str
    severity: int
    miou: float
    pixel_acc: float
    ece: float
    per_class_iou: dict
    mean_confidence: list = field(default_factory=list)  # per frame: the mean max-probability
    ms: float = 0.0                                      # median per frame


@dataclass
class ShiftReport:
    model: str
    engine: str
    frames: int
    seed: int
    clean: ShiftScore
    scores: list[ShiftScore]

    def by_shift(self) -> dict[str, float]:
        """Mean mIoU over the severities, per shift."""
        out: dict[str, list[float]] = {}
        for s in self.scores:
            out.setdefault(s.shift, []).append(s.miou)
        return {k: float(np.mean(v)) for k, v in out.items()}

    @property
    def mean(self) -> float:
        """The benchmark's figure: the mean over shifts of each shift's mean over severities."""
        return float(np.mean(list(self.by_shift().values())))

    @property
    def ece_shifted(self) -> float:
        return float(np.mean([s.ece for s in self.scores]))

    def score(self, shift: str, severity: int) -> ShiftScore:
        return next(s for s in self.scores if s.shift == shift and s.severity == severity)

    def card_record(self, every: int, command: str) -> dict:
        """The figures a model's card keeps (``shift_benchmark``): the mean, each shift's, calibration and
        how well low confidence flags the severest frames; with where and how they were measured."""
        from sis.host import cpu_model
        return {"mean": self.mean, "by_shift": self.by_shift(), "clean_miou": self.clean.miou,
                "ece_clean": self.clean.ece, "ece_shifted": self.ece_shifted,
                "ood_auroc_severe": ood_auroc(self, max(s.severity for s in self.scores)),
                "frames": self.frames, "every": every, "seed": self.seed, "engine": self.engine,
                "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"), "command": command}

    def to_dict(self) -> dict:
        return {"model": self.model, "engine": self.engine, "frames": self.frames, "seed": self.seed,
                "mean": self.mean, "by_shift": self.by_shift(), "ece_clean": self.clean.ece,
                "ece_shifted": self.ece_shifted, "clean": asdict(self.clean),
                "scores": [asdict(s) for s in self.scores]}


def val_frames(root: Path, limit: int | None = None, every: int = 1) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, rgb, label) of CamVid val (every ``every``-th frame, at most ``limit``), as numpy."""
    pairs = list_pairs(root, "val")[::every][:limit]
    return [(i.stem, read_rgb(i), read_label(lbl)) for i, lbl in pairs]


def score_set(engine, pairs, classes: ClassSet, name: str = CLEAN, severity: int = 0,
              work_rule: str | None = None) -> ShiftScore:
    """One set of (rgb, label) pairs through ``engine``: confusion matrix, calibration bins, and
    each frame's mean confidence."""
    cm = np.zeros((classes.num_classes, classes.num_classes), np.int64)
    bins = np.zeros((metrics.CALIBRATION_BINS, 3))
    conf, times = [], []
    void = classes.void if classes.void is not None else 255
    for rgb, label in pairs:
        pred = predict(engine, rgb, work_rule)
        cm += metrics.confusion_matrix(pred.labels, label, classes.num_classes, classes.void)
        valid = (label != void) & (label < classes.num_classes)
        bins += metrics.calibration_bins(pred.confidence[valid], (pred.labels == label)[valid])
        conf.append(float(pred.confidence.mean()))
        times.append(pred.ms)
    s = metrics.summarize(cm, classes.names)
    return ShiftScore(name, severity, s["miou"], s["pixel_acc"], metrics.expected_calibration_error(bins),
                      s["per_class_iou"], conf, float(np.median(times)) if times else 0.0)


def shift_benchmark(engine, frames, shifts: list[str], severities=SEVERITIES, seed: int = 0,
                    model: str = "", progress: Callable[[str, int, int], None] | None = None,
                    work_rule: str | None = None) -> ShiftReport:
    """``engine`` on ``frames`` ([(name, rgb, label)], e.g. ``val_frames``) clean and under each shift
    at each severity; the same (frames, shifts, severities, seed) give the same report."""
    classes = engine.cfg.class_set
    void = classes.void if classes.void is not None else 255
    for name in shifts:
        get_shift(name)
    todo = [(CLEAN, 0)] + [(n, s) for n in shifts for s in severities]
    results = []
    t0 = time.perf_counter()
    for k, (name, sev) in enumerate(todo):
        if progress:
            progress(f"{name} {sev}" if sev else name, k, len(todo))
        pairs = [(rgb, lab) if name == CLEAN else shifted(rgb, lab, name, sev, i, seed, void)
                 for i, (_, rgb, lab) in enumerate(frames)]
        results.append(score_set(engine, pairs, classes, name, sev, work_rule))
    if progress:
        progress(f"done in {time.perf_counter() - t0:.0f} s", len(todo), len(todo))
    return ShiftReport(model or engine.cfg.name, engine.name, len(frames), seed, results[0], results[1:])


def ood_auroc(report: ShiftReport, severity: int = 3) -> float:
    """How well a frame's mean confidence tells the shifted frames at ``severity`` from clean val:
    the AUROC of (1 - mean confidence), shifted frames as positives."""
    shifted_conf = [c for s in report.scores if s.severity == severity for c in s.mean_confidence]
    return metrics.auroc([1 - c for c in shifted_conf], [1 - c for c in report.clean.mean_confidence])


@dataclass(frozen=True)
class WarningRate:
    """How often Segment warns that a photo looks unfamiliar (mean confidence below the card's line), on the
    benchmark's frames."""
    clean: float                 # share of clean val frames
    severe: float                # share of the frames at the severest level, every shift together
    by_shift: dict               # shift -> share of its frames at the severest level
    severity: int


def warning_rate(report: ShiftReport, unsure: Callable[[float], bool]) -> WarningRate:
    """``WarningRate`` for ``report``: a frame counts where ``unsure(its mean confidence)`` (the card's
    ``ModelCard.unsure``, the pages' rule)."""
    def share(scores: list[ShiftScore]) -> float:
        said = [unsure(c) for s in scores for c in s.mean_confidence]
        return float(np.mean(said)) if said else 0.0
    sev = max(s.severity for s in report.scores)
    top = [s for s in report.scores if s.severity == sev]
    return WarningRate(share([report.clean]), share(top), {s.shift: share([s]) for s in top}, sev)
