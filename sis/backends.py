"""Inference backends: eager fp32 (the reference) and the measured fast paths.

Every backend is a ``Runner``: (N,3,H,W) uint8 CPU tensor -> (N,C,H,W) float32 logits,
computed exactly as ``evaluate.forward_logits`` does (normalise, pad to the stride with
zeros, crop back), so their predictions can be compared pixel for pixel.

- ``eager``             PyTorch fp32 in the model's own memory format, the reference
                        (the benchmark times it as plain smp does: NCHW).
- ``torch-bf16``        PyTorch bf16 autocast + channels_last (CPUs with AVX512-BF16/AMX; CUDA).
- ``onnxruntime``       the exported ONNX graph on ONNX Runtime, fp32.
- ``onnxruntime-int8``  that graph with static int8 quantisation (QDQ, per-channel int8
                        weights, uint8 activations with min/max ranges calibrated on 16 CamVid
                        *train* frames shipped in assets/calibration); the first conv, the
                        classifier and PSPNet's pooling matmuls stay in fp32.

ONNX graphs have a fixed shape (batch 1, one H x W; PSPNet's pyramid pooling is exported
as exact averaging matrices for that size), one per work size, built once and cached on
disk under ``SIS_CACHE_DIR`` (default ``data/cache``) keyed by the weights' digest, least
recently used first out past ``SIS_CACHE_MAX_MB``.
OpenVINO was measured too (README, performance) and not added: no faster than ONNX
Runtime int8 here, 180 MB installed, and a larger accuracy loss on the same int8 graph.
"""
from __future__ import annotations

import copy
import functools
import gc
import hashlib
import importlib.util
import math
import os
import re
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .evaluate import forward_logits
from .files import atomic_write, partial, remove
from . import zoo
from .runtime import amp_dtype, cpu_bf16_forced, cpu_bf16_speedup, release_memory
from .zoo import ModelConfig

ROOT = Path(__file__).resolve().parent.parent
CALIBRATION_DIR = ROOT / "assets" / "calibration"
REFERENCE = "eager"
BACKENDS = ("eager", "torch-bf16", "onnxruntime", "onnxruntime-int8")
# the default fast path: the first of these that is available and passed its accuracy check
FAST_ORDER = ("onnxruntime-int8", "torch-bf16", "eager")
MAX_MIOU_DELTA = 0.5  # points of val mIoU a fast path may lose against eager fp32
CACHE_MAX_MB = 1024  # the graph cache's bound on disk (SIS_CACHE_MAX_MB): the 4 shipped models' 360x480 graphs take 231 MB
SESSIONS_PER_RUNNER = 3  # image sizes a graph runner keeps loaded (SIS_GRAPH_SESSIONS); older ones reload from disk
STALE_TMP_S = 3600  # a half-written graph this old belongs to a process that died
# photo shapes (h:w) whose graphs ship with each model (weights/NAME/graph-HxW.onnx): 4:3, 16:9, 3:2,
# landscape and portrait; a first start builds their graphs without PyTorch models (no smp import)
TEMPLATE_ASPECTS = ((3, 4), (4, 3), (9, 16), (16, 9), (2, 3), (3, 2))


class BackendError(RuntimeError):
    """A backend cannot run here (missing package, unsupported device); the message says why."""


def unavailable_reason(name: str, device: str = "cpu") -> str | None:
    """None when backend ``name`` can run on ``device``, else one sentence why not."""
    if name not in BACKENDS:
        return f"unknown backend '{name}'; choose from {', '.join(BACKENDS)}"
    if name == "eager":
        return None
    if name == "torch-bf16":
        if amp_dtype(torch.device(device)) is None:
            if cpu_bf16_forced() is False:  # said before the probe: no need to time it
                return "bf16 autocast is switched off on this host (SIS_CPU_BF16=0)"
            speed = cpu_bf16_speedup()
            if speed is None:
                return "this CPU has no native bf16 (AVX512-BF16 or AMX), so autocast would be slower"
            return f"bf16 autocast measured {speed:.2f}x of fp32 on this CPU (a probe conv), so it is not used"
        return None
    if device != "cpu":
        return f"{name} runs on the CPU only"
    for needed in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(needed) is None:
            return f"the '{needed}' package is not installed (pip install {needed})"
    return None


