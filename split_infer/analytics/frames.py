"""Detection stream records -> typed frames, with one clear error for anything malformed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


class RecordError(ValueError):
    """A detection record that cannot be analysed (missing field, bad JSON, bad box...)."""


@dataclass(frozen=True)
class Detection:
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
    detections: tuple[Detection, ...]
    session: str = ""


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_record(fields: dict) -> DetectionFrame:
    """Parse a detections stream entry (bytes or str keys and values)."""
    f = {_s(k): _s(v) for k, v in fields.items()}
    try:
        camera, seq, ts = f["camera"], int(f["seq"]), float(f["capture_ts"])
        width, height = int(f.get("width", 0)), int(f.get("height", 0))
        raw = json.loads(f["detections"])
    except KeyError as e:
        raise RecordError(f"detection record lacks field {e.args[0]!r}") from None
    except (ValueError, TypeError) as e:
        raise RecordError(f"detection record has a bad value: {e}") from None
    if seq < 0 or not math.isfinite(ts):
        raise RecordError(f"detection record has seq {seq} / capture_ts {ts}")
    if not isinstance(raw, list):
        raise RecordError("detection record's `detections` is not a JSON list")
    dets = []
    for i, d in enumerate(raw):
        try:
            box = tuple(float(x) for x in d["box"])
            det = Detection(str(d["class_name"]), float(d["score"]), box)  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as e:
            raise RecordError(f"detection {i} is malformed: {e!r}") from None
        if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] < box[0] or box[3] < box[1]:
            raise RecordError(f"detection {i} has a bad box {list(box)}")
        dets.append(det)
    return DetectionFrame(camera, seq, ts, width, height, tuple(dets), f.get("session", ""))
