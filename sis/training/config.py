"""A training run's settings, the command line that repeats them, and what the loop reports."""
from __future__ import annotations

import shlex
from dataclasses import asdict, dataclass
from typing import Protocol

from sis import zoo
from sis.data import PHOTOMETRIC


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
    photometric: str = "none"            # none | camera: colour, gamma, cast, blur, noise, JPEG (data.augment)
    splits: tuple[str, ...] = ("train",)  # the dataset's splits trained on (train,val: the final-model protocol)
    teacher: str = ""                    # distil from this model (name or folder; several with commas)
    teacher_tta: str = "none"            # the teacher's test-time augmentation: none | flip | ms
    distill_alpha: float = 0.5           # the teacher's share of the loss (the labels' is 1 - alpha)
    distill_temperature: float = 1.0
    teacher_scale: float = 1.0           # the teacher's answers kept at this share of the frame's size (memory)
    freeze_encoder: bool = False
    freeze_bn: bool = False              # BatchNorm statistics held at the init's (photometric batches would move them)
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
    init_share: float = 0.0              # the starting model's share of the saved weights (0: the fine-tune's alone)
    resume: bool = True                  # continue from out/checkpoint if present
    save_half: bool = False              # write fp16 weights (shipping)
    threads: int | None = None

    @property
    def from_folder(self) -> bool:
        """Whether the run starts from a model folder's weights (a fine-tune), not from random or ImageNet."""
        return self.init not in zoo.FRESH_INITS

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Flag:
    """How one TrainConfig field is spelled on ``python -m sis train``: the parser and train_command
    both read FLAGS, so an option is written once."""
    name: str                      # e.g. --lr
    help: str | None = None
    kind: str = "str"              # str | int | float | positive | size (HxW or full) | range (a,b) | splits (a,b)
    choices: tuple | None = None
    switch: bool | None = None     # a bool field: the value the flag sets (--no-amp sets amp False)
    off: str | None = None         # a second switch that sets the opposite (--train-encoder)
    off_help: str | None = None
    recipe: bool = False           # left out with --init DIR, it follows that folder's card (zoo.recipe_defaults)


FLAGS: dict[str, Flag] = {  # TrainConfig field -> its flag; options first, then switches (train_command's order)
    "init": Flag("--init", "random | imagenet | a model folder to fine-tune"),
    "epochs": Flag("--epochs", kind="positive"),
    "max_steps": Flag("--max-steps", kind="positive"),
    "batch_size": Flag("--batch-size", kind="positive"),
    "crop": Flag("--crop", "random crop HxW, or 'full' (default: full frames, or where the frames (with --replay's) "
                 "differ in size, the largest size all of them hold; with --init DIR the augmentation options default "
                 "to that model's recipe)", kind="size", recipe=True),
    "scale": Flag("--scale", "random rescale range, e.g. 0.75,1.5 (default 1,1)", kind="range", recipe=True),
    "flips": Flag("--flips", "default hv (the paper's)", choices=("", "h", "v", "hv"), recipe=True),
    "lr": Flag("--lr", kind="float"),
    "optimizer": Flag("--optimizer", choices=("adam", "adamw")),
    "weight_decay": Flag("--weight-decay", kind="float"),
    "schedule": Flag("--schedule", choices=("constant", "poly", "cosine")),
    "warmup_steps": Flag("--warmup", "linear warm-up steps", kind="int"),
    "class_weighting": Flag("--class-weighting", "default none", choices=("none", "median", "sqrt-median"),
                            recipe=True),
    "photometric": Flag("--photometric", "photometric augmentation: none (the paper's), camera (colour, gamma, "
                        "white balance, blur, noise, JPEG: for photos from other cameras) or camera-half (camera on "
                        "half the frames, the rest clean); default none",
                        choices=PHOTOMETRIC, recipe=True),
    "splits": Flag("--splits", "the dataset's splits to train on, e.g. train,val (the final-model protocol: the "
                   "run then does not validate); default train", kind="splits"),
    "teacher": Flag("--teacher", "distil from this model: a registry name or model folder, or several joined by "
                    "commas (an ensemble); it labels every training frame once (with --replay: the replayed "
                    "frames, and the training frames are taught by their own labels)"),
    "teacher_tta": Flag("--teacher-tta", "the teacher's test-time augmentation", choices=("none", "flip", "ms")),
    "distill_alpha": Flag("--distill-alpha", "with --teacher: its share of the loss (the labels get the rest)",
                          kind="float"),
    "distill_temperature": Flag("--distill-temperature", "with --teacher: the softmax temperature", kind="float"),
    "teacher_scale": Flag("--teacher-scale", "with --teacher: keep its answers at this share of each frame's size "
                          "(0.5: a quarter of the memory), scaled back up bilinearly when a frame is drawn",
                          kind="float"),
    "seed": Flag("--seed", kind="int"),
    "device": Flag("--device"),
    "train_limit": Flag("--train-limit", kind="positive"),
    "val_limit": Flag("--val-limit", kind="positive"),
    "val_every": Flag("--val-every", kind="int"),
    "replay": Flag("--replay", "a base dataset (e.g. CamVid) whose train frames are mixed into every batch, so "
                   "that fine-tuning on a few frames does not forget it"),
    "replay_ratio": Flag("--replay-ratio", "share of each batch from --replay (default: half, or what the --init "
                         "folder's card measured)", kind="float", recipe=True),
    "replay_limit": Flag("--replay-limit", "replay frames held in memory", kind="positive"),
    "init_share": Flag("--init-share", "with --init DIR: save this share of that model's weights averaged into the "
                       "fine-tuned ones (weight-space ensembling: less forgotten, a little less gained; default 0, "
                       "or what the --init folder's card measured)", kind="float", recipe=True),
    "threads": Flag("--threads", kind="positive"),
    "freeze_encoder": Flag("--freeze-encoder", "train the decoder only (default: off, or what the --init folder's "
                           "card measured)", switch=True, off="--train-encoder", recipe=True,
                           off_help="train the encoder too, also where the --init folder's card would freeze it"),
    "freeze_bn": Flag("--freeze-bn", "hold every BatchNorm layer's running statistics at the --init model's "
                      "(its affine weights still train)", switch=True),
    "amp": Flag("--no-amp", "plain fp32 (no bf16/fp16 autocast)", switch=False),
    "channels_last": Flag("--no-channels-last", switch=False),
    "resume": Flag("--no-resume", "ignore OUT/checkpoint", switch=False),
    "save_half": Flag("--half", "write fp16 weights", switch=True),
}


