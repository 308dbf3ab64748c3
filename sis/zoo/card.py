"""A model's card (card.json): its measured figures and how it was trained, read as one typed class."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sis.zoo.registry import FRESH_INITS


@dataclass(frozen=True)
class EngineRecord:
    """One engine's figures from an engine comparison (a card's, or this host's kept one)."""
    median_ms: float | None = None
    speedup: float | None = None      # eager fp32 time / this engine's time, same rounds
    miou_delta: float | None = None   # val mIoU points against eager fp32, None where unchecked
    delta_of_start: bool = False      # miou_delta is its start's: a derived model with no labelled frames of its own

    @classmethod
    def from_dict(cls, d: dict) -> "EngineRecord":
        # an int8 graph that passed only the label-free check against its start's carries the start's figure
        return cls(d.get("median_ms"), d.get("speedup_vs_eager"), d.get("miou_delta"),
                   "start_agreement" in d and "val_frames" not in d)


@dataclass(frozen=True)
class ModeRecord:
    """One inference mode's figures (tools/accuracy_modes.py): val mIoU and time against the fast mode."""
    miou: float | None = None
    per_class_iou: dict = field(default_factory=dict)
    median_ms: float | None = None   # predict on a 360x480 frame on the model's engine, where measured
    latency_x: float | None = None   # this mode's time / the fast mode's, same machine

    @classmethod
    def from_dict(cls, d: dict) -> "ModeRecord":
        return cls(d.get("miou"), d.get("per_class_iou") or {}, d.get("median_ms"), d.get("latency_x"))


@dataclass(frozen=True)
class FastPath:
    """A card's engine comparison as written (``sis bench --compare-engines``, or carried from a start's):
    each engine's record and where they were timed."""
    backends: dict = field(default_factory=dict)  # engine name -> its record as written: timings, checks, notes
    size: list | None = None                       # the frame size timed, [h, w]
    threads: int | None = None
    cpu: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "FastPath":
        return cls(dict(d.get("backends") or {}), d.get("size"), d.get("threads"), d.get("cpu"))


DEV_SET = "kitti-dev"  # real labelled frames of another city and camera: the yardstick beside CamVid val (docs/real_streets.md)


@dataclass(frozen=True)
class RealFramesRecord:
    """One model's figures on a labelled dataset other than its training data (``sis eval --write``):
    fp32 on the dataset's files, as CamVid val's figures are."""
    miou: float
    per_class_iou: dict = field(default_factory=dict)
    frames: int = 0
    command: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "RealFramesRecord | None":
        try:
            return cls(float(d["miou"]), dict(d.get("per_class_iou") or {}), int(d.get("frames") or 0),
                       str(d.get("command") or ""))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class ModelCard:
    """card.json, read once: the figures and facts the studio reads, typed. Every key as written stays in
    the file, for the tools that copy sections from card to card (``card_as_written``)."""
    val_miou: float | None = None
    val_pixel_acc: float | None = None
    per_class_iou: dict = field(default_factory=dict)   # class name -> IoU or None
    history: list = field(default_factory=list)         # per-epoch dicts (train.py)
    epochs_run: int | None = None
    params: int | None = None
    gflops: float | None = None                        # at the base size
    latency_ms: float | None = None                    # eager fp32 on the machine that shipped it
    engines: dict = field(default_factory=dict)        # engine name -> EngineRecord (the shipping machine's)
    modes: dict = field(default_factory=dict)          # "none" | "flip" | "ms" -> ModeRecord (accurate mode)
    splits: tuple = ("train",)                         # the dataset splits its weights trained on
    val_note: str | None = None                        # where val_miou comes from when the weights saw val
    temperature: float = 1.0                           # softmax temperature fitted on val (evaluation.calibrate)
    low_confidence: float | None = None                # a photo's mean confidence below this looks unfamiliar
    low_percentile: float = 5.0                        # the share of val frames (%) below low_confidence
    low_reference: str = "CamVid's own val frames"     # the frames low_confidence was measured on, in words
    shift_mean: float | None = None                    # the shift benchmark's mean mIoU (eval --shift all --write)
    real_frames: dict = field(default_factory=dict)    # dataset name -> RealFramesRecord (sis eval --write)
    fast_path: FastPath = field(default_factory=FastPath)
    status: str | None = None                          # done | stopped: how its training run or adaptation ended
    init: str = ""                                     # what it started from: random, imagenet, finetune:X, adapted:X
    trained_data: str | None = None                    # the dataset folder its training run read

    @property
    def adapted_origin(self) -> str | None:
        """The model this one was adapted from without labels (its init "adapted:NAME"), None where it was not."""
        return self.init.split(":", 1)[1] if self.init.startswith("adapted:") else None

    @property
    def dev_miou(self) -> float | None:
        """mIoU on the real-street development set (DEV_SET), where measured."""
        rec = self.real_frames.get(DEV_SET)
        return rec.miou if rec else None

    @property
    def trained_on(self) -> str:
        return "+".join(self.splits)

    def unsure(self, mean_confidence: float) -> bool:
        """Whether a photo with this mean (calibrated) confidence looks unfamiliar to the model: the one rule
        the pages speak by and the shift benchmark counts by."""
        return self.low_confidence is not None and mean_confidence < self.low_confidence

    @classmethod
    def from_dict(cls, d: dict) -> "ModelCard":
        val, cx = d.get("val") or {}, d.get("complexity") or {}
        eng = (d.get("fast_path") or {}).get("backends") or {}
        recipe = d.get("recipe") or {}
        return cls(val_miou=val.get("miou"), val_pixel_acc=val.get("pixel_acc"),
                   per_class_iou=val.get("per_class_iou") or {}, history=d.get("history") or [],
                   epochs_run=d.get("epochs_run"), params=cx.get("params"), gflops=cx.get("gflops"),
                   latency_ms=(d.get("latency") or {}).get("median_ms"),
                   engines={n: EngineRecord.from_dict(r or {}) for n, r in eng.items()},
                   modes={m: ModeRecord.from_dict(r or {}) for m, r in ((d.get("accurate") or {}).get("modes") or {}).items()},
                   splits=tuple(recipe.get("splits") or ("train",)),
                   val_note=(d.get("reference") or {}).get("note"),
                   temperature=float((d.get("calibration") or {}).get("temperature") or 1.0),
                   low_confidence=(d.get("calibration") or {}).get("low_confidence"),
                   low_percentile=float((d.get("calibration") or {}).get("low_percentile") or 5.0),
                   low_reference=(d.get("calibration") or {}).get("reference") or "CamVid's own val frames",
                   shift_mean=(d.get("shift_benchmark") or {}).get("mean"),
                   real_frames={k: r for k, v in (d.get("real_frames") or {}).items()
                                if isinstance(v, dict) and (r := RealFramesRecord.from_dict(v))},
                   fast_path=FastPath.from_dict(d.get("fast_path") or {}), status=d.get("status"),
                   init=str(d.get("init") or ""), trained_data=recipe.get("data"))


