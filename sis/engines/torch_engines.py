"""The PyTorch engines: eager fp32 (the reference) and bf16 (folded on a CPU, autocast on CUDA)."""
from __future__ import annotations

import copy
import threading

import numpy as np
import torch

from sis.engines.names import REFERENCE
from sis.zoo.preprocess import forward_logits
from sis.zoo.registry import ModelConfig


class EagerEngine:
    """PyTorch fp32 in the model's own memory format (plain smp for an NCHW model): the reference."""
    name = REFERENCE

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, temperature: float = 1.0):
        self.model, self.cfg, self.temperature = model, cfg, temperature
        self.device = next(model.parameters()).device

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) uint8 tensor -> (N,C,H,W) float32 tensor, on the model's device."""
        with torch.inference_mode():
            return forward_logits(self.model, self.cfg, images.to(self.device), amp=False, channels_last=False)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.logits(torch.from_numpy(np.ascontiguousarray(images))).cpu().numpy()

    def prepare(self, size: tuple[int, int]) -> None:
        """Nothing to build ahead of a first call."""


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode ``model`` with every BatchNorm2d that directly follows a Conv2d
    (the next module registered in the same parent: smp's Conv2dReLU, torchvision's ResNet
    blocks and VGG) folded into that conv's weight and bias. Callers check the result against
    the original (``Bf16Engine`` does), since registration order is not data flow."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    net = copy.deepcopy(model).eval()
    for parent in list(net.modules()):
        names = list(parent._modules)
        for prev, name in zip(names, names[1:]):
            conv, bn = parent._modules[prev], parent._modules[name]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                parent._modules[prev] = fuse_conv_bn_eval(conv, bn)
                parent._modules[name] = torch.nn.Identity()
    return net


class _Bf16Input(torch.nn.Module):
    """``net`` (bf16 weights) on its input cast to bf16: forward_logits can run it as any model."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.to(torch.bfloat16))


class Bf16Engine(EagerEngine):
    """bf16 inference. On a CPU: a copy of the model with BatchNorm folded into the convs,
    weights and activations in bf16, channels_last: no autocast casts around every op and no
    BatchNorm passes. On CUDA: autocast over the shared model."""
    name = "torch-bf16"

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, keep_model: bool = True, temperature: float = 1.0):
        """``keep_model=False``: the engine owns ``model`` and drops it once its bf16 copy is
        built (the app: half the weights' memory)."""
        super().__init__(model, cfg, temperature)
        self._keep = keep_model
        self._checked = False  # the fold has been built and checked (on a CPU)
        self._net: torch.nn.Module | None = None
        self.autocast = self.device.type != "cpu"  # CUDA, or a fold that did not match
        self._lock = threading.Lock()

    def _bf16_net(self) -> torch.nn.Module | None:
        """The folded bf16 copy (built once), or None to use autocast."""
        if self.device.type != "cpu":
            return None
        with self._lock:
            if not self._checked:
                folded = fold_batchnorm(self.model)
                x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                with torch.inference_mode():
                    ref = forward_logits(self.model, self.cfg, x, amp=False)
                    got = forward_logits(folded, self.cfg, x, amp=False)
                if (got - ref).abs().max() <= 1e-3 * max(1.0, float(ref.abs().max())):
                    self._net = _Bf16Input(folded.to(torch.bfloat16).to(memory_format=torch.channels_last))
                    if not self._keep:
                        self.model = None
                else:
                    self.autocast = True
                self._checked = True
        return self._net

    def prepare(self, size):
        self._bf16_net()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        net = self._bf16_net()
        with torch.inference_mode():  # normalise, pad, channels_last and crop as every engine does
            return forward_logits(self.model if net is None else net, self.cfg, images.to(self.device),
                                  amp=net is None)