def config_for(data, model: str | None = None, out: str | None = None, **given) -> TrainConfig:
    """A training request as a run's config: the one rule `sis train` and the Fine-tune page share. The model is
    the ``init`` folder's where it is one (another model named beside it is refused); every recipe setting
    not given (or None) is that folder's recipe's (``recipe_defaults``: what it trained with, and what its card
    measured for fine-tunes), else TrainConfig's default; ``crop="full"`` is full frames."""
    from pathlib import Path

    from sis.zoo.card import recipe_defaults
    init = given.get("init") or "random"
    if init not in zoo.FRESH_INITS:
        folder_model = zoo.read_config(Path(init)).name  # a ModelError says what is wrong with the folder
        if model and model != folder_model:
            raise zoo.ModelError(f"--init {init} holds {folder_model}, not {model}")
        model = folder_model
    elif not model:
        raise zoo.ModelError("--model is needed unless --init is a model folder")
    base, default = recipe_defaults(init), TrainConfig()
    for name, flag in FLAGS.items():
        if flag.recipe and given.get(name) is None:
            given[name] = base.get(name, getattr(default, name))
    if given.get("crop") == "full":
        given["crop"] = None
    return TrainConfig(model=model, data=str(data), out=out or f"runs/{model}", **given)


def flag_text(kind: str, value) -> str:
    """A field's value as its flag takes it (the inverse of the CLI's argument types)."""
    if kind == "size":
        return f"{value[0]}x{value[1]}"
    if kind == "range":
        return f"{value[0]},{value[1]}"
    if kind == "splits":
        return ",".join(value)
    return str(value)


def train_command(cfg: TrainConfig | dict) -> str:
    """The `python -m sis train` command line that runs ``cfg`` (a card's recipe works too)."""
    if isinstance(cfg, dict):
        cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    default = TrainConfig()
    parts = ["python -m sis train", f"--model {cfg.model}", f"--data {shlex.quote(str(cfg.data))}",
             f"--out {shlex.quote(str(cfg.out))}"]
    for field_name, flag in FLAGS.items():
        v, d = getattr(cfg, field_name), getattr(default, field_name)
        if flag.switch is not None:
            if v == flag.switch != d:
                parts.append(flag.name)
            elif cfg.from_folder and flag.off and v != flag.switch:  # spelled out: left out, it would follow the card
                parts.append(flag.off)
            continue
        if flag.recipe and cfg.from_folder:  # spelled out: left out, they would follow the folder's recipe
            if v is None:
                parts.append(f"{flag.name} full")
                continue
        elif v is None or v == d:
            continue
        parts.append(f"{flag.name} {shlex.quote(flag_text(flag.kind, v))}")
    return " ".join(parts)


@dataclass(kw_only=True)
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
    phase: str = "train"  # train | val | finish | done | stopped
    stage: str = ""       # finish: what the run does now that its steps are done, in words


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class TrainResult:
    """What a finished or stopped run did."""
    status: str              # done | stopped
    out: str                 # the model folder it wrote
    history: list[dict]      # one record an epoch: loss, pixel accuracy, val figures where it validated
    val: dict | None         # the card's val figures: the saved weights', in fp32 (None where it did not validate)
    steps: int
    digest: str              # of the weights it ended with: equal runs give equal digests
    rank: int                # this process's rank (0 alone writes the folder)
