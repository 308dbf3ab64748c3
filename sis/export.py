"""ONNX export with a parity check against PyTorch.

The graph is ``backends.export_graph``'s, the one the fast path runs: input 'image' float32
0..255, (1,3,H,W) at exactly the size asked for (default: the model's 360x480); normalising,
padding to the stride and cropping happen inside, and PSPNet's pyramid pooling is exported
as exact averaging matrices for that size. Its output equals PyTorch's ``forward_logits``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import zoo
from .backends import Runner, export_graph
from .files import atomic_write


def export_onnx(folder: Path, out: Path, size: tuple[int, int] | None = None, opset: int = 17) -> dict:
    """Write the ONNX graph and check it with onnxruntime on a random image.

    Returns {file, input_size, max_abs_diff, argmax_agreement, opset}.
    """
    import onnx
    import onnxruntime as ort
    model, cfg = zoo.load_model(folder)
    h, w = size or tuple(cfg.base_size)
    out = Path(out)
    export_graph(model, cfg, (h, w), out, opset)
    proto = onnx.load(str(out))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "sis_config", cfg.to_json()
    atomic_write(out, lambda t: onnx.save(proto, str(t)))
    x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = Runner(model, cfg)(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.float().numpy()})[0]
    return {"file": str(out), "input_size": [h, w], "max_abs_diff": float(np.abs(got - ref).max()), "opset": opset,
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
