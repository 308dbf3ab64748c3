"""Adapting a model to a user's street from unlabelled frames: its BatchNorm statistics re-estimated on
them (AdaBN, Li et al. 2016), then its BatchNorm scales and shifts fitted to surer predictions on them
(TENT, Wang et al., ICLR 2021); every other weight kept.

A model trained on one city normalises each layer's features with that city's means and variances; a
new camera or light shifts them. Re-estimating them on a few dozen of the user's own frames (one street,
one camera) moves the normalisation to where their features are; the training statistics keep a share
that shrinks as the frames grow in number (a prior, as in Schneider et al., NeurIPS 2020). A few steps
minimising the entropy of the predictions then fit each normalisation's scale and shift to those frames.
Nothing is learned from labels, but it is measured (docs/robustness.md): where it would not help (too
few frames, frames too alike) it says so and writes nothing.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

MIN_FRAMES = 4        # fewer frames than this give statistics noisier than the training city's (docs/robustness.md)
MAX_FRAMES = 400      # frames beyond this change the estimate little and cost time
MIN_SPREAD = 2.0      # frames whose mean absolute difference (8-bit levels, at 64x64) is below this are one frame
PRIOR_FRAMES = 8      # the training statistics weigh as much as this many of the user's frames (docs/robustness.md)
CLIP_RATE = 2.0       # frames a second taken from a clip: nearer ones show the same street again (docs/robustness.md)
CLIP_FRAMES = 100     # frames taken from a clip at most, spread over all of it
FIT_EPOCHS = 2        # passes over the frames fitting the BatchNorm scales and shifts (docs/robustness.md)
FIT_STEPS = 50        # fitting steps at most: many frames gain no more and each step costs two passes' time
FIT_MIN_STEPS = 40    # fitting steps at least: four photos kept gaining up to ten passes (docs/robustness.md)
FIT_SIDE = 0.75       # each fitting step sees a random window this share of each side: same gain, less time (docs/real_streets.md)
FIT_LR = 1e-4         # Adam's rate for that fit: ten times more collapses the predictions (docs/robustness.md)


class AdaptError(ValueError):
    """The frames cannot adapt the model (too few, all alike, none readable); the message says why."""


@dataclass(frozen=True)
class Adaptation:
    init: str
    out: str
    frames: int            # the frames the statistics were estimated on
    skipped: list          # (name, why) of the inputs that were not used
    seconds: float
    layers: int            # BatchNorm layers re-estimated
    offered: int           # the frames read: more than ``frames`` where the adaptation was stopped
    training_share: float  # the share of the training statistics kept (training_share)
    stride: int = 1        # every how many photos or clip frames one was used
    fit_steps: int = 0     # steps fitting the BatchNorm scales and shifts to surer predictions (fit_to_frames)
    fit_planned: int = 0   # the steps planned: more than ``fit_steps`` where the adaptation was stopped
    graph_agreement: float | None = None  # its fp32 graph's labels against eager's (carry.carried_engines)
    int8_agreement: float | None = None   # its int8 graph's labels against eager's, where that graph passed
    int8_start_agreement: float | None = None  # its start's int8 graph's against the start's eager, same frames

    @property
    def stopped(self) -> bool:
        return self.frames < self.offered or self.fit_steps < self.fit_planned

    def to_dict(self) -> dict:
        return asdict(self)


def _thumb(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).resize((64, 64), Image.BILINEAR), np.float32)


def check_frames(frames: list[np.ndarray], skipped: list | tuple = ()) -> None:
    """Raise AdaptError where the frames cannot stand for a street: too few (naming the inputs ``skipped``,
    (name, why) pairs, that would have counted), or all (nearly) the same."""
    if len(frames) < MIN_FRAMES:
        why = ""
        if skipped:
            named = "; ".join(reason if name in reason else f"{name}: {reason}" for name, reason in skipped[:3])
            why = f"; {len(skipped)} file{'s were' if len(skipped) != 1 else ' was'} skipped ({named}" + \
                  ("; ..." if len(skipped) > 3 else "") + ")"
        raise AdaptError(f"{len(frames)} frame{'s are' if len(frames) != 1 else ' is'} too few to adapt a model "
                         f"(at least {MIN_FRAMES} of one street and camera){why}; the model is left as it was")
    thumbs = np.stack([_thumb(f) for f in frames])
    spread = float(np.abs(thumbs - thumbs.mean(0)).mean())
    if spread < MIN_SPREAD:
        raise AdaptError(f"the {len(frames)} frames are all but identical (they differ by {spread:.1f} levels on "
                         "average): they cannot show the model a street; the model is left as it was")


def clip_stride(frames: int | None, fps: float) -> int:
    """Every how many frames of a clip to adapt on: at most CLIP_RATE a second and CLIP_FRAMES in all,
    spread over the whole clip, yet MIN_FRAMES where a short clip has them."""
    stride = max(1, int(fps // CLIP_RATE))
    if frames:
        stride = max(stride, -(-frames // CLIP_FRAMES))
        stride = min(stride, max(1, frames // MIN_FRAMES))
    return stride


def _is_clip(source: Path) -> bool:
    from sis.video.clips import EXTENSIONS
    return Path(source).is_file() and Path(source).suffix.lower().lstrip(".") in EXTENSIONS


def read_frames(source: Path, stride: int | None = None, limit: int = MAX_FRAMES,
                base: tuple[int, int] | None = None) -> tuple[list[np.ndarray], list, int]:
    """The RGB frames of a folder of images or a clip (every ``stride``-th one; None: every photo, or a
    clip's frames by clip_stride), the inputs skipped, and the stride used. With ``base`` (a model's base
    size), each frame is kept at the size the model will see it at (``engines.predict.work_size``), not
    at the size it was taken at."""
    from sis.data.images import ImageError, iter_images, load_image
    from sis.engines.predict import at_work_size
    from sis.video.clips import iter_frames, probe

    def kept(rgb: np.ndarray) -> np.ndarray:  # a phone's photo or a 4K frame, held only at its work size
        return rgb if base is None else at_work_size(rgb, base)
    source = Path(source)
    if not source.exists():
        raise AdaptError(f"{source} does not exist")
    frames, skipped = [], []
    if _is_clip(source):
        if stride is None:
            info = probe(source)
            stride = clip_stride(info.frames, info.fps)
        for _, rgb in iter_frames(source, stride):  # the whole clip: its limit counts the frames taken
            frames.append(kept(rgb))
            if len(frames) >= limit:
                break
        return frames, skipped, stride
    stride = stride or 1
    paths = iter_images([source]) if source.is_dir() else [source]
    if source.is_dir():
        images = set(paths)
        skipped += [(p.name, "not an image file") for p in sorted(source.iterdir())
                    if p.is_file() and p not in images]
    for p in paths[::stride][:limit]:
        try:
            frames.append(kept(np.asarray(load_image(p).image)))
        except ImageError as e:
            skipped.append((p.name, str(e)))
    return frames, skipped, stride


class Estimated(NamedTuple):
    layers: int            # BatchNorm layers re-estimated
    frames: int            # frames they were estimated on: fewer than given where stopped
    training_share: float  # the share of the training statistics kept


def training_share(frames: int, prior_frames: float = PRIOR_FRAMES) -> float:
    """The share of the training statistics kept after estimating on ``frames`` frames, where they weigh as
    much as ``prior_frames`` frames: a few frames move the statistics little, many move them most of the way."""
    if frames < 0 or prior_frames < 0:
        raise ValueError(f"frames and prior frames count up from 0, not {frames} and {prior_frames}")
    return prior_frames / (prior_frames + frames) if prior_frames else 0.0


def _norms(model) -> list:
    """Every BatchNorm layer of ``model``, in module order."""
    import torch
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def batchnorm_statistics(model) -> list[tuple]:
    """A copy of every BatchNorm layer's (running mean, running variance), in module order."""
    return [(m.running_mean.clone(), m.running_var.clone()) for m in _norms(model)]


