"""Response models of the read API: they are the OpenAPI schema, so keep them exact."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from split_infer.records.entries import UNVERSIONED

# Time bounds in unix seconds; the upper bound keeps millisecond stream ids in 64 bits.
UnixTime = Annotated[float, Field(ge=0, le=4_102_444_800, description="unix time, seconds")]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Detection(Model):
    model_config = ConfigDict(extra="ignore")  # a worker may add fields; the API shows these

    class_id: int
    class_name: str
    score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4, description="x1, y1, x2, y2 in frame pixels")


class DetectionRecord(Model):
    id: str = Field(description="Redis stream id of the record (ms-seq, ordered by write time)")
    camera: str
    session: str = Field(default="", description="edge session of the frame (with seq, names the frame)")
    seq: int
    capture_ts: float = Field(description="when the edge captured the frame, unix seconds")
    done_ts: float = Field(description="when the worker finished the detection, unix seconds")
    latency_s: float = Field(description="capture to detection")
    width: int = Field(description="frame width the boxes refer to")
    height: int
    detections: list[Detection]
    model_version: str = Field(default=UNVERSIONED, max_length=64,
                               description="the worker's model (docs/canary.md); 'unversioned' for older records")


class DetectionHistory(Model):
    camera: str
    start: float
    end: float
    records: list[DetectionRecord]
    truncated: bool = Field(description="more records lie in the range than `limit` returned")
    skipped: int = Field(description="malformed records in the range that could not be read")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page (the stream id of this "
                                    "page's last record); null: the range holds no more records")


class CameraView(Model):
    id: str
    online: bool = Field(description="the ingest says online and a frame arrived within the staleness window")
    fps: float | None = Field(description="frames per second received from the edge (0 when offline)")
    bytes_per_s: float | None = Field(description="feature bytes per second received, snapshots apart (0 when offline)")
    last_frame_ts: float | None = Field(description="capture time of the last frame received (edge clock, unix s)")
    last_seen_ts: float | None = Field(description="when the ingest received the last frame (unix s)")
    age_s: float | None = Field(description="seconds since the ingest received the last frame")
    latency_s: float | None = Field(description="capture to detection of the latest record")
    model_version: str | None = Field(default=None, description="model_version of the latest record")
    frames_total: int | None = Field(description="frames the ingest accepted")
    bytes_total: int | None = Field(description="feature bytes the ingest accepted")
    rejected_total: int | None = Field(description="frames the ingest rejected")
    dropped_edge_total: int | None = Field(description="frames the edge dropped before sending")
    session: str | None = Field(description="edge session (changes when the edge restarts)")
    peer: str | None = Field(description="address of the edge node")


class CameraList(Model):
    server_ts: float
    stale_after_s: float
    cameras: list[CameraView]


class LineCounts(Model):
    name: str
    in_: dict[str, int] = Field(alias="in", serialization_alias="in", description="crossings per class")
    out: dict[str, int]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ZoneCounts(Model):
    name: str
    occupancy: dict[str, int] = Field(description="objects in the zone now, per class")
    entries: dict[str, int] = Field(description="entries since the analytics state began, per class")
    exits: dict[str, int]
    dwell_s: dict[str, float] = Field(description="total seconds spent in the zone by objects that left it")
    dwell_max_s: dict[str, float] = Field(description="longest stay of an object now in the zone")


class MinuteCounts(Model):
    minute: int = Field(description="unix seconds of the minute's start")
    crossings: dict[str, int]
    tracks: dict[str, int]


class CameraCounts(Model):
    """The analytics aggregates of one camera (docs/analytics.md); empty before analytics ran."""

    camera: str
    updated_ts: float | None = Field(description="capture time of the last frame analysed")
    seq: int | None
    lines: list[LineCounts]
    zones: list[ZoneCounts]
    tracks: dict[str, int] = Field(description="objects tracked in the frame now, per class")
    per_minute: dict[str, int] = Field(description="objects counted in the last 60 s, per class")
    per_minute_basis: str | None = Field(description="crossings (camera has lines) or tracks")
    per_minute_history: list[MinuteCounts] = Field(description="the last whole minutes, oldest first")
    congestion: str | None = Field(description="empty, free, moderate, heavy or jammed")
    congestion_score: float | None
    vehicles: int | None
    median_speed: float | None = Field(description="box heights per second")
    frames: int | None
    skipped_frames: int | None
    rejected_records: int | None


class CountsList(Model):
    cameras: list[CameraCounts]


EventType = Literal["line_cross", "zone_enter", "zone_exit"]


class Event(Model):
    id: str = Field(description="Redis stream id")
    camera: str
    type: str = Field(description="line_cross, zone_enter or zone_exit")
    ts: float = Field(description="capture time of the frame it happened on")
    seq: int | None = None
    track_id: int | None = None
    class_name: str | None = None
    line: str | None = None
    direction: str | None = Field(default=None, description="in or out (line_cross)")
    zone: str | None = None
    dwell_s: float | None = Field(default=None, description="seconds from entry to exit (zone_exit)")
    reason: str | None = Field(default=None, description="left or lost (zone_exit)")


class EventList(Model):
    events: list[Event]
    skipped: int = Field(description="malformed entries in the range that could not be read")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: the range holds no "
                                    "more events. A page may be short (even empty) and still have one, when "
                                    "the request's scan bound was reached first: go on from it")


class Health(Model):
    status: Literal["ok", "degraded"]
    redis: Literal["ok", "down"]
    detail: str | None = None


class ErrorBody(Model):
    detail: str


class InvalidBody(Model):
    """422: our own message (e.g. a reversed range), or FastAPI's list of invalid parameters."""

    detail: str | list[dict[str, Any]]


class LiveTicket(Model):
    ticket: str = Field(description="pass as /api/live?ticket=...; good for one connection start")
    expires_in: int = Field(description="seconds the ticket stays valid for opening a connection")
