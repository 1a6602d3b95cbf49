"""mAP@0.5 agreement and F1: hand-checked cases."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation import agreement_map50, average_precision, f1_score
from split_infer.model.agreement import iou_matrix

pytestmark = pytest.mark.unit


def d(*rows) -> np.ndarray:
    return np.array(rows, np.float32).reshape(-1, 6)


REF = [d([0, 0, 10, 10, 0.9, 2], [20, 20, 30, 30, 0.8, 0]), d([5, 5, 15, 15, 0.7, 2])]


def test_identical_detections_agree_fully() -> None:
    assert agreement_map50(REF, REF) == pytest.approx(1.0)
    assert f1_score(REF, REF) == 1.0


def test_missing_and_extra_detections_lower_agreement() -> None:
    pred = [d([0, 0, 10, 10, 0.9, 2]), d([5, 5, 15, 15, 0.7, 2], [50, 50, 60, 60, 0.95, 2])]
    # car: GT 2; preds sorted 0.95 (FP), 0.9 (TP), 0.7 (TP) -> P/R: (0, 0), (1/2, 1/2), (2/3, 1)
    # all-point AP = 0.5 * 2/3 + 0.5 * 2/3 = 2/3; person: GT 1, no preds -> AP 0
    assert agreement_map50(REF, pred) == pytest.approx((2 / 3 + 0) / 2)
    assert f1_score(REF, pred) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_low_confidence_predictions_count_for_ranking_but_reference_is_thresholded() -> None:
    ref = [d([0, 0, 10, 10, 0.9, 2], [40, 40, 50, 50, 0.1, 2])]  # the 0.1 box is not ground truth
    pred = [d([0, 0, 10, 10, 0.01, 2])]
    assert agreement_map50(ref, pred) == pytest.approx(1.0)
    assert f1_score(ref, pred) == 0.0  # below 0.25 it is not a detection


def test_wrong_class_or_poor_overlap_do_not_match() -> None:
    assert agreement_map50(REF[:1], [d([0, 0, 10, 10, 0.9, 7], [20, 20, 30, 30, 0.8, 0])]) == pytest.approx(0.5)
    assert agreement_map50(REF[:1], [d([5, 0, 15, 10, 0.9, 2], [20, 20, 30, 30, 0.8, 0])]) == pytest.approx(0.5)


def test_helpers() -> None:
    iou = iou_matrix(np.array([[0, 0, 10, 10]], float), np.array([[5, 0, 15, 10]], float))
    assert iou[0, 0] == pytest.approx(1 / 3)
    assert average_precision(np.array([1.0]), np.array([1.0])) == 1.0
    with pytest.raises(ValueError):
        agreement_map50(REF, REF[:1])
