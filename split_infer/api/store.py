"""Reads what the pipeline wrote to Redis and turns it into the API's models.

The records are read through split_infer/records.py; the routes and the live stream only call
this module. A malformed record is skipped and counted, never a 500.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from split_infer.api.models import (
    CameraCounts,
    CameraView,
    Detection,
    DetectionRecord,
    Event,
    LineCounts,
    MinuteCounts,
    ZoneCounts,
)
from split_infer.api.pages import SCAN_BUDGET, Page, Position, scan_newest_first, upper
from split_infer.keys import Keys
from split_infer.records import AnalyticsCounts, AnalyticsEvent, CameraStatus, DetectionResult, RawFields, RecordError
from split_infer.retention import StreamId
from split_infer.streams import AsyncClient

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """A camera or an item the caller asked for does not exist (the API answers 404)."""


def as_str(v: bytes | str) -> str:
    """A Redis reply (bytes) as text."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def ms_id(ts: float) -> int:
    """Unix seconds -> the millisecond part of a Redis stream id (rounded: 1.002 s is 1002 ms)."""
    return round(ts * 1000)


# -- records -> models ---------------------------------------------------------------------------


def camera_view(camera: str, status: CameraStatus, latest: DetectionRecord | None, now: float,
                stale_after_s: float) -> CameraView:
    """`online` also needs a recent frame: a camera whose ingest died (and so never wrote
    "offline") still shows as offline once its frames stop."""
    seen = status.last_seen_ts
    age = max(0.0, now - seen) if seen is not None else None
    online = status.online and age is not None and age <= stale_after_s
    idle = 0.0 if seen is not None else None  # rates of a camera that stopped are 0, not stale
    return CameraView(
        id=camera, online=online, fps=status.fps if online else idle,
        bytes_per_s=status.bytes_per_s if online else idle, last_frame_ts=status.last_frame_ts,
        last_seen_ts=seen, age_s=age, latency_s=latest.latency_s if latest else None,
        model_version=latest.model_version if latest else None, frames_total=status.frames,
        bytes_total=status.bytes, rejected_total=status.rejected, dropped_edge_total=status.dropped_edge,
        session=status.session, peer=status.peer,
    )


def detection_record(camera: str, entry_id: bytes | str, fields: RawFields) -> DetectionRecord | None:
    """A detections-stream entry -> DetectionRecord, or None when it is malformed."""
    try:
        rec = DetectionResult.from_fields(fields)
        if rec.done_ts is None:
            raise RecordError("the record has no time of detection")
        return DetectionRecord(
            id=as_str(entry_id), camera=rec.camera, session=rec.session, seq=rec.seq, capture_ts=rec.capture_ts,
            done_ts=rec.done_ts, latency_s=max(0.0, rec.done_ts - rec.capture_ts), width=rec.width, height=rec.height,
            detections=[Detection.model_validate(d.to_json()) for d in rec.detections],
            model_version=rec.model_version,
        )
    except (RecordError, ValidationError, TypeError, RecursionError) as e:  # RecordError is the promise
        log.warning("skipping malformed detection record %s of %s: %s", as_str(entry_id), camera, e)
        return None


def event(camera: str, entry_id: bytes | str, fields: RawFields) -> Event | None:
    """An events-stream entry -> Event, or None when it is malformed."""
    try:
        return Event(id=as_str(entry_id), **AnalyticsEvent.from_fields(fields).as_dict())
    except (RecordError, ValidationError, TypeError, RecursionError) as e:
        log.warning("skipping malformed event %s of %s: %s", as_str(entry_id), camera, e)
        return None


def camera_counts(camera: str, counts: AnalyticsCounts) -> CameraCounts:
    lines = [LineCounts.model_validate({"name": name, "in": d.get("in", {}), "out": d.get("out", {})})
             for name, d in counts.lines.items()]
    zones = [ZoneCounts(name=name, **asdict(tally)) for name, tally in counts.zones.items()]
    return CameraCounts(
        camera=camera, updated_ts=counts.updated_ts, seq=counts.seq, lines=sorted(lines, key=lambda x: x.name),
        zones=sorted(zones, key=lambda x: x.name), tracks=counts.tracks, per_minute=counts.per_minute,
        per_minute_basis=counts.per_minute_basis,
        per_minute_history=[MinuteCounts(**asdict(m)) for m in counts.per_minute_history],
        congestion=counts.congestion, congestion_score=counts.congestion_score, vehicles=counts.vehicles,
        median_speed=counts.median_speed, frames=counts.frames, skipped_frames=counts.skipped_frames,
        rejected_records=counts.rejected_records,
    )


# -- Redis ---------------------------------------------------------------------------------------