def available(device: str = "cpu") -> dict[str, str | None]:
    """Every backend -> None (usable) or the reason it is not."""
    return {b: unavailable_reason(b, device) for b in BACKENDS}


def default_backend(card: dict | None = None, device: str = "cpu", measured: dict | None = None) -> str:
    """The fastest available backend whose recorded check (card['fast_path']) passed: val mIoU
    within MAX_MIOU_DELTA of eager and faster than eager where it was measured.

    ``measured``: this host's own comparison (``compare_backends``' "backends", as
    ``bench.record_engines`` stores it). Its speeds replace the card's, which were timed on the
    machine that shipped the model, and only the engines it timed compete (speeds from two
    machines do not compare); its val mIoU deltas count where it had val frames, else the card's.
    On one AMX Xeon torch-bf16 beat onnxruntime-int8 for every shipped model, on an AMD EPYC
    int8 won: which engine is fastest depends on the CPU.

    On a CPU, a model without a passed check (a fresh fine-tune) runs eager: bf16 autocast is
    not faster on every CPU that has bf16 instructions (0.64x at inference on one here without
    AMX). On CUDA, bf16 autocast is the default unless its check failed.
    """
    usable = [n for n in FAST_ORDER if n != REFERENCE and unavailable_reason(n, device) is None]
    if measured:
        usable = [n for n in usable if n in measured]
    best, best_speed = REFERENCE, 1.0
    for name in usable:
        speed, delta, _ = engine_figures(card, measured, name)
        if delta is not None and abs(delta) <= MAX_MIOU_DELTA and speed is not None and speed > best_speed:
            best, best_speed = name, speed
    if best == REFERENCE and device.startswith("cuda") and "torch-bf16" in usable \
            and engine_figures(card, None, "torch-bf16")[1] is None:
        return "torch-bf16"
    return best


def engine_figures(card: dict | None, measured: dict | None, name: str) -> tuple[float | None, float | None, bool]:
    """(speed-up over eager, val mIoU delta, timed here) of engine ``name``: the speed from this
    host's comparison (``measured``) where it timed the engine, else the card's; the delta from
    this host's run where it had val frames, else the card's."""
    c = ((card or {}).get("fast_path", {}).get("backends", {})).get(name) or {}
    m = (measured or {}).get(name) or {}
    delta = m["miou_delta"] if m.get("miou_delta") is not None else c.get("miou_delta")
    return (m or c).get("speedup_vs_eager"), delta, bool(m)


def cache_dir() -> Path:
    """SIS_CACHE_DIR, else cache/ in the app's data folder."""
    from .store import data_dir
    d = Path(os.environ["SIS_CACHE_DIR"]) if os.environ.get("SIS_CACHE_DIR") else data_dir() / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def prune_cache(keep: Iterable[Path] = (), limit_mb: float | None = None) -> list[Path]:
    """Delete the least recently used graphs until the cache holds at most ``limit_mb`` MiB
    (default ``SIS_CACHE_MAX_MB``, else CACHE_MAX_MB); the graphs in ``keep`` stay whatever
    the bound. Each image aspect ratio gets a graph of its own (pspnet-resnet18: 48 MB fp32 +
    12 MB int8), so without a bound uploads would fill the disk. Half-written graphs of a
    process that died (older than STALE_TMP_S) go too. Returns the files removed."""
    limit = float(os.environ.get("SIS_CACHE_MAX_MB", CACHE_MAX_MB) if limit_mb is None else limit_mb) * 2**20
    keep = {Path(p).resolve() for p in keep}
    now, found, removed = time.time(), [], []
    for p in cache_dir().glob("*.onnx"):
        try:
            st = p.stat()
        except OSError:  # removed by another process meanwhile
            continue
        if p.name.endswith((".tmp.onnx", ".pre.onnx")):
            if now - st.st_mtime > STALE_TMP_S:
                remove(p)
                removed.append(p)
        else:
            found.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in found)
    for _, size, p in sorted(found):  # oldest use first
        if total <= limit:
            break
        if p.resolve() not in keep:
            remove(p)
            removed.append(p)
            total -= size
    return removed


