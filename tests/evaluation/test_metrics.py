import math

import numpy as np
import pytest
import torch

from sis import metrics


def test_confusion_matrix_hand_computed():
    target = torch.tensor([[0, 0, 1], [1, 2, 3]])  # 3 = void
    pred = torch.tensor([[0, 1, 1], [1, 2, 0]])
    cm = metrics.confusion_matrix(pred, target, num_classes=3, ignore_index=3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    # IoU: class0 1/(1+0+1)=0.5; class1 2/(2+1+0)=2/3; class2 1/1
    iou = metrics.per_class_iou(cm).tolist()
    assert iou == pytest.approx([0.5, 2 / 3, 1.0])
    assert metrics.mean_iou(cm) == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert metrics.pixel_accuracy(cm) == pytest.approx(4 / 5)
    assert metrics.mean_class_accuracy(cm) == pytest.approx((0.5 + 1 + 1) / 3)


def test_numpy_label_maps_count_as_torch_ones():
    """Serving scores numpy label maps (no torch); evaluation counts tensors: the same matrix."""
    g = np.random.default_rng(0)
    target, pred = g.integers(0, 12, (3, 20, 30)), g.integers(0, 11, (3, 20, 30))
    cm_np = metrics.confusion_matrix(pred.astype(np.uint8), target.astype(np.uint8), 11, ignore_index=11)
    cm_t = metrics.confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), 11, ignore_index=11)
    assert cm_np.tolist() == cm_t.tolist() and cm_np.sum() == (target != 11).sum()


def test_absent_class_is_nan_and_skipped():
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    cm = metrics.confusion_matrix(pred, target, num_classes=3)
    iou = metrics.per_class_iou(cm)
    assert math.isnan(iou[2])
    assert metrics.mean_iou(cm) == 1.0
    assert metrics.summarize(cm, ["a", "b", "c"])["per_class_iou"]["c"] is None


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 3)


def test_matches_smp_metrics_on_random_data():
    smp_metrics = pytest.importorskip("segmentation_models_pytorch.metrics")
    g = torch.Generator().manual_seed(0)
    c = 11
    target = torch.randint(0, c + 1, (4, 40, 50), generator=g)  # includes void id 11
    pred = torch.randint(0, c, (4, 40, 50), generator=g)
    cm = metrics.confusion_matrix(pred, target, c, ignore_index=c)
    tp, fp, fn, tn = smp_metrics.get_stats(pred.long(), target.long(), mode="multiclass", num_classes=c,
                                          ignore_index=c)
    tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    ref_iou = tp.double() / (tp + fp + fn).double()
    np.testing.assert_allclose(metrics.per_class_iou(cm), ref_iou.numpy(), atol=1e-12)
    assert metrics.pixel_accuracy(cm) == pytest.approx(float(tp.sum() / (target != c).sum()))


def test_calibration_error_by_hand():
    """Two bins: 0.95-confident pixels half right (gap 0.45), 0.55-confident ones all right (gap 0.45)."""
    bins = metrics.calibration_bins([0.95, 0.95, 0.55, 0.55], [True, False, True, True])
    assert bins[14].tolist() == pytest.approx([2, 1.9, 1]) and bins[8].tolist() == pytest.approx([2, 1.1, 2])
    assert metrics.expected_calibration_error(bins) == pytest.approx((0.9 + 0.9) / 4)
    perfect = metrics.calibration_bins([1.0, 1.0, 0.5, 0.5], [True, True, True, False])
    assert metrics.expected_calibration_error(perfect) == pytest.approx(0.0)
    assert math.isnan(metrics.expected_calibration_error(metrics.calibration_bins([], [])))


def test_auroc_by_hand():
    assert metrics.auroc([3, 4, 5], [1, 2]) == 1.0 and metrics.auroc([1, 2], [3, 4]) == 0.0
    # pairs (1,2) (1,3) (2,2) (2,3): only the tie counts, half
    assert metrics.auroc([1, 2], [2, 3]) == pytest.approx(0.5 / 4)
    assert math.isnan(metrics.auroc([], [1]))
