"""What the pages show, computed here: pages only lay it out."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import metrics, zoo
from .classes import ClassSet
from .infer import Prediction, class_share, colorize, error_map, label_png, overlay, predict, rgb_png

# perceptually ordered colour map for confidence (viridis, 6 anchors, linearly interpolated)
_VIRIDIS = np.array([[68, 1, 84], [65, 68, 135], [42, 120, 142], [34, 168, 132], [122, 209, 81], [253, 231, 37]],
                    np.float32)


def colormap(x: np.ndarray) -> np.ndarray:
    """(H, W) floats in [0, 1] -> (H, W, 3) uint8 viridis."""
    t = np.clip(x, 0, 1) * (len(_VIRIDIS) - 1)
    i = np.minimum(t.astype(int), len(_VIRIDIS) - 2)
    f = (t - i)[..., None]
    return np.rint(_VIRIDIS[i] * (1 - f) + _VIRIDIS[i + 1] * f).astype(np.uint8)


def image_miou(labels: np.ndarray, truth: np.ndarray, classes: ClassSet) -> dict:
    cm = metrics.confusion_matrix(torch.from_numpy(labels.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)),
                                  classes.num_classes, classes.void)
    return metrics.summarize(cm, classes.names)


DISPLAY_MAX = 1600  # longest side of the arrays a result keeps for display (session state stays small)


def _shrink(arr: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if arr.shape[:2] == size:
        return arr
    im = Image.fromarray(arr)
    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def segment(model, cfg: zoo.ModelConfig, image: Image.Image, truth: np.ndarray | None = None,
            runner=None, display_max: int = DISPLAY_MAX) -> dict:
    """Everything the Segment page shows for one image and one model (overlay: see ``paint``).

    Scores and the two PNG downloads are computed at the image's own size; the arrays kept
    for display are at most ``display_max`` pixels on the longest side.
    """
    classes = cfg.class_set
    pal = classes.palette()
    rgb = np.asarray(image.convert("RGB"))
    pred: Prediction = predict(model, cfg, rgb, runner=runner)
    h, w = pred.labels.shape
    f = min(1.0, display_max / max(h, w))
    disp = (max(1, round(h * f)), max(1, round(w * f)))
    labels = _shrink(pred.labels, disp, nearest=True)
    out = {"image": _shrink(rgb, disp, nearest=False), "labels": labels, "mask": colorize(labels, pal),
           "confidence": colormap(_shrink(pred.confidence, disp, nearest=False)), "size": (h, w),
           "mean_confidence": float(pred.confidence.mean()), "share": class_share(pred.labels, classes.num_classes),
           "ms": pred.ms, "work_size": pred.work_size, "truth": None,
           "backend": runner.name if runner is not None else "eager",
           "mask_png": rgb_png(colorize(pred.labels, pal)), "label_png": label_png(pred.labels)}
    if truth is not None and truth.shape == pred.labels.shape:
        t = _shrink(truth, disp, nearest=True)
        out.update(truth=colorize(t, pal), errors=error_map(labels, t, classes.void),
                   scores=image_miou(pred.labels, truth, classes))
    return out


def paint(res: dict, classes: ClassSet, alpha: float, visible: list[int] | None = None) -> np.ndarray:
    """The overlay for a ``segment`` result at opacity ``alpha``, painting only ``visible`` classes."""
    return overlay(res["image"], res["labels"], classes.palette(), alpha, visible)


def disagreement(label_maps: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """(H, W, 3) map of how many distinct answers the models give per pixel, and the share of pixels with >1."""
    stack = np.stack(label_maps)
    distinct = np.ones(stack.shape[1:], np.int32)
    for k in range(1, len(stack)):
        distinct += np.all(stack[k][None] != stack[:k], axis=0)
    frac = float((distinct > 1).mean())
    return colormap((distinct - 1) / max(len(stack) - 1, 1)), frac


def dashboard_rows(entries: dict, measured: dict[str, dict] | None = None) -> list[dict]:
    """One row per available model, from its card (metrics) and the registry (size).

    ``measured``: key -> this host's kept engine comparison (app.measured_engines); where there is
    one, the fast path and its time are this host's ("fast_timed": "this host"), else the card's."""
    from .backends import default_backend
    rows = []
    for key, e in entries.items():
        cfg, card = zoo.read_config(e.folder), zoo.read_card(e.folder)
        c = card.get("complexity") or zoo.config_complexity(cfg)  # the card's: no model build (smp import)
        val = card.get("val") or {}
        here = (measured or {}).get(key)
        fast = {"default": default_backend(card, measured=here), "backends": here} if here else \
            card.get("fast_path") or {}
        fast_b = (fast.get("backends") or {}).get(fast.get("default"), {})
        rows.append({"model": key, "arch": cfg.arch, "encoder": cfg.encoder, "paper": zoo.MODELS[cfg.name].paper,
                     "val_miou": val.get("miou"), "pixel_acc": val.get("pixel_acc"),
                     "per_class_iou": val.get("per_class_iou", {}), "params_m": c["params"] / 1e6,
                     "gflops": c["gflops"], "cpu_ms": (card.get("latency") or {}).get("median_ms"),
                     "epochs": card.get("epochs_run"), "history": card.get("history", []),
                     "init": cfg.init, "fast_backend": fast.get("default"), "fast_ms": fast_b.get("median_ms"),
                     "fast_timed": "this host" if here else "when shipped" if fast else None})
    return rows


def compare(models: list[tuple], image: Image.Image) -> dict:
    """The same image through each (name, model, cfg[, runner]): masks, timings and a disagreement map."""
    rgb = np.asarray(image.convert("RGB"))
    results = []
    for name, model, cfg, *rest in models:
        runner = rest[0] if rest else None
        pred = predict(model, cfg, rgb, runner=runner)
        results.append({"name": name, "mask": colorize(pred.labels, cfg.class_set.palette()), "labels": pred.labels,
                        "ms": pred.ms, "backend": runner.name if runner is not None else "eager"})
    dis, frac = disagreement([r["labels"] for r in results])
    return {"image": rgb, "results": results, "disagreement": dis, "disagree_frac": frac}
