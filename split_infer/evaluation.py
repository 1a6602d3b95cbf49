"""Agreement of a method's detections with a reference detector's (no labels needed).

The unsplit fp32 model's detections at conf 0.25 are the ground truth; a method's detections,
ranked down to conf 0.001, are scored by mAP@0.5 over the traffic classes. Used by the codec
benchmark and by the core's INT8 fidelity check. Numpy only.
"""

from __future__ import annotations

import numpy as np

# COCO ids: person, bicycle, car, motorcycle, bus, truck.
TRAFFIC_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 5, 7)
REF_CONF = 0.25  # reference detections (the "ground truth")
RANK_CONF = 0.001  # method detections kept for ranking in AP
NMS_IOU = 0.45
MATCH_IOU = 0.5


def keep_classes(dets: np.ndarray, classes=TRAFFIC_CLASSES) -> np.ndarray:
    """[K, 6] (x1, y1, x2, y2, score, class) -> only the rows of `classes`."""
    dets = np.asarray(dets, np.float32).reshape(-1, 6)
    return dets[np.isin(dets[:, 5].astype(int), classes)]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] against every box in b [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod((rb - lt).clip(0), axis=2)
    area = lambda x: np.prod((x[:, 2:4] - x[:, :2]).clip(0), axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def _match(pred: np.ndarray, gt: np.ndarray, iou: float) -> np.ndarray:
    """Greedy matching, highest score first: True where a prediction hits an unmatched GT box."""
    hit = np.zeros(len(pred), bool)
    if not len(pred) or not len(gt):
        return hit
    order = np.argsort(-pred[:, 4], kind="stable")
    ious = iou_matrix(pred[order, :4], gt[:, :4])
    taken = np.zeros(len(gt), bool)
    for rank, i in enumerate(order):
        cand = np.where(taken, -1.0, ious[rank])
        j = int(cand.argmax())
        if cand[j] >= iou:
            taken[j], hit[i] = True, True
    return hit


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated area under the precision-recall curve."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    idx = np.where(r[1:] != r[:-1])[0]
    return float(np.sum((r[idx + 1] - r[idx]) * p[idx + 1]))


def agreement_map50(reference: list[np.ndarray], predicted: list[np.ndarray], classes=TRAFFIC_CLASSES,
                    ref_conf: float = REF_CONF, iou: float = MATCH_IOU) -> float:
    """mAP@iou of `predicted` (per frame [K, 6], ranked to any conf) against `reference`
    (per frame [K, 6], kept at score >= ref_conf), averaged over classes present in the reference."""
    if len(reference) != len(predicted):
        raise ValueError("reference and predicted need one entry per frame")
    aps = []
    for c in classes:
        scores, hits, n_gt = [], [], 0
        for ref, pred in zip(reference, predicted):
            gt = keep_classes(ref, (c,))
            gt = gt[gt[:, 4] >= ref_conf]
            pr = keep_classes(pred, (c,))
            n_gt += len(gt)
            scores.append(pr[:, 4])
            hits.append(_match(pr, gt, iou))
        if n_gt == 0:
            continue
        s, h = np.concatenate(scores), np.concatenate(hits)
        order = np.argsort(-s, kind="stable")
        tp = np.cumsum(h[order])
        fp = np.cumsum(~h[order])
        aps.append(average_precision(tp / n_gt, tp / np.maximum(tp + fp, 1)) if len(s) else 0.0)
    return float(np.mean(aps)) if aps else float("nan")


def f1_score(reference: list[np.ndarray], predicted: list[np.ndarray], classes=TRAFFIC_CLASSES,
             conf: float = REF_CONF, iou: float = MATCH_IOU) -> float:
    """Pooled F1 of predicted detections at score >= conf against the reference, class-aware."""
    tp = fp = fn = 0
    for ref, pred in zip(reference, predicted):
        for c in classes:
            gt = keep_classes(ref, (c,)); gt = gt[gt[:, 4] >= conf]
            pr = keep_classes(pred, (c,)); pr = pr[pr[:, 4] >= conf]
            hit = _match(pr, gt, iou)
            tp += int(hit.sum()); fp += int((~hit).sum()); fn += len(gt) - int(hit.sum())
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
