"""The accurate mode: test-time augmentation (flip, multi-scale) and ensembles, as one engine.

``AccurateEngine`` runs each member engine on the image at every scale (and mirrored, with
flip), turns each answer into class probabilities, resizes them back to the input's size,
and averages them (weighted per member). It returns log-probabilities, so that everything
that takes an engine (``infer.predict``, ``evaluate``, the benchmark) takes it unchanged:
their softmax of log p is p again. numpy and Pillow only: on graph engines it needs no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sis.data.images import resize_images, resize_maps, scaled_size
from sis.engines.predict import softmax, tempered

TTA_MODES = ("none", "flip", "ms")
ACCURATE_MODE = "ms"  # what the app's "Accurate" runs: multi-scale + flip gained most on val (docs/accuracy.md)
DEFAULT_SCALES = (0.75, 1.0, 1.25, 1.5)  # mmsegmentation's usual set, around CamVid's 360x480 (docs/accuracy.md)


@dataclass(frozen=True)
class TTA:
    """Which passes each member runs: every scale, each also mirrored when ``flip``."""
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @classmethod
    def from_mode(cls, mode: str, scales: tuple[float, ...] | None = None) -> "TTA":
        """'none' (one pass), 'flip' (plus its mirror), 'ms' (multi-scale + flip, ``scales`` or DEFAULT_SCALES)."""
        if mode not in TTA_MODES:
            raise ValueError(f"unknown test-time augmentation '{mode}'; choose {', '.join(TTA_MODES)}")
        if scales is not None and (not scales or min(scales) <= 0):
            raise ValueError(f"scales must be positive, got {scales}")
        if mode == "ms":
            return cls(True, tuple(scales or DEFAULT_SCALES))
        return cls(mode == "flip", tuple(scales or (1.0,)) if mode == "flip" else (1.0,))

    @property
    def passes(self) -> int:
        return len(self.scales) * (2 if self.flip else 1)

    @property
    def label(self) -> str:
        if self.scales == (1.0,):
            return "flip" if self.flip else "none"
        return ("ms+flip" if self.flip else "ms") + "@" + ",".join(f"{s:g}" for s in self.scales)


class AccurateEngine:
    """Members' class probabilities averaged over the TTA passes and the members (weighted).

    ``members``: engines (``sis.engines``) of models with the same class list; ``weights``: one per
    member (default equal). Called like any engine: (N,3,H,W) uint8 -> (N,C,H,W) float32 log-probabilities,
    each member's softmax taken at its own temperature (so the average is calibrated where they are).
    """

    temperature = 1.0  # its output is already log-probabilities of calibrated members

    def __init__(self, members: list, tta: TTA = TTA(), weights: list[float] | None = None, names: list[str] | None = None):
        if not members:
            raise ValueError("an ensemble needs at least one model")
        classes = {tuple(m.cfg.class_set.names) for m in members}
        if len(classes) > 1:
            raise ValueError("the models of an ensemble must predict the same classes")
        w = np.asarray(weights if weights is not None else [1.0] * len(members), np.float64)
        if len(w) != len(members) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"ensemble weights must be {len(members)} non-negative numbers, not all zero")
        self.members, self.tta, self.weights = list(members), tta, w / w.sum()
        for m in self.members:  # a graph engine keeps every scale's session loaded, plus the photo's own size
            if hasattr(m, "max_sessions"):
                m.max_sessions = max(m.max_sessions, len(tta.scales) + 1)
        self.cfg = members[0].cfg
        self.member_names = names or [m.cfg.name for m in members]
        base = members[0].name if len({m.name for m in members}) == 1 else "mixed engines"
        self.name = base + ("" if tta.label == "none" else f" +{tta.label}") + \
            ("" if len(members) == 1 else f" ({len(members)}-model ensemble)")

    def prepare(self, size: tuple[int, int]) -> None:
        """Build every member's engine for every scaled size ahead of a first call."""
        for m in self.members:
            for s in self.tta.scales:
                m.prepare(scaled_size(tuple(size), s))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N,3,H,W) uint8 -> (N,C,H,W) float32 averaged class probabilities at (H, W)."""
        size = tuple(images.shape[-2:])
        total = None
        for member, w in zip(self.members, self.weights):
            for s in self.tta.scales:
                x = resize_images(images, scaled_size(size, s))
                for flipped in ((False, True) if self.tta.flip else (False,)):
                    xi = np.ascontiguousarray(x[..., ::-1]) if flipped else x
                    p = softmax(tempered(member, xi))
                    if flipped:
                        p = p[..., ::-1]
                    p = resize_maps(np.ascontiguousarray(p, np.float32), size)
                    total = p * (w / self.tta.passes) if total is None else total + p * (w / self.tta.passes)
        return total

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.log(np.maximum(self.probabilities(images), 1e-12)).astype(np.float32)
