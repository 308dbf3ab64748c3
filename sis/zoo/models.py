"""PyTorch models of the zoo: build (smp), load, save, and the facts that need a built model.

A saved model is a folder (smp's save_pretrained layout plus a card)::

    config.json        ModelConfig: name, arch kwargs, classes, preprocessing
    model.safetensors  weights (fp32 or fp16)
    card.json          metrics, per-epoch history, recipe, hardware, date

The registry, configs and cards are ``zoo``'s and need no torch; this module is imported
by training, the torch engines, export and the benchmark, never by graph serving.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sis.classes import CAMVID, ClassSet
from sis.files import atomic_write
from sis.zoo.card import write_card
from sis.zoo.registry import (
    ARCHS,
    FRESH_INITS,
    HUB_HOST,
    MODELS,
    ModelConfig,
    ModelError,
    OfflineError,
    get_spec,
    hub_reachable,
    make_config,
    read_config,
)


def _smp():
    """segmentation_models_pytorch, imported on the first model build (it pulls in timm and torchvision)."""
    import segmentation_models_pytorch as smp
    return smp


def create_model(name_or_config: str | ModelConfig, classes: ClassSet = CAMVID,
                 init: str = "random") -> tuple[torch.nn.Module, ModelConfig]:
    """A new model and its config. init: 'random' or 'imagenet' (raises OfflineError offline)."""
    cfg = name_or_config if isinstance(name_or_config, ModelConfig) else make_config(name_or_config, classes, init)
    if init not in FRESH_INITS:
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
        write_card(folder, card)
    return folder


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


def reset_head(model: torch.nn.Module, num_classes: int) -> None:
    """Replace the final classifier for a new class count (fine-tuning on another class list)."""
    conv = model.segmentation_head[0]
    model.segmentation_head[0] = torch.nn.Conv2d(conv.in_channels, num_classes, conv.kernel_size,
                                                 padding=conv.padding)


def load_for_inference(folder: Path, device: torch.device | str = "cpu",
                       channels_last: bool = True) -> tuple[torch.nn.Module, ModelConfig]:
    """A saved model, read-only: eval mode, no grads, on ``device``. Share it freely across threads."""
    model, cfg = load_model(folder)
    model.requires_grad_(False).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model.eval(), cfg
