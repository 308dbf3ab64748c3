"""ONNX export: a model and its preprocessing as one fixed-size graph, and the CLI's checked export.

The graph takes float 0..255 (N,3,H,W) at exactly one H x W and returns logits: normalising,
padding to the stride and cropping happen inside, and PSPNet's adaptive pyramid pooling is
written as exact averaging matrices for that size (ONNX has no adaptive pooling). Its output
equals ``preprocess.forward_logits`` on the PyTorch model.
"""
from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sis.engines.cache import tmp_onnx
from sis.files import atomic_write
from sis.zoo import models
from sis.zoo.registry import ModelConfig


def pool_matrix(n: int, bins: int) -> torch.Tensor:
    """(bins, n): row i averages the span adaptive_avg_pool2d gives bin i."""
    m = torch.zeros(bins, n)
    for i in range(bins):
        a, b = (i * n) // bins, math.ceil((i + 1) * n / bins)
        m[i, a:b] = 1.0 / (b - a)
    return m


class FixedPSPBlock(torch.nn.Module):
    """smp's PSPBlock for one feature-map size: adaptive pooling as two matmuls (exact, exportable)."""

    def __init__(self, block: torch.nn.Module, h: int, w: int):
        super().__init__()
        self.conv = block.pool[1]  # conv-BN-ReLU; pool[0], the adaptive pooling, becomes the matmuls
        self.size = (h, w)
        self.register_buffer("ph", pool_matrix(h, block.pool_size))
        self.register_buffer("pwt", pool_matrix(w, block.pool_size).t().contiguous())

    def forward(self, x):
        y = torch.matmul(torch.matmul(self.ph, x), self.pwt)
        return F.interpolate(self.conv(y), size=self.size, mode="bilinear", align_corners=True)


class PreprocessedModel(torch.nn.Module):
    """float 0..255 (N,3,H,W) -> logits (N,C,H,W), with forward_logits' normalise/pad/crop inside
    (held as ``model``: the graph's initializers are named ``model.<state-dict key>``)."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.size = size
        s = cfg.input_stride
        self.pad = ((-size[1]) % s, (-size[0]) % s)
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255)

    def forward(self, x):
        x = F.pad((x - self.mean) / self.std, (0, self.pad[0], 0, self.pad[1]))
        return self.model(x)[..., :self.size[0], :self.size[1]]


def export_graph(model: torch.nn.Module, cfg: ModelConfig, size: tuple[int, int], path: Path,
                 opset: int = 17, inplace: bool = False) -> Path:
    """Write the fp32 ONNX graph of ``model`` for inputs of ``size`` (any batch).

    ``inplace``: the caller hands the model over (it is rewritten for export, not copied).
    """
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule
    net = (model if inplace else copy.deepcopy(model)).float().eval().to(memory_format=torch.contiguous_format)
    graph = PreprocessedModel(net, cfg, size).eval()
    shapes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: shapes.__setitem__(id(m), tuple(a[0].shape[-2:])))
             for m in net.modules() if isinstance(m, PSPModule)]
    x = torch.zeros(1, 3, *size)
    with torch.inference_mode():
        graph(x)  # records the feature-map size each pyramid-pooling module sees
    for h in hooks:
        h.remove()
    for m in net.modules():
        if isinstance(m, PSPModule):
            fh, fw = shapes[id(m)]
            m.blocks = torch.nn.ModuleList(FixedPSPBlock(b, fh, fw) for b in m.blocks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on constant folding
        # no constant folding: initializers keep the weights' own names (and values), which is
        # what lets a shipped template be filled from the safetensors alone; ONNX Runtime folds
        # (BatchNorm into Conv and the rest) when it loads the graph
        return atomic_write(path, lambda t: torch.onnx.export(
            graph, (x,), str(t), input_names=["image"], output_names=["logits"], opset_version=opset,
            dynamo=False, do_constant_folding=False), tmp_onnx(path))




def export_onnx(folder: Path, out: Path, size: tuple[int, int] | None = None, opset: int = 17) -> dict:
    """``python -m sis export``: write the graph (with the model's config in its metadata) and check
    it with ONNX Runtime against PyTorch on a random image.

    Returns {file, input_size, max_abs_diff, argmax_agreement, opset}.
    """
    import onnx
    import onnxruntime as ort

    from sis.zoo.preprocess import forward_logits
    model, cfg = models.load_model(folder)
    h, w = size or tuple(cfg.base_size)
    out = Path(out)
    export_graph(model, cfg, (h, w), out, opset)
    proto = onnx.load(str(out))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "sis_config", cfg.to_json()
    atomic_write(out, lambda t: onnx.save(proto, str(t)))
    x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = forward_logits(model, cfg, x, amp=False, channels_last=False).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.float().numpy()})[0]
    return {"file": str(out), "input_size": [h, w], "max_abs_diff": float(np.abs(got - ref).max()), "opset": opset,
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
