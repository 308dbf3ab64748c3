"""Static int8 quantisation of a graph: QDQ, per-channel int8 weights, uint8 activations with
min/max ranges calibrated on 16 CamVid *train* frames (assets/calibration) and shipped beside each
model (``int8_ranges.json``). The first conv, the classifier and PSPNet's pooling matmuls stay fp32.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sis.engines.cache import tmp_onnx
from sis.engines.names import EngineError
from sis.files import partial

CALIBRATION_DIR = Path(__file__).resolve().parent.parent.parent / "assets" / "calibration"


def calibration_images(size: tuple[int, int], folder: Path = CALIBRATION_DIR) -> list[np.ndarray]:
    """The shipped CamVid train frames, resized to ``size``, as (1,3,H,W) float32 0..255."""
    from PIL import Image
    files = sorted(p for p in Path(folder).glob("*.jpg"))
    if not files:
        raise EngineError(f"no calibration frames in {folder}; int8 engines need them")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1)[None].copy())
    return out


RANGES_FILE = "int8_ranges.json"  # shipped beside a model's weights: its calibrated activation ranges


def quantize_graph(src: Path, dst: Path, size: tuple[int, int], ranges: Path | None = None) -> Path:
    """Static int8 (QDQ, per-channel int8 weights, uint8 activations, min/max calibration).

    The first conv, the last conv (classifier) and MatMuls (PSPNet's exact pooling) stay
    fp32: quantising them cost accuracy for little speed (docs/performance.md).

    ``ranges``: ONNX Runtime's calibration cache (JSON). When the file exists, no calibration
    runs (calibrating needs every activation of a frame at once: over 1 GB for U-Net-VGG at
    360x480); when it does not, the calibration frames are run and the ranges written there.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    cached = ranges is not None and Path(ranges).is_file()
    frames = [] if cached else calibration_images(size)

    class Reader(CalibrationDataReader):
        """Frames one stride at a time (CalibStridedMinMax): each stride's activations are folded
        into the running min/max and dropped, so calibration holds one frame's activations."""

        def __init__(self):
            self.it = iter(frames)

        def __len__(self):
            return len(frames)

        def set_range(self, start_index: int, end_index: int):
            self.it = iter(frames[start_index:end_index])

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x}

    pre, tmp = tmp_onnx(dst, "pre"), tmp_onnx(dst)
    try:
        with partial(tmp, dst):
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            nodes = onnx.load(str(pre), load_external_data=False).graph.node
            convs = [n.name for n in nodes if n.op_type == "Conv"]
            keep_fp32 = convs[:1] + convs[-1:] + [n.name for n in nodes if n.op_type == "MatMul"]
            quantize_static(str(pre), str(tmp), None if cached else Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep_fp32,
                            extra_options={"CalibStridedMinMax": 1},  # one frame's activations at a time
                            calibration_cache_path=str(ranges) if ranges else None)
            os.replace(tmp, dst)
    finally:
        for p in (pre, tmp, Path(str(pre) + ".data")):
            p.unlink(missing_ok=True)
        for p in dst.parent.glob("augmented_model*.onnx"):
            p.unlink(missing_ok=True)
    return dst