def file_key(folder: Path) -> str:
    """A short digest of a model folder's weights file and config: no model needs loading.
    Computed once per file version (path, size, mtime) in a process: the app asks on every rerun."""
    folder = Path(folder).resolve()
    stamps = tuple((st.st_size, st.st_mtime_ns) for st in ((folder / n).stat() for n in KEY_FILES))
    return _file_key(folder, stamps)


KEY_FILES = ("config.json", "model.safetensors")


@functools.lru_cache(maxsize=64)
def _file_key(folder: Path, stamps: tuple) -> str:
    h = hashlib.sha1()
    for name in KEY_FILES:
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return "f" + h.hexdigest()[:15]


# ------------------------------------------------------------------ ONNX graph
def _pool_matrix(n: int, bins: int) -> torch.Tensor:
    """(bins, n): row i averages the span adaptive_avg_pool2d gives bin i."""
    m = torch.zeros(bins, n)
    for i in range(bins):
        a, b = (i * n) // bins, math.ceil((i + 1) * n / bins)
        m[i, a:b] = 1.0 / (b - a)
    return m


class _FixedPSPBlock(torch.nn.Module):
    """smp's PSPBlock for one feature-map size: adaptive pooling as two matmuls (exact, exportable)."""

    def __init__(self, block: torch.nn.Module, h: int, w: int):
        super().__init__()
        self.conv = block.pool[1]  # conv-BN-ReLU; pool[0], the adaptive pooling, becomes the matmuls
        self.size = (h, w)
        self.register_buffer("ph", _pool_matrix(h, block.pool_size))
        self.register_buffer("pwt", _pool_matrix(w, block.pool_size).t().contiguous())

    def forward(self, x):
        y = torch.matmul(torch.matmul(self.ph, x), self.pwt)
        return F.interpolate(self.conv(y), size=self.size, mode="bilinear", align_corners=True)


class _Graph(torch.nn.Module):
    """float 0..255 (N,3,H,W) -> logits (N,C,H,W), with forward_logits' normalise/pad/crop inside."""

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
    graph = _Graph(net, cfg, size).eval()
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
            m.blocks = torch.nn.ModuleList(_FixedPSPBlock(b, fh, fw) for b in m.blocks)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on constant folding
        # no constant folding: initializers keep the weights' own names (and values), which is
        # what lets a shipped template be filled from the safetensors alone; ONNX Runtime folds
        # (BatchNorm into Conv and the rest) when it loads the graph
        return atomic_write(path, lambda t: torch.onnx.export(
            graph, (x,), str(t), input_names=["image"], output_names=["logits"], opset_version=opset,
            dynamo=False, do_constant_folding=False), _tmp_onnx(path))


def _tmp_onnx(path: Path, kind: str = "tmp") -> Path:
    """Where a graph is written before it is renamed to ``path`` (per process: builds may race)."""
    return path.with_name(f"{path.stem}.{os.getpid()}.{kind}.onnx")


GRAPH_FORMAT = "g2"  # in cached graph names: g2 = exported without constant folding


def _weight_name(initializer: str) -> str:
    """The state-dict key of a graph initializer: _Graph holds the network as ``model``, and a
    _FixedPSPBlock holds smp's ``pool.1`` as ``conv`` (renaming the module would rename the
    graph's nodes, which the shipped int8 ranges are keyed by)."""
    return re.sub(r"(\.psp\.blocks\.\d+)\.conv\.", r"\1.pool.1.", initializer.removeprefix("model."))


def template_path(folder: Path, size: tuple[int, int]) -> Path:
    return Path(folder) / f"graph-{size[0]}x{size[1]}.onnx"


def template_sizes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """The work sizes whose graphs ship as templates: photos of TEMPLATE_ASPECTS (CamVid's 4:3
    first) at the model's pixel count, e.g. 360x480, 480x360, 312x554, 554x312, 339x509, 509x339."""
    from .infer import work_size
    return [work_size(1000 * ah, 1000 * aw, tuple(cfg.base_size)) for ah, aw in TEMPLATE_ASPECTS]


