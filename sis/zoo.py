"""The model zoo: one registry of encoder x decoder pairs, built with smp.

Names are ``<arch>-<encoder>``: arch in {unet, pspnet}, encoder any VGG or ResNet
that smp offers (``unet-resnet34``, ``pspnet-vgg16_bn``). The SIS-CNN paper's
four pairs are the ``PAPER_MODELS``; ``DEFAULT_MODEL`` is what the app opens on.

A saved model is a folder (smp's save_pretrained layout plus a card)::

    config.json        ModelConfig: name, arch kwargs, classes, preprocessing
    model.safetensors  weights (fp32 or fp16)
    card.json          metrics, per-epoch history, recipe, hardware, date
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .classes import CAMVID, ClassSet
from .files import atomic_write

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {"unet": "Unet", "pspnet": "PSPNet"}
# smp's VGG and ResNet encoders (tests/test_zoo.py checks this against smp's own list). Spelled
# out so that importing the zoo does not import smp: smp pulls in timm and torchvision, ~200 MB
# of RSS that a server running only exported graphs never needs (see _smp()).
ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg11_bn", "vgg13",
            "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


def _smp():
    """segmentation_models_pytorch, imported on the first model build."""
    import segmentation_models_pytorch as smp
    return smp


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
DEFAULT_MODEL = "pspnet-resnet18"  # the paper's pick and the fastest on CPU; unet-vgg11_bn is the most accurate


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
    format_version: int = 1

    @property
    def class_set(self) -> ClassSet:
        return ClassSet.from_dict(self.classes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
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


def create_model(name_or_config: str | ModelConfig, classes: ClassSet = CAMVID,
                 init: str = "random") -> tuple[torch.nn.Module, ModelConfig]:
    """A new model and its config. init: 'random' or 'imagenet' (raises OfflineError offline)."""
    cfg = name_or_config if isinstance(name_or_config, ModelConfig) else make_config(name_or_config, classes, init)
    if init not in ("random", "imagenet"):
        raise ModelError(f"unknown init '{init}'; choose random or imagenet")
    if init == "imagenet" and not hub_reachable():
        raise OfflineError(f"ImageNet weights for {cfg.encoder} need the internet "
                           f"({HUB_HOST} is unreachable); use random init or connect and retry")
    cfg = replace(cfg, init=init)
    model = _build(cfg.arch, cfg.encoder, cfg.class_set.num_classes, cfg.smp_kwargs,
                   "imagenet" if init == "imagenet" else None)
    return model, cfg


def _build(arch: str, encoder: str, num_classes: int, kwargs: dict, weights: str | None = None) -> torch.nn.Module:
    """smp.create_model plus the architecture options smp has no argument for."""
    kwargs = dict(kwargs)
    center = kwargs.pop("center_block", True)
    model = _smp().create_model(ARCHS[arch], encoder_name=encoder, encoder_weights=weights,
                                classes=num_classes, **kwargs)
    if not center and hasattr(model.decoder, "center"):
        model.decoder.center = torch.nn.Identity()
    return model


def transplant(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``state`` whose name and shape fit ``model``; returns (copied, left as initialised)."""
    own = model.state_dict()
    fits = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    return sorted(fits), sorted(own.keys() - fits.keys())


@lru_cache(maxsize=None)
def complexity(name: str, size: tuple[int, int] = (360, 480), num_classes: int = 11,
               smp_kwargs: str | None = None) -> dict:
    """Parameter count and forward GFLOPs at ``size`` (padded to the stride), on the meta device.

    ``smp_kwargs``: a saved config's architecture arguments as JSON (default: the registry's).
    """
    spec = get_spec(name)
    kwargs = json.loads(smp_kwargs) if smp_kwargs is not None else spec.smp_kwargs
    with torch.device("meta"):
        model = _build(spec.arch, spec.encoder, num_classes, kwargs)
    params = sum(p.numel() for p in model.parameters())
    s = spec.input_stride
    h, w = (-(-size[0] // s) * s, -(-size[1] // s) * s)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.empty(1, 3, h, w, device="meta"))
    return {"params": params, "gflops": fc.get_total_flops() / 2e9, "padded_size": [h, w]}


def config_complexity(cfg: ModelConfig, size: tuple[int, int] = (360, 480)) -> dict:
    """``complexity`` of a saved model's own architecture (what cards record under "complexity")."""
    return complexity(cfg.name, size, cfg.class_set.num_classes, json.dumps(cfg.smp_kwargs, sort_keys=True))


# ---------------------------------------------------------------- save / load
def save_model(model: torch.nn.Module, cfg: ModelConfig, folder: Path, card: dict | None = None,
               half: bool = False) -> Path:
    """Write config.json, model.safetensors (fp16 if ``half``) and card.json, atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    atomic_write(folder / "model.safetensors", lambda p: save_file(state, str(p), metadata={"sis": cfg.name}))
    atomic_write(folder / "config.json", lambda p: p.write_text(cfg.to_json()))
    if card is not None:
        atomic_write(folder / "card.json", lambda p: p.write_text(json.dumps(card, indent=2)))
    return folder


def read_config(folder: Path) -> ModelConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json)")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise ModelError(f"{path} is not a valid model config: {e}") from None


def read_card(folder: Path) -> dict:
    path = Path(folder) / "card.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ModelError(f"weights file {path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a readable safetensors file ({e})") from None


def apply_state(model: torch.nn.Module, state: dict[str, torch.Tensor], cfg: ModelConfig, source: str,
                assign: bool = False) -> None:
    """Load ``state`` into ``model`` with errors that name the mismatch."""
    own = model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    if missing or unexpected:
        raise ModelError(f"{source} does not match {cfg.name}: {len(missing)} missing and "
                         f"{len(unexpected)} unexpected tensors (e.g. "
                         f"{next(iter(sorted(missing or unexpected)))}); it was saved from another architecture")
    for k, v in own.items():
        if v.shape != state[k].shape:
            if k.startswith("segmentation_head") and v.shape[0] != state[k].shape[0]:
                raise ModelError(f"{source} predicts {state[k].shape[0]} classes but the config says "
                                 f"{v.shape[0]}; it belongs to another class list")
            raise ModelError(f"{source}: tensor {k} has shape {tuple(state[k].shape)}, "
                             f"{cfg.name} expects {tuple(v.shape)}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, assign=assign)


def load_model(folder: Path) -> tuple[torch.nn.Module, ModelConfig]:
    """Rebuild a saved model (fp32, eval mode) from its folder."""
    folder = Path(folder)
    cfg = read_config(folder)
    if cfg.name not in MODELS:
        raise ModelError(f"{folder}/config.json names unknown model '{cfg.name}'")
    state = load_state(folder / "model.safetensors")
    # built on the meta device and filled with the file's tensors: no throw-away random
    # init, and only one copy of the weights in memory
    with torch.device("meta"):
        model, _ = create_model(cfg, init="random")
    apply_state(model, state, cfg, str(folder / "model.safetensors"), assign=True)
    return model.eval(), cfg


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of in-memory weights (equal weights <-> equal digest)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


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


def normalize(x: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """(N,3,H,W) uint8 or float in [0,1] -> float normalized with the config's mean/std."""
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def reset_head(model: torch.nn.Module, num_classes: int) -> None:
    """Replace the final classifier for a new class count (fine-tuning on another class list)."""
    conv = model.segmentation_head[0]
    model.segmentation_head[0] = torch.nn.Conv2d(conv.in_channels, num_classes, conv.kernel_size,
                                                 padding=conv.padding)
