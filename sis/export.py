"""ONNX export with a parity check against PyTorch.

PSPNet's pyramid pooling uses adaptive_avg_pool2d, which torch's ONNX exporter
only handles when the feature map divides evenly by every bin (1, 2, 3, 6). We
export at a fixed input size padded to ``input_stride * 6`` so it always does;
callers pad their images to that size (``onnx_input_size``) before running it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import zoo
from .zoo import ModelConfig

PSP_BINS = (1, 2, 3, 6)


def onnx_input_size(cfg: ModelConfig, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Padded (h, w) the exported graph takes for images of ``size`` (default: base size)."""
    h, w = size or tuple(cfg.base_size)
    m = cfg.input_stride
    if cfg.arch == "pspnet":
        m = cfg.input_stride * math.lcm(*PSP_BINS)
    return -(-h // m) * m, -(-w // m) * m


class _Normalized(torch.nn.Module):
    """uint8-range float input (N,3,H,W) -> logits, with the config's normalisation inside."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1) * 255)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def export_onnx(folder: Path, out: Path, size: tuple[int, int] | None = None, opset: int = 17) -> dict:
    """Write an ONNX graph (input 'image': float32 0..255, (1,3,H,W)) and check it with onnxruntime.

    Returns {file, input_size, max_abs_diff, opset}.
    """
    model, cfg = zoo.load_model(folder)
    net = _Normalized(model, cfg).eval()
    h, w = onnx_input_size(cfg, size)
    x = torch.randint(0, 256, (1, 3, h, w), generator=torch.Generator().manual_seed(0)).float()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(net, (x,), str(out), input_names=["image"], output_names=["logits"],
                          opset_version=opset, dynamo=False)
        ref = net(x).numpy()
    import onnx
    proto = onnx.load(str(out))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "sis_config", cfg.to_json()
    onnx.save(proto, str(out))
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    return {"file": str(out), "input_size": [h, w], "max_abs_diff": diff, "opset": opset,
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