def write_templates(model: torch.nn.Module, cfg: ModelConfig, folder: Path) -> list[Path]:
    """Export ``model`` (the weights in ``folder``) at every ``template_sizes`` and keep each
    graph's template in ``folder``, replacing the ones there."""
    import tempfile
    for old in Path(folder).glob("graph-*.onnx"):
        old.unlink()
    with tempfile.TemporaryDirectory() as d:
        return [write_template(export_graph(model, cfg, size, Path(d) / "g.onnx"), folder, size)
                for size in template_sizes(cfg)]


def write_template(graph: Path, folder: Path, size: tuple[int, int]) -> Path:
    """Ship ``graph`` (exported from ``folder``'s weights) without the tensors that the folder's
    model.safetensors holds: ~50 KB instead of ~45 MB. The server rebuilds the graph from the two
    with onnx and numpy only, so a first start never imports smp, timm or torchvision."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    weights = load_file(str(Path(folder) / "model.safetensors"))
    model = onnx.load(str(graph))
    keep, filled = [], []
    for init in model.graph.initializer:
        w = weights.get(_weight_name(init.name))
        if w is not None and np.array_equal(numpy_helper.to_array(init), w.astype(np.float32)):
            filled.append(init.name)
        else:
            keep.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    for k, v in (("sis_weights_key", file_key(folder)), ("sis_filled", ",".join(filled))):
        model.metadata_props.add(key=k, value=v)
    out = template_path(folder, size)
    return atomic_write(out, lambda t: onnx.save(model, str(t)), _tmp_onnx(out))


def fill_template(folder: Path, size: tuple[int, int], dst: Path, key: str | None = None) -> bool:
    """Rebuild the fp32 graph of ``size`` from the folder's template and weights into ``dst``;
    False (nothing written) when there is no template or it was made for other weights.
    ``key``: the folder's ``file_key`` when the caller has it (it reads the whole weights file)."""
    src = template_path(folder, size)
    if not src.is_file():
        return False
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file
    try:
        model = onnx.load(str(src))
        meta = {p.key: p.value for p in model.metadata_props}
        if meta.get("sis_weights_key") != (key or file_key(folder)):
            return False
        weights = load_file(str(Path(folder) / "model.safetensors"))
        names = [n for n in meta.get("sis_filled", "").split(",") if n]
        model.graph.initializer.extend(
            numpy_helper.from_array(weights[_weight_name(n)].astype(np.float32), n) for n in names)
    except Exception:  # an unreadable template or weights without a tensor it names: export instead
        return False
    del model.metadata_props[:]
    atomic_write(dst, lambda t: onnx.save(model, str(t)), _tmp_onnx(dst))
    return True


def calibration_images(size: tuple[int, int], folder: Path = CALIBRATION_DIR) -> list[np.ndarray]:
    """The shipped CamVid train frames, resized to ``size``, as (1,3,H,W) float32 0..255."""
    from PIL import Image
    files = sorted(p for p in Path(folder).glob("*.jpg"))
    if not files:
        raise BackendError(f"no calibration frames in {folder}; int8 backends need them")
    out = []
    for f in files:
        im = Image.open(f).convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
        out.append(np.asarray(im, np.float32).transpose(2, 0, 1)[None].copy())
    return out


RANGES_FILE = "int8_ranges.json"  # shipped beside a model's weights: its calibrated activation ranges


