"""A training run's settings, the command line that repeats them, and what the loop reports."""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Protocol

from sis import zoo
from sis.zoo.card import RECIPE_KEYS


class TrainingError(RuntimeError):
    """The run cannot go on (diverged loss, bad resume); the message says why."""


@dataclass
class TrainConfig:
    model: str = zoo.DEFAULT_MODEL       # registry name
    data: str = ""                       # SegNet-layout folder
    out: str = "runs/model"              # model folder written at the end (checkpoint/ inside)
    init: str = "random"                 # random | imagenet | path of a model folder to fine-tune
    epochs: int = 1
    max_steps: int | None = None         # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 8
    crop: tuple[int, int] | None = None  # random crop (h, w); None = full frames
    scale: tuple[float, float] = (1.0, 1.0)  # random rescale range before the crop
    flips: str = "hv"                    # paper: horizontal and vertical
    lr: float = 2e-4
    optimizer: str = "adam"              # adam | adamw
    weight_decay: float = 0.0
    schedule: str = "constant"           # constant | poly | cosine
    warmup_steps: int = 0
    class_weighting: str = "none"        # none | median | sqrt-median
    splits: tuple[str, ...] = ("train",)  # the dataset's splits trained on (train,val: the final-model protocol)
    teacher: str = ""                    # distil from this model (name or folder; several with commas)
    teacher_tta: str = "none"            # the teacher's test-time augmentation: none | flip | ms
    distill_alpha: float = 0.5           # the teacher's share of the loss (the labels' is 1 - alpha)
    distill_temperature: float = 1.0
    freeze_encoder: bool = False
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda
    amp: bool = True                     # bf16 autocast on capable CPUs, AMP on CUDA
    channels_last: bool = True
    train_limit: int | None = None       # use only the first N train frames (tests, probes)
    val_limit: int | None = None
    val_every: int = 1                   # epochs between validations (0 = never)
    replay: str = ""                     # a base dataset whose train frames are mixed into every batch
    replay_ratio: float = 0.5            # the share of each batch drawn from ``replay``
    replay_limit: int | None = 120       # replay frames held in memory, spread evenly over the base set
    resume: bool = True                  # continue from out/checkpoint if present
    save_half: bool = False              # write fp16 weights (shipping)
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# TrainConfig field -> `python -m sis train` option; switches: (field, value that sets the flag, flag)
_OPTIONS = [("init", "--init"), ("epochs", "--epochs"), ("max_steps", "--max-steps"),
            ("batch_size", "--batch-size"), ("crop", "--crop"), ("scale", "--scale"), ("flips", "--flips"),
            ("lr", "--lr"), ("optimizer", "--optimizer"), ("weight_decay", "--weight-decay"),
            ("schedule", "--schedule"), ("warmup_steps", "--warmup"), ("class_weighting", "--class-weighting"),
            ("splits", "--splits"), ("teacher", "--teacher"), ("teacher_tta", "--teacher-tta"),
            ("distill_alpha", "--distill-alpha"), ("distill_temperature", "--distill-temperature"),
            ("seed", "--seed"), ("device", "--device"), ("train_limit", "--train-limit"),
            ("val_limit", "--val-limit"), ("val_every", "--val-every"), ("replay", "--replay"),
            ("replay_ratio", "--replay-ratio"), ("replay_limit", "--replay-limit"), ("threads", "--threads")]


_SWITCHES = [("freeze_encoder", True, "--freeze-encoder"), ("amp", False, "--no-amp"),
             ("channels_last", False, "--no-channels-last"), ("resume", False, "--no-resume"),
             ("save_half", True, "--half")]


def train_command(cfg: TrainConfig | dict) -> str:
    """The `python -m sis train` command line that runs ``cfg`` (a card's recipe works too)."""
    if isinstance(cfg, dict):
        cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    default = TrainConfig()
    parts = ["python -m sis train", f"--model {cfg.model}", f"--data {shlex.quote(str(cfg.data))}",
             f"--out {shlex.quote(str(cfg.out))}"]
    from_folder = cfg.init not in ("random", "imagenet")
    for field, flag in _OPTIONS:
        v = getattr(cfg, field)
        if field in RECIPE_KEYS and from_folder:  # spelled out: left out, they would follow the folder's recipe
            if v is None:
                parts.append(f"{flag} full")
                continue
        elif v is None or v == getattr(default, field):
            continue
        text = f"{v[0]}x{v[1]}" if field == "crop" else f"{v[0]},{v[1]}" if field == "scale" else \
            ",".join(v) if field == "splits" else str(v)
        parts.append(f"{flag} {shlex.quote(text)}")
    parts += [flag for field, value, flag in _SWITCHES if getattr(cfg, field) == value != getattr(default, field)]
    if from_folder and not cfg.freeze_encoder:  # spelled out: left out, it would follow the folder's card
        parts.append("--train-encoder")
    return " ".join(parts)


@dataclass
class Progress:
    """What the loop reports after every step (and after each validation)."""
    step: int
    total_steps: int
    epoch: int
    epochs: int
    loss: float
    pixel_acc: float
    lr: float
    images_per_s: float
    eta_s: float
    val_miou: float | None = None
    phase: str = "train"  # train | val | done | stopped


class StopFlag(Protocol):
    def is_set(self) -> bool: ...