class Store:
    """The pipeline's Redis as the API reads it: one client, one deployment's keys."""

    def __init__(self, r: AsyncClient, keys: Keys, scan_budget: int = SCAN_BUDGET) -> None:  # one server or a cluster
        self.r, self.keys = r, keys
        self.scan_budget = scan_budget  # stream entries a filtered page may examine per camera

    async def camera_ids(self) -> list[str]:
        return sorted(as_str(m) for m in await self.r.smembers(self.keys.cameras))

    async def require_camera(self, camera: str) -> None:
        if not await self.r.sismember(self.keys.cameras, camera):
            raise NotFound(f"unknown camera {camera!r}; GET /api/cameras lists the known ones")

    async def camera_states(self, stale_after_s: float, only: list[str] | None = None) -> list[CameraView]:
        ids = only if only is not None else await self.camera_ids()
        async with self.r.pipeline(transaction=False) as p:
            for cam in ids:
                p.hgetall(self.keys.camera_state(cam))
                p.xrevrange(self.keys.detections_stream(cam), count=1)
            replies = await p.execute()
        now = time.time()
        out = []
        for i, cam in enumerate(ids):
            state, last = replies[2 * i], replies[2 * i + 1]
            latest = detection_record(cam, *last[0]) if last else None
            out.append(camera_view(cam, CameraStatus.from_fields(state), latest, now, stale_after_s))
        return out

    async def latest_detections(self, camera: str) -> DetectionRecord:
        await self.require_camera(camera)
        # The newest frame among the last few records, not the last one written: workers running
        # a camera's frames in parallel may write them out of order (and a record may be malformed).
        entries: Any = await self.r.xrevrange(self.keys.detections_stream(camera), count=10)
        records = [rec for entry_id, f in entries if (rec := detection_record(camera, entry_id, f)) is not None]
        if not records:
            raise NotFound(f"camera {camera!r} has no detection records yet")
        return max(records, key=lambda rec: rec.capture_ts)

    async def detection_history(self, camera: str, start: float, end: float, limit: int,
                                after: StreamId | None = None) -> Page[DetectionRecord]:
        """Records written in [start, end] (oldest first), after the cursor `after` if given."""
        await self.require_camera(camera)
        lower = f"({after}" if after is not None and after >= StreamId(ms_id(start)) else str(ms_id(start))
        entries: Any = await self.r.xrange(self.keys.detections_stream(camera), min=lower, max=ms_id(end),
                                           count=limit + 1)
        page = entries[:limit]
        records = [detection_record(camera, i, f) for i, f in page]
        good = [x for x in records if x is not None]
        more = len(entries) > limit
        return Page(good, as_str(page[-1][0]) if more else None, len(records) - len(good))

    async def events(self, camera: str, start: float, end: float, limit: int, type_: str | None,
                     before: StreamId | None = None, budget: int | None = None) -> Page[Event]:
        """Newest-first events of one camera in [start, end] (of one type, if given), before the
        cursor `before` if given; filtered in Redis (split_infer/api/pages.py)."""
        await self.require_camera(camera)
        scan = await scan_newest_first(self.r, self.keys.events_stream(camera), upper(ms_id(end), before),
                                       str(ms_id(start)), type_, limit, budget or self.scan_budget)
        parsed = [event(camera, i, f) for i, f in scan.entries]
        good = [e for e in parsed if e is not None]
        return Page(good, None if scan.cursor is None else str(scan.cursor), len(parsed) - len(good))

    async def all_events(self, start: float, end: float, limit: int, type_: str | None,
                         before: Position | None = None) -> Page[Event]:
        """Newest-first events of every camera, ordered by (stream id, camera).

        Each camera is scanned for up to `limit` matches within its share of the budget. A camera
        that stopped early (page full, or budget spent) was examined only down to its cursor: the
        page keeps what lies at or above the highest such cursor, so nothing below it is skipped,
        and goes on from there."""
        cams = await self.camera_ids()
        budget = max(limit + 1, self.scan_budget // max(1, len(cams)))
        found: list[tuple[Position, Event]] = []
        frontier: Position | None = None
        skipped = 0
        for cam in cams:
            hi = str(ms_id(end)) if before is None or before.id.ms > ms_id(end) else before.upper_bound(cam)
            scan = await scan_newest_first(self.r, self.keys.events_stream(cam), hi, str(ms_id(start)), type_,
                                           limit, budget)
            for eid, fields in scan.entries:
                ev = event(cam, eid, fields)
                if ev is None:
                    skipped += 1
                else:
                    found.append((Position(StreamId.parse(eid), cam), ev))
            if scan.cursor is not None:
                frontier = max(frontier, Position(scan.cursor, cam)) if frontier else Position(scan.cursor, cam)
        found.sort(key=lambda pe: pe[0], reverse=True)
        kept = [pe for pe in found if frontier is None or pe[0] >= frontier]
        if len(kept) > limit:
            return Page([e for _, e in kept[:limit]], str(kept[limit - 1][0]), skipped)
        return Page([e for _, e in kept], None if frontier is None else str(frontier), skipped)

    async def counts(self, camera: str) -> CameraCounts:
        await self.require_camera(camera)
        return camera_counts(camera, AnalyticsCounts.from_fields(await self.r.hgetall(self.keys.counts(camera))))

    async def snapshot(self, camera: str) -> bytes:
        await self.require_camera(camera)
        jpeg: Any = await self.r.get(self.keys.snapshot(camera))
        if not jpeg:
            raise NotFound(f"camera {camera!r} has sent no snapshot yet")
        return jpeg
