"""How a model runs here: the engines, the one policy that picks among them, and their parts.

    names         engine names, and whether each can run here
    policy        choose_engine: the engine for a model on this host, and why not the others
    torch_engines eager fp32 (the reference) and bf16
    onnx_engine   ONNX Runtime over per-size graphs (no PyTorch)
    export        the model and its preprocessing as an ONNX graph
    templates     weight-free graphs shipped with each model
    int8          static int8 quantisation and its calibration
    cache         the bounded graph cache on disk
    accurate      the accurate mode: flip / multi-scale test-time augmentation and ensembles
    predict       the one image -> probabilities -> labels path every caller takes

Every engine is called the same way: (N,3,H,W) uint8 numpy -> (N,C,H,W) float32 numpy logits,
with ``.name``, ``.cfg`` and ``.prepare(size)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from sis import host
from sis.engines.accurate import TTA, AccurateEngine
from sis.engines.names import (
    ENGINES,
    REFERENCE,
    EngineError,
    EngineFailed,
    Guarded,
    available,
    is_graph,
    unavailable_reason,
)
from sis.engines.policy import MAX_MIOU_DELTA, EngineChoice, choose_engine
from sis.zoo.card import read_card
from sis.zoo.registry import ModelConfig, read_config

__all__ = ["ENGINES", "REFERENCE", "MAX_MIOU_DELTA", "TTA", "AccurateEngine", "Engine", "EngineChoice", "EngineError",
           "EngineFailed", "Guarded", "available", "choose_engine", "create_engine", "is_graph", "load_accurate", "load_engine",
           "unavailable_reason"]


class Engine(Protocol):
    name: str
    cfg: ModelConfig
    temperature: float  # the logits are divided by it before any softmax: the card's, given when it is built

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def prepare(self, size: tuple[int, int]) -> None: ...


def create_engine(name: str, model, cfg: ModelConfig, device: str = "cpu", folder: Path | None = None,
                  log: Callable[[str], None] | None = None, keep_model: bool = True,
                  temperature: float = 1.0) -> Engine:
    """Engine ``name`` over an in-memory PyTorch ``model`` (eval mode, on ``device``; read-only).
    Graph engines also take ``model=None`` with the model's ``folder``: no PyTorch weights are then
    loaded unless a graph must be exported. Raises EngineError if ``name`` cannot run here."""
    why = unavailable_reason(name, device)
    if why:
        raise EngineError(f"engine {name} is unavailable: {why}")
    if is_graph(name):
        from sis.engines.onnx_engine import GraphEngine
        return GraphEngine(model, cfg, name, log=log, folder=folder, temperature=temperature)
    if model is None:
        raise EngineError(f"engine {name} needs the PyTorch model")
    from sis.engines.torch_engines import Bf16Engine, EagerEngine
    if name == REFERENCE:
        return EagerEngine(model, cfg, temperature)
    return Bf16Engine(model, cfg, keep_model=keep_model, temperature=temperature)


def load_engine(folder: Path, name: str | None = None, device: str = "cpu",
                log: Callable[[str], None] | None = None, temperature: float | None = None) -> Engine:
    """The engine for the saved model in ``folder``: ``name``, else ``choose_engine``'s, at the card's
    temperature unless ``temperature`` is given. Graph engines load no PyTorch model (torch is not even
    imported when the graph is cached or templated)."""
    folder = Path(folder)
    name = name or choose_engine(folder, device).name
    if temperature is None:  # the confidence predict reports is calibrated where fitted
        temperature = read_card(folder).temperature
    if is_graph(name):
        return create_engine(name, None, read_config(folder), device, folder, log, temperature=temperature)
    import torch

    from sis.zoo.models import load_for_inference
    torch.set_num_threads(host.threads())  # as the graph engines: SIS_THREADS, else the physical cores
    model, cfg = load_for_inference(folder, device)
    return create_engine(name, model, cfg, device, folder, log, keep_model=False, temperature=temperature)


def load_accurate(folders: list[Path], tta: TTA = TTA(), name: str | None = None, device: str = "cpu",
                  weights: list[float] | None = None, log: Callable[[str], None] | None = None,
                  temperature: float | None = None) -> Engine:
    """The accurate mode over the models in ``folders``: each on engine ``name`` (else the one
    ``choose_engine`` gives it), at its card's temperature unless ``temperature`` is given, with test-time
    augmentation ``tta``, probabilities averaged (``weights``: one per model). One model with no
    augmentation is that model's own engine."""
    members = [load_engine(Path(f), name, device, log, temperature) for f in folders]
    if len(members) == 1 and tta == TTA() and weights is None:
        return members[0]
    return AccurateEngine(members, tta, weights, [Path(f).name for f in folders])
