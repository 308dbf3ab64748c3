"""The model registry: encoder x decoder pairs, their configs and model folders (no torch)."""
from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from sis.classes import CAMVID, ClassSet

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


ARCHS = {"unet": "Unet", "pspnet": "PSPNet"}


# smp's VGG and ResNet encoders (tests/zoo/test_zoo.py checks this against smp's own list). Spelled
# out so that importing the zoo does not import smp: smp pulls in timm and torchvision, RSS
# that a server running only exported graphs never needs (models._smp imports it).
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg11_bn", "vgg13",
            "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


class ModelError(ValueError):
    """A model name, folder or checkpoint a user gave cannot be used; the message says why."""


class OfflineError(ModelError):
    """ImageNet weights were asked for but the weight hub cannot be reached."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str       # unet | pspnet
    encoder: str    # smp encoder name
    paper: str | None = None  # the SIS-CNN pair this preset stands for

    @property
    def smp_kwargs(self) -> dict:
        """Architecture arguments beyond smp's defaults, and why."""
        if self.arch == "pspnet":
            # smp's default PSPNet (encoder_depth=3) drops the deeper half of the
            # encoder; the PSPNet paper pools over a full dilated ResNet. We use the
            # full encoder, dilated to stride 16 where smp can (ResNet), 32 for VGG.
            if self.encoder.startswith("resnet"):
                return {"encoder_depth": 5, "output_stride": 16, "upsampling": 16}
            return {"encoder_depth": 5, "upsampling": 32}
        if self.encoder.startswith("vgg"):
            # smp adds a 4.7M-parameter "center" block (two 3x3 512->512 convs) after a VGG
            # encoder; U-Net decodes straight from the encoder's last stage, and without it
            # (and with 128 channels in the first decoder block) the four shipped models fit
            # in 100 MB. Keys that smp does not take are handled in _build.
            return {"center_block": False, "decoder_channels": [128, 128, 64, 32, 16]}
        return {}

    @property
    def input_stride(self) -> int:
        """Height and width of the input must be multiples of this."""
        if self.arch == "pspnet":
            return self.smp_kwargs.get("output_stride", 32)
        return 32


def _build_registry() -> dict[str, ModelSpec]:
    paper = {"unet-vgg11_bn": "VGG_U-Net", "pspnet-vgg11_bn": "VGG_PSPNet",
             "unet-resnet18": "ResNet_U-Net", "pspnet-resnet18": "ResNet_PSPNet"}
    return {f"{a}-{e}": ModelSpec(f"{a}-{e}", a, e, paper.get(f"{a}-{e}"))
            for a in ARCHS for e in ENCODERS}


MODELS: dict[str, ModelSpec] = _build_registry()


PAPER_MODELS = tuple(n for n, s in MODELS.items() if s.paper)


FRESH_INITS = ("random", "imagenet")  # the inits that start from no model folder: any other is one
DEFAULT_MODEL = "pspnet-resnet18"  # the paper's pick: training's default; the app's is catalog.default_choice


def list_models() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model '{name}'; valid names: {', '.join(MODELS)}") from None


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and feed it: stored as config.json."""
    name: str
    arch: str
    encoder: str
    smp_kwargs: dict
    classes: dict  # ClassSet.to_dict()
    input_stride: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    init: str = "random"  # how the encoder started: random | imagenet
    base_size: tuple = (360, 480)  # (h, w) the model works at; inputs are resized to it
    format_version: int = 2  # 2: smp's hub keys at the top of config.json, these under "_sis"

    @property
    def class_set(self) -> ClassSet:
        return ClassSet.from_dict(self.classes)

    def smp_config(self) -> dict:
        """The keys ``smp.from_pretrained`` reads: the model class and its constructor's arguments.
        smp cannot express the VGG U-Nets' decoder without its center block (``center_block`` is
        ours), so smp builds those with the block and refuses our weights (docs/decisions.md)."""
        kwargs = {k: v for k, v in self.smp_kwargs.items() if k != "center_block"}
        return {"_model_class": ARCHS[self.arch], "encoder_name": self.encoder, "encoder_weights": None,
                "in_channels": 3, "classes": self.class_set.num_classes, **kwargs}

    def to_json(self) -> str:
        """config.json: smp's hub layout (its keys at the top, so ``smp.from_pretrained(folder)``
        builds the model) with ours under ``_sis`` (smp ignores keys that start with '_')."""
        return json.dumps({**self.smp_config(), "_sis": asdict(self)}, indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Either layout: smp's keys + ``_sis`` (format 2), or ours alone at the top (format 1)."""
        if isinstance(d.get("_sis"), dict):
            d = d["_sis"]
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        missing = {"name", "arch", "encoder", "smp_kwargs", "classes", "input_stride"} - known.keys()
        if missing:
            raise ModelError(f"config.json lacks {', '.join(sorted(missing))}")
        for k in ("mean", "std", "base_size"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def make_config(name: str, classes: ClassSet = CAMVID, init: str = "random") -> ModelConfig:
    spec = get_spec(name)
    return ModelConfig(name=spec.name, arch=spec.arch, encoder=spec.encoder,
                       smp_kwargs=spec.smp_kwargs, classes=classes.to_dict(),
                       input_stride=spec.input_stride, init=init)


# ---------------------------------------------------------------- offline detection
HUB_HOST = os.environ.get("SIS_HUB_HOST", "huggingface.co")


HUB_PORT = int(os.environ.get("SIS_HUB_PORT", "443"))


def hub_reachable(host: str | None = None, port: int | None = None, timeout: float = 1.5) -> bool:
    """True when the weight hub answers an HTTPS request within ``timeout`` seconds.

    smp alone retries for ~25 s before failing offline; this answers in < 2 s. A bare
    TCP connect is not enough: sandboxes and proxies accept connections to anything.
    """
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or os.environ.get("SIS_OFFLINE") == "1":
        return False
    host, port = host or HUB_HOST, port or HUB_PORT
    answered = threading.Event()

    def probe():
        try:
            req = urllib.request.Request(f"https://{host}:{port}/", method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
            answered.set()
        except urllib.error.HTTPError:  # an HTTP status is still an answer
            answered.set()
        except Exception:
            pass

    t = threading.Thread(target=probe, daemon=True)  # daemon: a stuck probe never blocks exit
    t.start()
    t.join(timeout)
    return answered.is_set()


# ---------------------------------------------------------------- folders
def read_config(folder: Path) -> ModelConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json)")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{path} is not a valid model config: {e}") from None


def shipped_models() -> dict[str, Path]:
    """Registry names with trained weights in weights/."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {d.name: d for d in sorted(WEIGHTS_DIR.iterdir())
            if d.name in MODELS and (d / "model.safetensors").is_file()}


def resolve(name_or_dir: str | Path) -> Path:
    """A model folder from a registry name (shipped weights) or a folder path."""
    p = Path(name_or_dir)
    if p.is_dir():
        return p
    name = str(name_or_dir)
    if name in MODELS:
        shipped = shipped_models()
        if name in shipped:
            return shipped[name]
        raise ModelError(f"model '{name}' has no trained weights here (shipped: "
                         f"{', '.join(shipped) or 'none'}); train it or pass a model folder")
    raise ModelError(f"'{name}' is neither a model folder nor a model name; valid names: {', '.join(MODELS)}")
