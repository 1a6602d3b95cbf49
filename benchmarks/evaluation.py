"""Agreement of a method's detections with a reference detector's (no labels needed).

The unsplit fp32 model's detections at conf 0.25 are the ground truth; a method's detections,
ranked down to conf 0.001, are scored by mAP@0.5 over the traffic classes. Used by the codec
benchmark and by the core's INT8 fidelity check. Numpy only.
"""

from __future__ import annotations

import numpy as np

from split_infer.model.agreement import greedy_hits  # one matching rule for package and benchmarks

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
        for ref, pred in zip(reference, predicted, strict=True):
            gt = keep_classes(ref, (c,))
            gt = gt[gt[:, 4] >= ref_conf]
            pr = keep_classes(pred, (c,))
            n_gt += len(gt)
            scores.append(pr[:, 4])
            hits.append(greedy_hits(pr, gt, iou))
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
    for ref, pred in zip(reference, predicted, strict=True):  # one entry per frame, paired
        for c in classes:
            gt = keep_classes(ref, (c,))
            gt = gt[gt[:, 4] >= conf]
            pr = keep_classes(pred, (c,))
            pr = pr[pr[:, 4] >= conf]
            hit = greedy_hits(pr, gt, iou)
            tp += int(hit.sum())
            fp += int((~hit).sum())
            fn += len(gt) - int(hit.sum())
    return 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0


# --- pooled agreement with a confidence interval (the rate-fidelity instrument) -----------------

def eligible_classes(reference: list[np.ndarray], classes=TRAFFIC_CLASSES, min_instances: int = 25,
                     ref_conf: float = REF_CONF) -> tuple[int, ...]:
    """The classes with at least `min_instances` reference detections: rarer ones make AP jumpy."""
    counts = {c: 0 for c in classes}
    for ref in reference:
        r = keep_classes(ref, classes)
        r = r[r[:, 4] >= ref_conf]
        for c in classes:
            counts[c] += int((r[:, 5].astype(int) == c).sum())
    return tuple(c for c in classes if counts[c] >= min_instances)


class FrameMatches:
    """Per-frame matching results, so that AP over any resampling of frames is a cheap pooling.

    scores[i] and hits[i]: frame i's predictions (of the classes) and whether each matched an
    unmatched reference box; n_gt[i]: its reference boxes. `class_agnostic` matches boxes of any
    of the classes to each other (the class label is ignored)."""

    def __init__(self, reference: list[np.ndarray], predicted: list[np.ndarray], classes: tuple[int, ...],
                 class_agnostic: bool = False, ref_conf: float = REF_CONF, iou: float = MATCH_IOU) -> None:
        if len(reference) != len(predicted):
            raise ValueError("reference and predicted need one entry per frame")
        groups = [tuple(classes)] if class_agnostic else [(c,) for c in classes]
        self.scores, self.hits, self.n_gt = [], [], np.zeros(len(reference), np.int64)
        for i, (ref, pred) in enumerate(zip(reference, predicted, strict=True)):
            s, h = [], []
            for g in groups:
                gt = keep_classes(ref, g)
                gt = gt[gt[:, 4] >= ref_conf]
                pr = keep_classes(pred, g)
                self.n_gt[i] += len(gt)
                s.append(pr[:, 4])
                h.append(greedy_hits(pr, gt, iou))
            self.scores.append(np.concatenate(s) if s else np.zeros(0, np.float32))
            self.hits.append(np.concatenate(h) if h else np.zeros(0, bool))

    def ap(self, frames: np.ndarray | None = None) -> float:
        """Pooled AP over `frames` (indices, repeats allowed; default all)."""
        idx = np.arange(len(self.n_gt)) if frames is None else frames
        n_gt = int(self.n_gt[idx].sum())
        if n_gt == 0:
            return float("nan")
        s = np.concatenate([self.scores[i] for i in idx])
        h = np.concatenate([self.hits[i] for i in idx])
        if not len(s):
            return 0.0
        order = np.argsort(-s, kind="stable")
        tp = np.cumsum(h[order])
        fp = np.cumsum(~h[order])
        return average_precision(tp / n_gt, tp / np.maximum(tp + fp, 1))

    def bootstrap(self, resamples: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the pooled AP over frames resampled with replacement. The same
        seed gives every method the same resamples (paired), so intervals are comparable."""
        rng = np.random.default_rng(seed)
        n = len(self.n_gt)
        aps = np.array([self.ap(rng.integers(0, n, n)) for _ in range(resamples)])
        aps = aps[np.isfinite(aps)]
        if not len(aps):
            return float("nan"), float("nan")
        a = (1 - level) / 2
        return float(np.quantile(aps, a)), float(np.quantile(aps, 1 - a))


def pooled_agreement(reference: list[np.ndarray], predicted: list[np.ndarray], classes: tuple[int, ...]) -> float:
    """AP@0.5 of `predicted` against `reference`, all `classes` pooled into one ranking (class-aware
    matching): each reference box weighs the same, so a rare class cannot swing the figure."""
    return FrameMatches(reference, predicted, classes).ap()
