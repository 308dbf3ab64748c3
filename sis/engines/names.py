"""The engines a model can run on, and whether each can run here.

An engine computes logits from images: (N,3,H,W) uint8 numpy -> (N,C,H,W) float32 numpy,
exactly as ``preprocess.forward_logits`` does (normalise, pad to the stride, crop back), so
their predictions compare pixel for pixel.

- ``eager``             PyTorch fp32, the reference (plain smp, NCHW).
- ``torch-bf16``        PyTorch bf16: BatchNorm folded, bf16 weights and activations,
                        channels_last on a CPU with AVX512-BF16/AMX; autocast on CUDA.
- ``onnxruntime``       the exported ONNX graph on ONNX Runtime, fp32.
- ``onnxruntime-int8``  that graph with static int8 quantisation (``int8``).

The two graph engines need no PyTorch model once their graph is built: the app serves them
without importing torch.
"""
from __future__ import annotations

import importlib.util
import sys

from sis.host import cpu_bf16_forced, cpu_has_bf16

REFERENCE = "eager"
ENGINES = ("eager", "torch-bf16", "onnxruntime", "onnxruntime-int8")


class EngineError(RuntimeError):
    """An engine cannot run here (missing package, unsupported device); the message says why."""


class EngineFailed(EngineError):
    """An engine raised while it loaded, built a graph or ran; the message names what it raised."""


class Guarded:
    """An engine whose every failure reaches the caller as EngineFailed: a caller can fall back to
    another engine on exactly those, and its own errors (painting, layout) still surface."""

    def __init__(self, engine):
        object.__setattr__(self, "engine", engine)

    def _failed(self, e: Exception) -> EngineFailed:
        return EngineFailed(f"{type(e).__name__}: {e}")

    def prepare(self, size: tuple[int, int]) -> None:
        try:
            self.engine.prepare(size)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - anything the engine raised is the engine's failure
            raise self._failed(e) from e

    def __call__(self, images):
        try:
            return self.engine(images)
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - as in prepare
            raise self._failed(e) from e

    def __getattr__(self, name):  # name, cfg, max_sessions, ...: the engine's own
        return getattr(self.engine, name)

    def __setattr__(self, name, value):
        setattr(self.engine, name, value)


def is_graph(name: str) -> bool:
    """True for engines that run an exported graph (no PyTorch weights once it is built)."""
    return name.startswith("onnxruntime")


def unavailable_reason(name: str, device: str = "cpu", probe: bool = True) -> str | None:
    """None when engine ``name`` can run on ``device``, else one sentence why not.

    ``probe=False``: torch-bf16 on a CPU with bf16 instructions counts as available without timing
    it (the probe imports torch); the policy probes it only where it would be chosen.
    """
    if name not in ENGINES:
        return f"unknown engine '{name}'; choose from {', '.join(ENGINES)}"
    if not is_graph(name):
        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed (pip install torch)"
        if name == REFERENCE:
            return None
        if device.startswith("cuda"):
            return None
        if cpu_bf16_forced() is False:
            return "bf16 is switched off on this host (SIS_CPU_BF16=0)"
        if not cpu_has_bf16() and cpu_bf16_forced() is None:
            return "this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 would be slower"
        if not probe and "torch" not in sys.modules:
            return None
        from sis.zoo.runtime import BF16_MIN_SPEEDUP, cpu_bf16_speedup
        speed = cpu_bf16_speedup()
        if cpu_bf16_forced() is None and (speed or 0.0) < BF16_MIN_SPEEDUP:
            return f"bf16 measured {speed:.2f}x of fp32 on this CPU (a probe conv), so it is not used"
        return None
    if device != "cpu":
        return f"{name} runs on the CPU only"
    for needed in ("onnxruntime", "onnx"):
        if importlib.util.find_spec(needed) is None:
            return f"the '{needed}' package is not installed (pip install {needed})"
    return None


def available(device: str = "cpu", probe: bool = True) -> dict[str, str | None]:
    """Every engine -> None (usable) or the reason it is not."""
    return {n: unavailable_reason(n, device, probe) for n in ENGINES}