def write_card(folder: Path, card: dict) -> ModelCard:
    """The one writer of card.json (written beside, then renamed): training, shipping and the tools that
    add measurements all go through here; returns the card as read back."""
    from sis.files import atomic_write
    atomic_write(Path(folder) / "card.json", lambda tmp: tmp.write_text(json.dumps(card, indent=2)))
    return ModelCard.from_dict(card)


def update_card(folder: Path, **sections) -> ModelCard:
    """Set top-level ``sections`` of the folder's card, keeping every other key (a card that is there but
    cannot be read raises, rather than being replaced by the sections alone)."""
    path = Path(folder) / "card.json"
    try:
        raw = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} cannot be read ({e}); it is left as it is") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a card (a JSON object); it is left as it is")
    return write_card(folder, dict(raw, **sections))


def keep_real_frames(folder: Path, dataset: str, record: dict) -> ModelCard:
    """Set the card's figures on the labelled dataset named ``dataset`` (``sis eval --write``), keeping the others."""
    kept = dict(card_as_written(folder).get("real_frames") or {})
    return update_card(folder, real_frames=dict(kept, **{dataset: record}))


IDENTITY = ("model", "paper_pair", "classes", "palette", "void", "recipe", "calibration")


def derived_card(start: Path, **sections) -> dict:
    """The card of a model derived from the one in ``start`` without training (adapted without labels): what it
    is (architecture, classes, recipe, calibration) from the start's card, and ``sections``."""
    base = card_as_written(start)
    return {k: base[k] for k in IDENTITY if k in base} | sections


def card_as_written(folder: Path) -> dict:
    """Every key of the folder's card as written ({} where there is none or it cannot be read): for the tools
    that fold or copy whole sections from card to card; figures are read through ``read_card``."""
    path = Path(folder) / "card.json"
    try:
        d = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


def read_card(folder: Path) -> ModelCard:
    """The folder's card (an empty one where there is none or it is unreadable: a card is optional)."""
    try:
        return ModelCard.from_dict(card_as_written(folder))
    except (AttributeError, TypeError):  # a section of the wrong shape
        return ModelCard()


RECIPE_KEYS = ("flips", "crop", "scale", "class_weighting", "photometric")


# a card's "adaptation": how a fine-tune on a few frames starts, measured; it overrides the recipe's keys
ADAPTATION_KEYS = ("freeze_encoder", "photometric", "replay_ratio", "init_share")


def recipe_defaults(init: str) -> dict:
    """What a fine-tune from the model folder ``init`` keeps of the recipe that trained it: the
    augmentation and class weighting, i.e. the orientation, scale and class balance the model
    learned (a model trained with horizontal flips only does not expect the sky under the road).
    The learning rate and schedule are not kept: they were for training from scratch. A card's
    ``adaptation`` adds or overrides what was measured to work better for this model on a few frames
    (a frozen encoder; no photometric augmentation after a robust fine-tune that trained with it).
    {} where ``init`` is random, imagenet or a folder whose card has no recipe."""
    if init in FRESH_INITS or not (Path(init) / "card.json").is_file():
        return {}
    card = card_as_written(init)
    recipe = card.get("recipe") or {}
    out = {k: recipe[k] for k in RECIPE_KEYS if k in recipe}
    out.update({k: v for k, v in (card.get("adaptation") or {}).items() if k in ADAPTATION_KEYS})
    for k in ("crop", "scale"):
        if out.get(k) is not None:
            out[k] = tuple(out[k])
    return out
