"""Detection records as the analytics sees them: typed frames (the record format: split_infer/records.py)."""

from __future__ import annotations

from dataclasses import dataclass

from split_infer.records import DetectionResult, RawFields


@dataclass(frozen=True)
class FrameDetection:
    class_name: str
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionFrame:
    camera: str
    seq: int
    capture_ts: float
    width: int
    height: int
    detections: tuple[FrameDetection, ...]
    session: str = ""


def parse_record(fields: RawFields) -> DetectionFrame:
    """A detections stream entry (bytes or str keys and values); RecordError if it is malformed."""
    r = DetectionResult.from_fields(fields)
    dets = tuple(FrameDetection(d.class_name, d.score, d.box) for d in r.detections)
    return DetectionFrame(r.camera, r.seq, r.capture_ts, r.width, r.height, dets, r.session)
