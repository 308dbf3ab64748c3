"""Before and after a fine-tune: what the new model gained on the user's frames and lost elsewhere.

Run in the fine-tuning worker once the new model is saved: both models are scored on the frames the
run validated on (the user's held-out frames, or the dataset's val split) and on the base dataset's
val split (what the model may have forgotten), and both answer a few of the training frames, so
that the page can show the masks side by side. Everything lands in ``<new model>/before_after/``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sis.data.dataset import Frames, load_split
from sis.files import atomic_write

FOLDER = "before_after"
STEPS = 60            # a fine-tune on a user's few corrected frames: beat 20 on every street measured (docs/correct.md)
FORGOT = 0.01         # a fine-tune that lost more than this (1 point of mIoU) on the base data is flagged
SHOWN = 4             # training frames whose masks are shown before and after
ELSEWHERE_LIMIT = 20  # base val frames scored for forgetting


@dataclass(frozen=True)
class Scores:
    """One set of frames scored by both models (``metrics.summarize`` of each)."""
    name: str
    frames: int
    before: dict
    after: dict

    @property
    def gain(self) -> float:
        return self.after["miou"] - self.before["miou"]


@dataclass(frozen=True)
class MaskPair:
    """One training frame: PNG overlays of its label (the user's correction), and of both models' answers."""
    frame: str
    truth: str
    before: str
    after: str

    @property
    def title(self) -> str:
        """The frame's name without the time and random parts a saved frame's name starts with."""
        return self.frame.split("-", 3)[-1]


@dataclass(frozen=True)
class BeforeAfter:
    base: str
    classes: tuple[str, ...]
    scores: tuple[Scores, ...]
    masks: tuple[MaskPair, ...]

    def table(self) -> list[dict]:
        """Per-class IoU (%) before and after on each set of frames, one row per class, then the mean."""
        rows = []
        for c, name in enumerate([*self.classes, "mean (mIoU)"]):
            row = {"class": name}
            for sc in self.scores:
                b, a = ((sc.before["miou"], sc.after["miou"]) if c == len(self.classes) else
                        (sc.before["per_class_iou"].get(name), sc.after["per_class_iou"].get(name)))
                short = sc.name.split(" (")[0]
                row[f"{short}: before"] = None if b is None else round(100 * b, 1)
                row[f"{short}: after"] = None if a is None else round(100 * a, 1)
                row[f"{short}: change"] = None if a is None or b is None else round(100 * (a - b), 1)
            rows.append(row)
        return rows

    @property
    def elsewhere(self) -> Scores | None:
        """The base data's score (what the model may have forgotten), where it was measured."""
        return next((sc for sc in self.scores if sc.name.endswith("(what the model may forget)")), None)

    @property
    def forgot(self) -> bool:
        """It lost more than FORGOT of mIoU on the base data."""
        return self.elsewhere is not None and self.elsewhere.gain < -FORGOT

    def verdict(self) -> str:
        """In a few words, for the pickers: each set's change, e.g. '+5.9 on your frames, -1.2 on camvid'."""
        parts = []
        for sc in self.scores:
            where = sc.name.split(" (")[0].replace(" val", "").replace("the dataset's val frames", "its val") \
                .replace("your held-out frames", "your frames")
            parts.append(f"{100 * sc.gain:+.1f} on {where}")
        return ", ".join(parts) + (" — forgot" if self.forgot else "")

    def save(self, folder: Path) -> None:
        atomic_write(Path(folder) / FOLDER / "summary.json",
                     lambda tmp: tmp.write_text(json.dumps(asdict(self), indent=1)))

    @classmethod
    def load(cls, model_folder: Path) -> "BeforeAfter | None":
        """The comparison kept in a fine-tuned model's folder, None where the run made none."""
        path = Path(model_folder) / FOLDER / "summary.json"
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError):  # none made, or a file cut short: no verdict rather than an error
            return None
        return cls(d["base"], tuple(d["classes"]), tuple(Scores(**s) for s in d["scores"]),
                   tuple(MaskPair(**m) for m in d["masks"]))


class Stopped(Exception):
    """The comparison was stopped (the job's Stop): nothing is kept."""