def quantize_graph(src: Path, dst: Path, size: tuple[int, int], ranges: Path | None = None) -> Path:
    """Static int8 (QDQ, per-channel int8 weights, uint8 activations, min/max calibration).

    The first conv, the last conv (classifier) and MatMuls (PSPNet's exact pooling) stay
    fp32: quantising them cost 0.5 point of val mIoU on pspnet-resnet18 for ~5% of speed.

    ``ranges``: ONNX Runtime's calibration cache (JSON). When the file exists, no calibration
    runs (calibrating needs every activation of a frame at once: over 1 GB for U-Net-VGG at
    360x480); when it does not, the calibration frames are run and the ranges written there.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
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

    pre, tmp = _tmp_onnx(dst, "pre"), _tmp_onnx(dst)
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


# ------------------------------------------------------------------ runners
class Runner:
    """Callable: (N,3,H,W) uint8 CPU tensor -> (N,C,H,W) float32 logits (torch)."""
    name = REFERENCE

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig):
        self.model, self.cfg = model, cfg

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # the model's own memory format: plain smp for an NCHW model
            return forward_logits(self.model, self.cfg, images, amp=False, channels_last=False)

    def prepare(self, size: tuple[int, int]) -> None:
        """Build whatever ``size`` needs ahead of the first call (no-op for torch)."""


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode ``model`` with every BatchNorm2d that directly follows a Conv2d
    (the next module registered in the same parent: smp's Conv2dReLU, torchvision's ResNet
    blocks and VGG) folded into that conv's weight and bias. Callers check the result against
    the original (``TorchBf16Runner`` does), since registration order is not data flow."""
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


class TorchBf16Runner(Runner):
    """bf16 inference. On a CPU: a copy of the model with BatchNorm folded into the convs,
    weights and activations in bf16, channels_last: no autocast casts around every op and no
    BatchNorm passes (pspnet-resnet18, 2 threads, AMX Xeon: 27 ms against 35 with autocast).
    On CUDA: AMP autocast over the shared model."""
    name = "torch-bf16"

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, keep_model: bool = True):
        """``keep_model=False``: the runner owns ``model`` and drops it once its bf16 copy is
        built (the app: half the weights' memory)."""
        super().__init__(model, cfg)
        self._cpu = next(model.parameters()).device.type == "cpu"
        self._keep = keep_model
        self._checked = False  # the fold has been built and checked (on a CPU)
        self._net: torch.nn.Module | None = None
        self._lock = threading.Lock()

    def _bf16_net(self) -> torch.nn.Module | None:
        """The folded bf16 copy (built once), or None to use autocast (CUDA, or a model whose
        folded copy does not match the original in fp32)."""
        if not self._cpu:
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
                self._checked = True
        return self._net

    def prepare(self, size):
        self._bf16_net()

    def __call__(self, images):
        net = self._bf16_net()
        with torch.inference_mode():  # normalise, pad, channels_last and crop as every runner does
            return forward_logits(self.model if net is None else net, self.cfg, images, amp=net is None)


