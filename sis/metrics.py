"""Pure segmentation metrics: a confusion matrix first, reductions after.

All functions take and return tensors/floats and keep no state, so a running
evaluation is just ``cm += confusion_matrix(...)`` per batch.
"""
from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; rows = true class, cols = predicted.

    pred, target: integer label maps of the same shape (any shape). Pixels whose
    target is ``ignore_index`` or outside ``[0, num_classes)`` are not counted.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    t = target.reshape(-1).long()
    p = pred.reshape(-1).long()
    keep = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        keep &= t != ignore_index
    t, p = t[keep], p[keep].clamp(0, num_classes - 1)
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num/den with NaN where den == 0 (class absent: excluded from means)."""
    num, den = num.double(), den.double()
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, float("nan")))


def per_class_iou(cm: torch.Tensor) -> torch.Tensor:
    """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both target and prediction."""
    tp = cm.diag()
    return _ratio(tp, cm.sum(0) + cm.sum(1) - tp)


def mean_iou(cm: torch.Tensor) -> float:
    """Mean of per-class IoU over classes that occur (NaN classes skipped)."""
    return float(torch.nanmean(per_class_iou(cm)))


def pixel_accuracy(cm: torch.Tensor) -> float:
    """Global accuracy: correctly labelled pixels / all counted pixels."""
    total = cm.sum()
    return float(cm.diag().sum() / total) if total > 0 else float("nan")


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall per class: TP / pixels of that class; NaN where the class is absent."""
    return _ratio(cm.diag(), cm.sum(1))


def mean_class_accuracy(cm: torch.Tensor) -> float:
    return float(torch.nanmean(per_class_accuracy(cm)))


def summarize(cm: torch.Tensor, names: tuple[str, ...] | list[str]) -> dict:
    """JSON-ready report: miou, pixel_acc, mean_class_acc, per_class_iou {name: iou|None}."""
    iou = per_class_iou(cm).tolist()
    return {
        "miou": mean_iou(cm),
        "pixel_acc": pixel_accuracy(cm),
        "mean_class_acc": mean_class_accuracy(cm),
        "per_class_iou": {n: (None if v != v else v) for n, v in zip(names, iou)},
        "pixels": int(cm.sum()),
    }
