"""The stream entries: ingest -> workers (queued frames), workers -> detections, shed frames and
dead letters, and the analytics' events. Read strictly: anything malformed is a RecordError."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from split_infer.records.encoding import (
    FieldReader,
    Fields,
    RawFields,
    RecordError,
    compact,
    finite,
    lenient,
    parse_json,
    timings_json,
    whole_number,
)

UNVERSIONED = "unversioned"  # the model_version of a detection record that names none (older workers)


@dataclass(frozen=True)
class _FrameRecord:
    """What names a frame, and its size, in each record about it (an edge session restarts seq at 0)."""

    camera: str
    session: str
    seq: int
    capture_ts: float  # the edge's clock
    width: int  # the original frame's size, that boxes refer to
    height: int

    @staticmethod
    def _read_frame(f: FieldReader) -> dict[str, Any]:
        return {"camera": f.text("camera"), "session": f.optional("session", str) or "", "seq": f.seq(),
                "capture_ts": f.get("capture_ts", finite), "width": f.get("width", int),
                "height": f.get("height", int)}


@dataclass(frozen=True)
class QueuedFrame(_FrameRecord):
    """A feature frame the ingest queued for any worker (the camera's frames stream). Self-contained:
    a worker decodes `payload` (codec wire format) with no codec state."""

    payload: bytes
    timings: dict[str, float] = field(default_factory=dict)  # edge stage times, ms
    dropped_before: int = 0  # frames the edge dropped before this one
    sent_ts: float | None = None
    ingest_ts: float | None = None  # set each time the ingest appends it

    def to_fields(self) -> Fields:
        out: Fields = {"camera": self.camera, "session": self.session, "seq": self.seq,
                                      "capture_ts": repr(self.capture_ts)}
        if self.sent_ts is not None:
            out["sent_ts"] = repr(self.sent_ts)
        out |= {"width": self.width, "height": self.height, "payload": self.payload,
                "timings": json.dumps(self.timings), "dropped_before": self.dropped_before}
        if self.ingest_ts is not None:
            out["ingest_ts"] = repr(self.ingest_ts)
        return out

    @classmethod
    def from_fields(cls, raw: RawFields) -> QueuedFrame:
        f = FieldReader("queued frame", raw)
        return cls(**cls._read_frame(f), payload=f.binary("payload"),
                   timings=f.optional("timings", timings_json) or {},
                   dropped_before=f.optional("dropped_before", int) or 0,
                   sent_ts=f.optional("sent_ts", finite), ingest_ts=f.optional("ingest_ts", finite))


@dataclass(frozen=True)
class DetectedObject:
    """One object the head found: its class, score, and box x1, y1, x2, y2 in frame pixels."""

    class_id: int | None
    class_name: str
    score: float
    box: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        head = {} if self.class_id is None else {"class_id": self.class_id}
        return {**head, "class_name": self.class_name, "score": self.score, "box": list(self.box)}

    @classmethod
    def from_json(cls, obj: object, index: int = 0) -> DetectedObject:
        """One element of a record's detections list, as the head gives it."""
        try:
            if not isinstance(obj, dict):
                raise TypeError(f"a {type(obj).__name__}, not an object")
            box = tuple(float(x) for x in obj["box"])
            name, score = str(obj["class_name"]), float(obj["score"])
            class_id = None if obj.get("class_id") is None else whole_number(obj["class_id"])
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise RecordError(f"detection {index} is malformed: {e!r}") from None
        if len(box) != 4 or not all(map(math.isfinite, box)) or box[2] < box[0] or box[3] < box[1]:
            raise RecordError(f"detection {index} has a bad box {list(box)}")
        if not math.isfinite(score):
            raise RecordError(f"detection {index} has a bad score {score}")
        return cls(class_id, name, score, (box[0], box[1], box[2], box[3]))


def _detections(text: str) -> tuple[DetectedObject, ...]:
    value = parse_json(text)
    if not isinstance(value, list):
        raise ValueError("not a JSON list")
    return tuple(DetectedObject.from_json(d, i) for i, d in enumerate(value))


@dataclass(frozen=True)
class DetectionResult(_FrameRecord):
    """The detections of one frame: a worker's entry in the camera's detections stream."""

    detections: tuple[DetectedObject, ...]
    done_ts: float | None = None  # when the worker wrote it (records made elsewhere may lack it)
    ingest_ts: float | None = None
    batch: int | None = None  # frames in the head's batch
    head_ms: float | None = None
    worker: str | None = None
    timings: dict[str, float] = field(default_factory=dict)  # the edge's, passed on
    # The worker's model (docs/canary.md); records written before versions existed read as UNVERSIONED.
    model_version: str = UNVERSIONED

    def to_fields(self) -> Fields:
        # Width and height go as text: the live JSON (the same fields) has always carried them so.
        optional = {"ingest_ts": None if self.ingest_ts is None else repr(self.ingest_ts),
                    "done_ts": None if self.done_ts is None else repr(self.done_ts)}
        out: Fields = {"camera": self.camera, "session": self.session, "seq": self.seq,
                                      "capture_ts": repr(self.capture_ts)}
        out |= {k: v for k, v in optional.items() if v is not None}
        out |= {"width": str(self.width), "height": str(self.height),
                "detections": compact([d.to_json() for d in self.detections])}
        for name, value in (("batch", self.batch), ("head_ms", self.head_ms), ("worker", self.worker)):
            if value is not None:
                out[name] = value
        out["timings"] = json.dumps(self.timings)
        out["model_version"] = self.model_version
        return out

    def to_live_json(self) -> str:
        """The pub/sub message: the stream fields, the detections as a list rather than as text."""
        live: dict[Any, Any] = {**self.to_fields(), "detections": [d.to_json() for d in self.detections]}
        return compact(live)

    @classmethod
    def from_fields(cls, raw: RawFields) -> DetectionResult:
        f = FieldReader("detection record", raw)
        return cls(**cls._read_frame(f), detections=f.get("detections", _detections),
                   done_ts=f.optional("done_ts", finite), ingest_ts=f.optional("ingest_ts", finite),
                   batch=f.optional("batch", int), head_ms=f.optional("head_ms", finite),
                   worker=f.optional("worker", str), timings=f.optional("timings", timings_json) or {},
                   model_version=f.optional("model_version", str) or UNVERSIONED)


@dataclass(frozen=True)
class ShedRecord:
    """A frame the batching policy shed (it could no longer meet the latency objective)."""

    camera: str
    session: str
    seq: int
    capture_ts: float
    reason: str
    worker: str
    ts: float  # when it was shed

    def to_fields(self) -> Fields:
        return {"camera": self.camera, "session": self.session, "seq": str(self.seq),
                "capture_ts": repr(self.capture_ts), "reason": self.reason, "worker": self.worker,
                "ts": repr(self.ts)}

    @classmethod
    def from_fields(cls, raw: RawFields) -> ShedRecord:
        f = FieldReader("shed record", raw)
        return cls(camera=f.text("camera"), session=f.text("session"), seq=f.seq(),
                   capture_ts=f.get("capture_ts", finite), reason=f.text("reason"), worker=f.text("worker"),
                   ts=f.get("ts", finite))


@dataclass(frozen=True)
class DeadLetter:
    """A queued entry a worker could not process (undecodable, or a poison frame), with the reason.
    `seq` and `session` are the entry's own text: the entry may be malformed."""

    stream: str
    id: str
    camera: str
    seq: str
    session: str
    reason: str
    worker: str
    ts: float
    payload_bytes: int

    MAX_REASON = 2000

    @classmethod
    def of_frame(cls, stream: str, entry_id: str, frame: QueuedFrame, reason: str, worker: str,
                 ts: float) -> DeadLetter:
        return cls(stream, entry_id, frame.camera, str(frame.seq), frame.session, reason[:cls.MAX_REASON], worker,
                   ts, len(frame.payload))

    @classmethod
    def of_entry(cls, stream: str, entry_id: str, camera: str, raw: RawFields, reason: str, worker: str,
                 ts: float) -> DeadLetter:
        """Whatever of a queued entry that may be malformed is readable; `camera` is its stream's."""
        text = lenient(raw)
        payload = next((v for k, v in raw.items() if k in ("payload", b"payload")), b"")
        return cls(stream, entry_id, text.get("camera") or camera, text.get("seq", ""), text.get("session", ""),
                   reason[:cls.MAX_REASON], worker, ts, len(payload))

    def to_fields(self) -> Fields:
        return {"stream": self.stream, "id": self.id, "camera": self.camera, "seq": self.seq,
                "session": self.session, "reason": self.reason, "worker": self.worker, "ts": repr(self.ts),
                "payload_bytes": self.payload_bytes}

    @classmethod
    def from_fields(cls, raw: RawFields) -> DeadLetter:
        f = FieldReader("dead letter", raw)
        return cls(stream=f.text("stream"), id=f.text("id"), camera=f.text("camera"), seq=f.text("seq"),
                   session=f.text("session"), reason=f.text("reason"), worker=f.text("worker"),
                   ts=f.get("ts", finite), payload_bytes=f.get("payload_bytes", int))


@dataclass(frozen=True)
class AnalyticsEvent:
    """A line crossing or a zone entry or exit (docs/analytics.md), in the camera's events stream.
    Times go to the millisecond in the stream, in full in the live JSON."""

    type: str  # line_cross, zone_enter or zone_exit
    camera: str
    seq: int
    ts: float  # capture_ts of the frame it happened on
    track_id: int
    class_name: str
    line: str | None = None
    direction: str | None = None  # in or out (line_cross)
    zone: str | None = None
    dwell_s: float | None = None  # entry to exit (zone_exit)
    reason: str | None = None  # left or lost (zone_exit)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_fields(self) -> Fields:
        return {k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in self.as_dict().items()}

    def to_json(self, entry_id: str | None = None) -> str:
        """The pub/sub message, with the stream id it was written under."""
        d = self.as_dict()
        if entry_id is not None:
            d["id"] = entry_id
        return compact(d)

    @classmethod
    def from_fields(cls, raw: RawFields) -> AnalyticsEvent:
        f = FieldReader("event", raw)
        return cls(type=f.text("type"), camera=f.text("camera"), seq=f.seq(), ts=f.get("ts", finite),
                   track_id=f.get("track_id", int), class_name=f.text("class_name"),
                   line=f.optional("line", str), direction=f.optional("direction", str),
                   zone=f.optional("zone", str), dwell_s=f.optional("dwell_s", finite),
                   reason=f.optional("reason", str))
