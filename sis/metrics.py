"""Pure segmentation metrics: a confusion matrix first, reductions after.

Label maps may be numpy arrays or torch tensors (on any device: the counting then runs there);
the confusion matrix and everything after it are numpy, and no function keeps state, so a
running evaluation is just ``cm += confusion_matrix(...)`` per batch. Serving imports this
without torch.
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """(num_classes, num_classes) int64 counts; rows = true class, cols = predicted.

    pred, target: integer label maps of the same shape (any shape), both numpy or both torch.
    Pixels whose target is ``ignore_index`` or outside ``[0, num_classes)`` are not counted.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if isinstance(pred, np.ndarray):
        t, p = target.reshape(-1).astype(np.int64), pred.reshape(-1).astype(np.int64)
    else:  # a torch tensor: count where it lives (the GPU during training), hand back numpy
        t, p = target.reshape(-1).long(), pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    t, p = t[keep], p[keep].clip(0, num_classes - 1)
    flat = t * num_classes + p
    if isinstance(flat, np.ndarray):
        counts = np.bincount(flat, minlength=num_classes ** 2)
    else:
        import torch
        counts = torch.bincount(flat, minlength=num_classes ** 2).cpu().numpy()
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with NaN where den == 0 (class absent: excluded from means)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def per_class_iou(cm: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both target and prediction."""
    cm = np.asarray(cm)
    tp = np.diag(cm)
    return _ratio(tp, cm.sum(0) + cm.sum(1) - tp)


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def mean_iou(cm: np.ndarray) -> float:
    """Mean of per-class IoU over classes that occur (NaN classes skipped)."""
    return _nanmean(per_class_iou(cm))


def pixel_accuracy(cm: np.ndarray) -> float:
    """Global accuracy: correctly labelled pixels / all counted pixels."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.diag(cm).sum() / total) if total > 0 else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per class: TP / pixels of that class; NaN where the class is absent."""
    cm = np.asarray(cm)
    return _ratio(np.diag(cm), cm.sum(1))


def mean_class_accuracy(cm: np.ndarray) -> float:
    return _nanmean(per_class_accuracy(cm))


def summarize(cm: np.ndarray, names: tuple[str, ...] | list[str]) -> dict:
    """JSON-ready report: miou, pixel_acc, mean_class_acc, per_class_iou {name: iou|None}."""
    iou = per_class_iou(cm).tolist()
    return {
        "miou": mean_iou(cm),
        "pixel_acc": pixel_accuracy(cm),
        "mean_class_acc": mean_class_accuracy(cm),
        "per_class_iou": {n: (None if v != v else v) for n, v in zip(names, iou)},
        "pixels": int(np.asarray(cm).sum()),
    }


CALIBRATION_BINS = 15  # equal-width confidence bins (Guo et al., ICML 2017)


def calibration_bins(confidence, correct, n_bins: int = CALIBRATION_BINS) -> np.ndarray:
    """(n_bins, 3) float64 per confidence bin: [pixels, sum of confidence, pixels right]; sums over
    images like a confusion matrix. confidence: max class probability in [0, 1]; correct: bool, same shape."""
    c = np.asarray(confidence, np.float64).reshape(-1)
    r = np.asarray(correct, bool).reshape(-1)
    idx = np.minimum((c * n_bins).astype(np.int64), n_bins - 1)
    out = np.zeros((n_bins, 3))
    out[:, 0] = np.bincount(idx, minlength=n_bins)
    out[:, 1] = np.bincount(idx, weights=c, minlength=n_bins)
    out[:, 2] = np.bincount(idx, weights=r.astype(np.float64), minlength=n_bins)
    return out


def expected_calibration_error(bins: np.ndarray) -> float:
    """ECE: the pixel-weighted mean gap between confidence and accuracy over the bins (0 = calibrated)."""
    n = bins[:, 0]
    total = n.sum()
    if total == 0:
        return float("nan")
    seen = n > 0
    return float(np.abs(bins[seen, 1] - bins[seen, 2]).sum() / total)


def auroc(positive, negative) -> float:
    """Area under the ROC curve of a score that should be higher for ``positive`` than ``negative``
    (ties count half): the chance that a random positive outscores a random negative."""
    pos, neg = np.asarray(positive, np.float64).reshape(-1), np.asarray(negative, np.float64).reshape(-1)
    if not len(pos) or not len(neg):
        return float("nan")
    scores = np.concatenate([pos, neg])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    uniq, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