class GraphRunner(Runner):
    """ONNX Runtime over cached per-size graphs (batch 1; a batch is run image by image)."""

    def __init__(self, model, cfg, name: str, threads: int | None = None,
                 log: Callable[[str], None] | None = None, folder: Path | None = None):
        """``model`` may be None with a ``folder``: then PyTorch weights are loaded only to
        build a graph that is not cached yet, and dropped afterwards (the app's memory)."""
        super().__init__(model, cfg)
        self.name = name
        self.int8 = name.endswith("int8")
        self.threads = threads or torch.get_num_threads()
        self.log = log
        self.folder = folder
        self._key = file_key(folder) if folder is not None else None
        self._sessions: OrderedDict[tuple[int, int], object] = OrderedDict()  # least recently used first
        self.max_sessions = max(1, int(os.environ.get("SIS_GRAPH_SESSIONS", SESSIONS_PER_RUNNER)))
        self._lock = threading.Lock()

    def _weights_key(self) -> str:
        """The folder's file digest, else the in-memory weights' digest (computed once)."""
        if self._key is None:
            self._key = zoo.weights_digest(self.model)
        return self._key

    def fp32_path(self, size: tuple[int, int]) -> Path:
        return cache_dir() / f"{self.cfg.name}-{self._weights_key()}-{GRAPH_FORMAT}-{size[0]}x{size[1]}.onnx"

    def cached_path(self, size: tuple[int, int]) -> Path:
        """Where this runner's graph of ``size`` is cached (it may not be built yet)."""
        fp32 = self.fp32_path(size)
        return fp32.with_suffix(".int8.onnx") if self.int8 else fp32

    def graph_path(self, size: tuple[int, int]) -> Path:
        """The cached graph of ``size``, built first if it is not there."""
        if self.cached_path(size).is_file():
            return self.cached_path(size)
        fp32 = self.fp32_path(size)
        # the shipped template + the weights first: no PyTorch model is built, smp is not imported
        if not fp32.is_file() and not (self.folder is not None and
                                       fill_template(self.folder, size, fp32, self._weights_key())):
            if self.log:
                self.log(f"exporting {self.cfg.name} to ONNX at {size[0]}x{size[1]} (once)")
            if self.model is not None:
                export_graph(self.model, self.cfg, size, fp32)
            else:  # weights loaded for this export only: no second copy
                export_graph(zoo.load_model(self.folder)[0], self.cfg, size, fp32, inplace=True)
            gc.collect()  # the exporter's garbage goes back before quantisation allocates its own
            release_memory()
        if not self.int8:
            return fp32
        q = self.cached_path(size)
        if self.log:
            self.log(f"quantising {self.cfg.name} to int8 at {size[0]}x{size[1]} (once)")
        quantize_graph(fp32, q, size, self.ranges_path())
        return q

    def ranges_path(self) -> Path:
        """The shipped calibration ranges, else this model's cached ones (computed on first use)."""
        if self.folder is not None and (Path(self.folder) / RANGES_FILE).is_file():
            return Path(self.folder) / RANGES_FILE
        return cache_dir() / f"{self.cfg.name}-{self._weights_key()}-{GRAPH_FORMAT}.{RANGES_FILE}"

    def prepare(self, size):
        """The ONNX Runtime session for ``size``: loaded from the cache, or built and cached first.
        At most ``max_sessions`` sizes stay loaded (least recently used goes), and the cache on
        disk stays under its bound (``prune_cache``)."""
        size = tuple(size)
        with self._lock:  # one build per size, even with many sessions asking at once
            if size not in self._sessions:
                import onnxruntime as ort
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = self.threads, 1
                so.log_severity_level = 3
                so.enable_cpu_mem_arena = False  # hand activations back after each run: ~40 MB a model, not ~150
                # no busy-waiting between calls: it steals the cores from whatever runs next
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                built = not self.cached_path(size).is_file()
                path = self.graph_path(size)
                self._sessions[size] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)  # a run still using it holds its own reference
                os.utime(path)  # its mtime is its last use: the cache bound removes the oldest first
                prune_cache(keep=[self.cached_path(s) for s in self._sessions])
                if built:  # exporting and quantising leave ~200 MB of freed heap behind
                    gc.collect()
                    release_memory()
            self._sessions.move_to_end(size)
            return self._sessions[size]

    def __call__(self, images):
        sess = self.prepare(tuple(images.shape[-2:]))  # InferenceSession.run is thread-safe
        # converted by numpy: a torch op here would leave its OpenMP threads spinning on the
        # cores ORT is about to use
        x = images.cpu().numpy().astype(np.float32)
        outs = [sess.run(None, {"image": x[i:i + 1]})[0] for i in range(len(x))]
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))


def get_runner(model: torch.nn.Module | None, cfg: ModelConfig, backend: str = REFERENCE, device: str = "cpu",
               log: Callable[[str], None] | None = None, folder: Path | None = None) -> Runner:
    """A runner for a read-only model (eval mode, on ``device``); raises BackendError if unusable.

    Graph backends also take ``model=None`` with the model's ``folder`` (see GraphRunner).
    """
    why = unavailable_reason(backend, device)
    if why:
        raise BackendError(f"backend {backend} is unavailable: {why}")
    if backend in ("eager", "torch-bf16"):
        if model is None:
            raise BackendError(f"backend {backend} needs the PyTorch model")
        return Runner(model, cfg) if backend == "eager" else TorchBf16Runner(model, cfg)
    return GraphRunner(model, cfg, backend, log=log, folder=folder)


def is_graph(backend: str) -> bool:
    """True for backends that run an exported graph (no PyTorch weights needed once it is built)."""
    return backend.startswith("onnxruntime")
