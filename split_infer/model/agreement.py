"""Detection agreement of an exported edge IR with the f32 model: the figure the edge's `auto`
precision reads from edge.json before it admits an INT8 IR (split_infer/edge/precision.py).

The measure is the project's pooled agreement (benchmarks/evaluation.py `pooled_agreement`, the
rate-fidelity instrument; tests/test_edge_precision.py checks the two agree): the unsplit f32
model's detections at conf >= 0.25 are the reference; the candidate's, ranked down to conf 0.001,
are scored by AP@0.5 with class-aware greedy matching, the traffic classes pooled into one
ranking so that a rare class cannot swing the figure. It lives here because the package does not
import benchmarks/. Numpy at import; `ir_agreement` brings torch and OpenVINO (export time only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from split_infer.model.postprocess import non_max_suppression

TRAFFIC_CLASSES: tuple[int, ...] = (0, 1, 2, 3, 5, 7)  # COCO: person, bicycle, car, motorcycle, bus, truck
REF_CONF = 0.25  # reference detections kept at this score
RANK_CONF = 0.001  # candidate detections ranked down to this score (NMS conf for both)
NMS_IOU = 0.45
MATCH_IOU = 0.5


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4+] against every box in b [M, 4+] (x1, y1, x2, y2 first)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod((rb - lt).clip(0), axis=2)
    area_a = np.prod((a[:, 2:4] - a[:, :2]).clip(0), axis=1)
    area_b = np.prod((b[:, 2:4] - b[:, :2]).clip(0), axis=1)
    return np.asarray(inter / (area_a[:, None] + area_b[None, :] - inter + 1e-9))


def greedy_hits(pred: np.ndarray, ref: np.ndarray, iou: float) -> np.ndarray:
    """Greedy, highest score first: True where a candidate box takes an unmatched reference box."""
    hit = np.zeros(len(pred), bool)
    if not len(pred) or not len(ref):
        return hit
    order = np.argsort(-pred[:, 4], kind="stable")
    ious = iou_matrix(pred[order, :4], ref[:, :4])
    taken = np.zeros(len(ref), bool)
    for rank, i in enumerate(order):
        cand = np.where(taken, -1.0, ious[rank])
        j = int(cand.argmax())
        if cand[j] >= iou:
            taken[j], hit[i] = True, True
    return hit


def pooled_ap(reference: Sequence[np.ndarray], predicted: Sequence[np.ndarray],
              classes: tuple[int, ...] = TRAFFIC_CLASSES) -> float:
    """AP@0.5 of `predicted` (per frame [K, 6]: x1, y1, x2, y2, score, class) against `reference`
    (same form, kept at score >= REF_CONF). NaN when the reference has no box of `classes`."""
    if len(reference) != len(predicted):
        raise ValueError("reference and predicted need one entry per frame")
    scores, hits, n_ref = [], [], 0
    for ref, pred in zip(reference, predicted, strict=True):
        ref = np.asarray(ref, np.float32).reshape(-1, 6)
        pred = np.asarray(pred, np.float32).reshape(-1, 6)
        for c in classes:
            r = ref[(ref[:, 5].astype(int) == c) & (ref[:, 4] >= REF_CONF)]
            p = pred[pred[:, 5].astype(int) == c]
            n_ref += len(r)
            scores.append(p[:, 4])
            hits.append(greedy_hits(p, r, MATCH_IOU))
    if n_ref == 0:
        return float("nan")
    s, h = np.concatenate(scores), np.concatenate(hits)
    if not len(s):
        return 0.0
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(h[order])
    recall = np.concatenate([[0.0], tp / n_ref, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(np.arange(1, len(tp) + 1), 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.where(recall[1:] != recall[:-1])[0]
    return float(np.sum((recall[idx + 1] - recall[idx]) * precision[idx + 1]))


def detections(raw: np.ndarray, classes_count: int) -> list[np.ndarray]:
    """Raw head output [B, N, C] (YOLOv5) or [B, C, N] (anchor-free) -> per frame [K, 6], ranked."""
    raw = raw.transpose(0, 2, 1) if raw.shape[1] < raw.shape[2] else raw
    objectness = raw.shape[2] == classes_count + 5
    return [non_max_suppression(r, conf=RANK_CONF, iou=NMS_IOU, objectness=objectness) for r in raw]


def ir_agreement(ov_model: Any, edge: Any, cloud: Any, images: np.ndarray, classes_count: int,
                 batch: int = 8) -> float:
    """Pooled agreement of `ov_model` (an edge IR whose outputs are named as `edge`'s) followed by
    the torch `cloud` part, against the f32 torch split (`cloud(edge(x))`, the unsplit model's
    function) on letterboxed NCHW `images`."""
    import openvino as ov  # heavy: export time only
    import torch

    compiled = ov.Core().compile_model(ov_model, "CPU")  # as the edge runs it: the device's defaults
    names = list(edge.output_names)
    reference: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        x = images[i:i + batch]
        res = compiled(x)
        feats = {n: torch.from_numpy(np.asarray(res[compiled.output(n)])) for n in names}
        with torch.no_grad():
            ref = cloud(edge(torch.from_numpy(x))).numpy()
            pred = cloud(feats).numpy()
        reference += detections(ref, classes_count)
        predicted += detections(pred, classes_count)
    return pooled_ap(reference, predicted)