def blend_statistics(model, source: list[tuple], share: float) -> None:
    """Move ``model``'s BatchNorm statistics (in place) to ``share`` of ``source``'s (from
    batchnorm_statistics of the model it started as) and 1 - share of its own: a prior on the training
    statistics, as in Schneider et al., NeurIPS 2020 (0: the frames' alone, 1: the training city's)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the training statistics' share must lie in [0, 1], not {share}")
    norms = _norms(model)
    if len(norms) != len(source):
        raise ValueError(f"{len(source)} sets of statistics for {len(norms)} BatchNorm layers")
    for m, (mean, var) in zip(norms, source):
        m.running_mean.mul_(1 - share).add_(mean, alpha=share)
        m.running_var.mul_(1 - share).add_(var, alpha=share)


def adapt_batchnorm(model, cfg, frames: Iterable[np.ndarray], progress: Callable[[int, int], None] | None = None,
                    stop: Callable[[], bool] | None = None, prior_frames: float = 0) -> Estimated:
    """Re-estimate every BatchNorm layer's running mean and variance of ``model`` (in place) as the
    plain average over ``frames``, each at its work size, then blend in the statistics it had, weighed as ``prior_frames``
    frames (training_share; 0: the frames' alone); the other layers run as in inference. ``stop`` ends it
    between frames, the statistics then those of the frames before (none: reset, not for use)."""
    import torch

    from sis.zoo.preprocess import forward_logits
    source = batchnorm_statistics(model) if prior_frames else None
    norms = _norms(model)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the frames, not a decaying one
    model.eval()
    for m in norms:
        m.train()  # normalises each frame by its own statistics and adds them to the average
    frames, used = list(frames), 0
    with torch.no_grad():
        for i, rgb in enumerate(frames):
            if stop is not None and stop():
                break
            forward_logits(model, cfg, seen(rgb, cfg), amp=False)
            used += 1
            if progress:
                progress(i + 1, len(frames))
    for m in norms:
        m.momentum = 0.1
    model.eval()
    share = training_share(used, prior_frames)  # no frame seen and a prior: the statistics it had
    if source is not None:
        blend_statistics(model, source, share)
    return Estimated(len(norms), used, share)


def seen(rgb: np.ndarray, cfg):
    """(1, 3, h, w) uint8 tensor of what the model is given for ``rgb``: the frame at its work size."""
    import torch

    from sis.engines.predict import as_batch, at_work_size
    return torch.from_numpy(as_batch(at_work_size(rgb, cfg.base_size)))


def fit_epochs_here() -> float:
    """FIT_EPOCHS, or none on a small host (``host.is_small``): the fit's backward pass holds about half a
    GB more than the statistics do (docs/memory.md), more than a hosted instance has to spare."""
    from sis import host
    return 0.0 if host.is_small() else FIT_EPOCHS


def fit_steps(frames: int, epochs: float = FIT_EPOCHS) -> int:
    """How many fitting steps an adaptation on ``frames`` frames takes: ``epochs`` passes over them, at least
    FIT_MIN_STEPS and at most FIT_STEPS (none where ``epochs`` or ``frames`` is 0: the statistics alone)."""
    if frames < 0 or epochs < 0:
        raise ValueError(f"frames and fitting epochs count up from 0, not {frames} and {epochs}")
    return 0 if not (frames and epochs) else min(max(round(epochs * frames), FIT_MIN_STEPS), FIT_STEPS)


def fit_to_frames(model, cfg, frames: list[np.ndarray], steps: int, lr: float = FIT_LR,
                  temperature: float = 1.0, targets: list[np.ndarray] | None = None, train: str = "norm",
                  seed: int = 0, progress: Callable[[int], None] | None = None,
                  stop: Callable[[], bool] | None = None, side: float | None = None) -> int:
    """Fit ``model`` (in place) to unlabelled ``frames`` for ``steps`` steps of Adam, one frame a step, each
    frame once a pass in a seeded order, mirrored at random; the running statistics (adapt_batchnorm's)
    stay as they are. Without ``targets`` it minimises the mean per-pixel entropy of the calibrated softmax
    (TENT, Wang et al., ICLR 2021); with them (one (h, w) uint8 label map per frame at its work size, 255
    where unsure) the cross-entropy to them (self-training on pseudo-labels; measured, not used by
    ``adapt_folder``). ``train``: "norm" fits every BatchNorm layer's scale and shift only, "all" every
    weight. Each step sees a random window ``side`` of each side of its frame (default FIT_SIDE; 1: the whole
    frame). ``progress`` gets the steps done after each; ``stop`` ends it between steps. Returns the steps done."""
    import torch
    import torch.nn.functional as F

    from sis.zoo.preprocess import forward_logits
    if train not in ("norm", "all"):
        raise ValueError(f"train is 'norm' or 'all', not {train!r}")
    params = ([p for m in _norms(model) for p in (m.weight, m.bias) if p is not None] if train == "norm"
              else list(model.parameters()))
    if steps <= 0 or not frames or not params:
        return 0
    held = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()  # normalised by the statistics just estimated, as in inference
    opt = torch.optim.Adam(params, lr)
    rng = np.random.default_rng(seed)
    xs = [seen(rgb, cfg) for rgb in frames]
    ys = None if targets is None else [torch.from_numpy(t.astype(np.int64))[None] for t in targets]
    order, done = [], 0
    try:
        while done < steps:
            if stop is not None and stop():
                break
            if not order:
                order = list(rng.permutation(len(xs)))
            i = order.pop(0)
            flip = rng.random() < 0.5
            x, y = xs[i], None if ys is None else ys[i]
            crop = FIT_SIDE if side is None else side
            if crop < 1:  # a random window of the frame: the same fit at a fraction of the time
                h, w = x.shape[-2:]
                ch, cw = max(32, round(h * crop)), max(32, round(w * crop))
                top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                x = x[..., top:top + ch, left:left + cw]
                y = None if y is None else y[..., top:top + ch, left:left + cw]
            logits = forward_logits(model, cfg, x.flip(-1) if flip else x, amp=False) / temperature
            if ys is None:
                loss = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
            else:
                y = y.flip(-1) if flip else y
                loss = F.cross_entropy(logits, y, ignore_index=255) if (y != 255).any() else None
            if loss is not None:
                opt.zero_grad()
                loss.backward()
                opt.step()
            done += 1
            if progress:
                progress(done)
    finally:
        for p, g in held.items():
            p.requires_grad_(g)
        model.eval()
    return done


def adapt_folder(init: Path, source: Path, out: Path, stride: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 stop: Callable[[], bool] | None = None, prior_frames: float = PRIOR_FRAMES,
                 fit_epochs: float | None = None) -> Adaptation:
    """The model in ``init`` adapted to the frames of ``source`` (a folder of photos or a clip; every
    ``stride``-th, or by read_frames' rule), saved as a new model folder ``out``; ``init`` is never
    written: its BatchNorm statistics re-estimated on the frames (adapt_batchnorm, the training ones
    weighed as ``prior_frames`` frames), then its BatchNorm scales and shifts fitted to surer predictions
    on them for ``fit_epochs`` passes (fit_steps, fit_to_frames; 0: the statistics alone; None: this host's
    default, fit_epochs_here), then given its start's graph where it labels frames as eager does
    (carry.carried_engines). ``progress`` gets (steps done, steps planned), a frame's pass, a fitting step
    and the graph's check each one. Raises AdaptError (nothing written) where the frames cannot adapt it,
    or ``stop`` came before enough of them had been seen; stopped later, the model so far is saved and its
    card says how far it got."""
    from sis import zoo
    from sis.packaging.carry import GRAPH, INT8, carried_engines
    from sis.zoo import models
    from sis.zoo.registry import read_config
    init, out = Path(init), Path(out)
    if out.resolve() == init.resolve():
        raise AdaptError("the adapted model needs a folder of its own (--out), not the one it starts from")
    frames, skipped, stride = read_frames(source, stride, base=read_config(init).base_size)
    check_frames(frames, skipped)
    t0 = time.perf_counter()
    model, cfg = models.load_model(init)
    start = zoo.read_card(init)
    fit_epochs = fit_epochs_here() if fit_epochs is None else fit_epochs
    planned = fit_steps(len(frames), fit_epochs)
    total = len(frames) + planned + 1  # the last step: the new model's graph checked (carry.carried_engines)

    def counted(i, n):
        if progress:
            progress(i, total)
    layers, used, share = adapt_batchnorm(model, cfg, frames, counted, stop, prior_frames)
    if layers == 0:
        raise AdaptError(f"{cfg.name} has no BatchNorm layer to adapt")
    if used < MIN_FRAMES:  # stopped that early, the statistics stand for no street
        raise AdaptError(f"stopped after {used} of {len(frames)} frames, fewer than the {MIN_FRAMES} an adaptation "
                         "needs: nothing was written and the model is left as it was")
    planned = fit_steps(used, fit_epochs)
    fitted = fit_to_frames(model, cfg, frames[:used], planned, FIT_LR, start.temperature,
                           progress=lambda k: counted(len(frames) + k, total), stop=stop)
    cfg.init = f"adapted:{init.name}"
    models.save_model(model, cfg, out)  # its graph is filled from the saved weights, then checked; the card last
    fast = carried_engines(init, out, frames[:used], lambda rgb: seen(rgb, cfg).numpy(),
                           "the adaptation frames")
    counted(total, total)
    seconds = time.perf_counter() - t0
    checked = (fast or {}).get("backends", {})
    int8 = checked.get(INT8, {})
    result = Adaptation(str(init), str(out), used, skipped, round(seconds, 1), layers, len(frames), round(share, 4),
                        stride, fitted, planned, checked.get(GRAPH, {}).get("agreement"), int8.get("agreement"),
                        int8.get("start_agreement"))
    method = "BatchNorm statistics re-estimated on the frames (AdaBN)" + (
        f", {share:.0%} of the training statistics kept (they weigh as {prior_frames:g} frames)"
        if prior_frames else "") + (
        f"; then the BatchNorm scales and shifts fitted to surer predictions on them (entropy minimised, "
        f"TENT), {fitted} steps of Adam at {FIT_LR:g}" if fitted else "") + "; no other weight changed"
    zoo.write_card(out, zoo.derived_card(init, init=cfg.init, status="stopped" if result.stopped else "done",
                                         unlabeled=result.to_dict() | {"method": method, "source": str(source)},
                                         **({"fast_path": fast} if fast else {})))
    return result
