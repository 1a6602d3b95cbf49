"""From raw head output to detections in original-frame pixels: NMS and box scaling, in numpy.

Raw predictions are [N, 4 + (1) + nc] rows of cx, cy, w, h, (objectness,) class scores in
model-input pixels: YOLOv5 heads have an objectness column, anchor-free ultralytics heads don't.
"""

from __future__ import annotations

import numpy as np

from split_infer.model.names import COCO_NAMES
from split_infer.model.preprocess import Letterbox

MAX_WH = 7680  # class offset for batched NMS: boxes of different classes never overlap
MAX_NMS = 30000  # boxes considered by NMS at most, highest scores first


def nms_boxes(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy NMS; returns kept indices, highest score first."""
    order = scores.argsort()[::-1]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def non_max_suppression(pred: np.ndarray, conf: float = 0.25, iou: float = 0.45, objectness: bool = True,
                        max_det: int = 300) -> np.ndarray:
    """One image's raw rows -> [K, 6] (x1, y1, x2, y2, score, class) in model-input pixels."""
    pred = np.asarray(pred, dtype=np.float32)
    if objectness:
        pred = pred[pred[:, 4] > conf]
        cls_scores = pred[:, 5:] * pred[:, 4:5]
    else:
        cls_scores = pred[:, 4:]
    cls = cls_scores.argmax(1)
    score = cls_scores[np.arange(len(cls)), cls]
    mask = score > conf
    pred, cls, score = pred[mask], cls[mask], score[mask]
    if not len(pred):
        return np.zeros((0, 6), np.float32)
    if len(pred) > MAX_NMS:
        top = score.argsort()[::-1][:MAX_NMS]
        pred, cls, score = pred[top], cls[top], score[top]
    xy, wh = pred[:, :2], pred[:, 2:4] / 2
    boxes = np.concatenate([xy - wh, xy + wh], 1)
    keep = nms_boxes(boxes + cls[:, None] * MAX_WH, score, iou)[:max_det]
    return np.concatenate([boxes[keep], score[keep, None], cls[keep, None].astype(np.float32)], 1)


def to_records(dets: np.ndarray, lb: Letterbox, names: dict[int, str] | None = None) -> list[dict]:
    """[K, 6] model-input detections -> JSON-ready dicts in original-frame pixels."""
    names = names or dict(enumerate(COCO_NAMES))
    boxes = lb.boxes_to_source(dets[:, :4]) if len(dets) else np.zeros((0, 4), np.float32)
    return [
        {"class_id": int(c), "class_name": names.get(int(c), str(int(c))), "score": round(float(s), 4),
         "box": [round(float(v), 1) for v in b]}
        for b, s, c in zip(boxes, dets[:, 4], dets[:, 5], strict=True)
    ]