def compare(base: Path, new: Path, sets: list[tuple[str, Frames]], shown: Frames,
            progress: Callable[[int, int], None] | None = None,
            stop: Callable[[], bool] | None = None) -> BeforeAfter:
    """Score ``base`` and ``new`` (model folders) on each named set of frames, paint both models' answers
    on the first SHOWN of ``shown``, and keep it all in ``new``/before_after/. Raises Stopped when
    ``stop()`` turns true."""
    import torch
    from PIL import Image

    from sis.evaluation.evaluate import evaluate, frame_logits
    from sis.vis.paint import overlay
    from sis.zoo.models import load_model
    shown = shown.subset(range(min(SHOWN, len(shown))))
    total = 2 * (sum(len(f) for _, f in sets) + len(shown))
    done = 0  # frames finished before the current set

    def report(i):
        if stop is not None and stop():
            raise Stopped
        if progress:
            progress(done + i, total)
    answers, scored = {}, {}
    for which, folder in (("before", base), ("after", new)):
        model, cfg = load_model(Path(folder))
        model.eval()
        for name, frames in sets:
            scored[(which, name)] = evaluate(model, cfg, frames, torch.device("cpu"), batch_size=2,
                                             progress=lambda i, n: report(i))
            done += len(frames)
        with torch.inference_mode():
            answers[which] = [frame_logits(model, cfg, img[None], torch.device("cpu"))[0].argmax(0).numpy()
                              .astype(np.uint8) for img in shown.images]
        done += len(shown)
        report(0)
        del model
    out = Path(new) / FOLDER
    out.mkdir(parents=True, exist_ok=True)
    palette = shown.classes.palette()
    masks = []
    for i, frame in enumerate(shown.names):
        image = shown.images[i].permute(1, 2, 0).numpy()
        paths = {}
        for kind, labels in (("truth", shown.masks[i].numpy().astype(np.uint8)), ("before", answers["before"][i]),
                             ("after", answers["after"][i])):
            path = out / f"{i:02d}-{kind}.png"
            atomic_write(path, lambda tmp, lab=labels: Image.fromarray(overlay(image, lab, palette, 0.55)).save(tmp, "PNG"))
            paths[kind] = path.name
        masks.append(MaskPair(frame, **paths))
    keep = ("miou", "pixel_acc", "per_class_iou")
    result = BeforeAfter(str(base), tuple(shown.classes.names),
                         tuple(Scores(name, len(frames), {k: scored[("before", name)][k] for k in keep},
                                      {k: scored[("after", name)][k] for k in keep}) for name, frames in sets),
                         tuple(masks))
    result.save(new)
    return result


def for_run(cfg, base_data: Path | None = None, progress: Callable[[int, int], None] | None = None,
            stop: Callable[[], bool] | None = None) -> BeforeAfter | None:
    """The comparison for a finished fine-tuning run (a ``train.TrainConfig`` that started from a model
    folder): on the frames it validated on, on ``base_data``'s val split (what the model may have forgotten;
    skipped when that is the run's own data) and on its first training frames. None for a run that started
    from no model, or when stopped."""
    from sis.data.dataset import load_classes
    from sis.data.dataset import validation_frames
    if not Path(str(cfg.init)).is_dir():
        return None  # from random or ImageNet: there is no model to compare with
    classes = load_classes(cfg.data)
    train = load_split(cfg.data, "train", cfg.train_limit, classes)
    train, held, _ = validation_frames(cfg.data, train, cfg.val_limit, classes)
    sets = []
    if held is not None and len(held):
        own_val = (Path(cfg.data) / "val").is_dir()
        sets.append(("the dataset's val frames" if own_val else "your held-out frames", held))
    if base_data is not None and (Path(base_data) / "val").is_dir() and \
            Path(base_data).resolve() != Path(cfg.data).resolve() and load_classes(base_data).names == classes.names:
        sets.append((f"{Path(base_data).name} val (what the model may forget)",
                     load_split(base_data, "val", ELSEWHERE_LIMIT, classes)))
    try:
        return compare(Path(cfg.init), Path(cfg.out), sets, train, progress, stop)
    except Stopped:
        return None
