"""Reads what the pipeline wrote to Redis and turns it into the API's models.

One place knows the record formats (docs/api.md, docs/analytics.md); the routes and the live
stream only call these functions. A malformed record is skipped and counted, never a 500.
"""

from __future__ import annotations

import json
import logging
import math
import time

from redis.asyncio import Redis

from split_infer import keys
from split_infer.api.models import (
    CameraCounts,
    CameraState,
    Detection,
    DetectionRecord,
    Event,
    LineCounts,
    MinuteCounts,
    ZoneCounts,
)

log = logging.getLogger(__name__)

Fields = dict[bytes, bytes]


class NotFound(LookupError):
    """A camera or an item the caller asked for does not exist (the API answers 404)."""


def as_str(v: bytes | str | None) -> str | None:
    """A Redis reply (bytes) as text."""
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _float(v: bytes | str | None) -> float | None:
    try:
        f = float(as_str(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: bytes | str | None) -> int | None:
    f = _float(v)
    return int(f) if f is not None else None


def ms_id(ts: float) -> int:
    """Unix seconds -> the millisecond part of a Redis stream id (rounded: 1.002 s is 1002 ms)."""
    return round(ts * 1000)


def id_ts(entry_id: bytes | str) -> float:
    """The write time (unix seconds) that a Redis stream id carries."""
    return int(as_str(entry_id).split("-")[0]) / 1000.0  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- cameras


async def camera_ids(r: Redis) -> list[str]:
    return sorted(as_str(m) for m in await r.smembers(keys.CAMERAS_SET))  # type: ignore[misc]


async def require_camera(r: Redis, camera: str) -> None:
    if not await r.sismember(keys.CAMERAS_SET, camera):
        raise NotFound(f"unknown camera {camera!r}; GET /api/cameras lists the known ones")


def parse_state(camera: str, h: Fields, latest: DetectionRecord | None, now: float,
                stale_after_s: float) -> CameraState:
    """Camera state hash (written by the ingest, split_infer/cloud/ingest.py) -> CameraState.

    `online` also needs a recent frame: a camera whose ingest died (and so never wrote
    "offline") still shows as offline once its frames stop.
    """
    g = {as_str(k): v for k, v in h.items()}
    seen = _float(g.get("last_seen_ts"))
    age = max(0.0, now - seen) if seen is not None else None
    flagged_up = as_str(g.get("online")) == "1"
    online = flagged_up and age is not None and age <= stale_after_s
    idle = 0.0 if seen is not None else None  # rates of a camera that stopped are 0, not stale
    return CameraState(
        id=camera,
        online=online,
        fps=_float(g.get("fps")) if online else idle,
        bytes_per_s=_float(g.get("bytes_per_s")) if online else idle,
        last_frame_ts=_float(g.get("last_frame_ts")),
        last_seen_ts=seen,
        age_s=age,
        latency_s=latest.latency_s if latest else None,
        frames_total=_int(g.get("frames")),
        bytes_total=_int(g.get("bytes")),
        rejected_total=_int(g.get("rejected")),
        dropped_edge_total=_int(g.get("dropped_edge")),
        session=as_str(g.get("session")) or None,
        peer=as_str(g.get("peer")) or None,
    )


async def camera_states(r: Redis, stale_after_s: float, only: list[str] | None = None) -> list[CameraState]:
    ids = only if only is not None else await camera_ids(r)
    async with r.pipeline(transaction=False) as p:
        for cam in ids:
            p.hgetall(keys.camera_state(cam))
            p.xrevrange(keys.detections_stream(cam), count=1)
        replies = await p.execute()
    now = time.time()
    out = []
    for i, cam in enumerate(ids):
        h, last = replies[2 * i], replies[2 * i + 1]
        rec = parse_record(cam, *last[0]) if last else None
        out.append(parse_state(cam, h, rec, now, stale_after_s))
    return out


# ---------------------------------------------------------------------------- detections


def parse_record(camera: str, entry_id: bytes | str, f: Fields) -> DetectionRecord | None:
    """A detections-stream entry -> DetectionRecord, or None when it is malformed."""
    g = {as_str(k): v for k, v in f.items()}
    try:
        raw = json.loads(as_str(g.get("detections")) or "[]")
        dets = [Detection.model_validate(d) for d in raw]
        capture, done = _float(g["capture_ts"]), _float(g["done_ts"])
        seq, width, height = _int(g["seq"]), _int(g["width"]), _int(g["height"])
        if None in (capture, done, seq, width, height):
            raise ValueError("non-numeric capture_ts/done_ts/seq/width/height")
        return DetectionRecord(
            id=as_str(entry_id), camera=as_str(g.get("camera")) or camera, seq=seq, capture_ts=capture,
            done_ts=done, latency_s=max(0.0, done - capture), width=width, height=height,
            detections=dets,
        )
    except (KeyError, ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        log.warning("skipping malformed detection record %s of %s: %s", as_str(entry_id), camera, e)
        return None


async def latest_detections(r: Redis, camera: str) -> DetectionRecord:
    await require_camera(r, camera)
    # A few entries back in case the newest one is malformed.
    for entry_id, f in await r.xrevrange(keys.detections_stream(camera), count=10):
        rec = parse_record(camera, entry_id, f)
        if rec is not None:
            return rec
    raise NotFound(f"camera {camera!r} has no detection records yet")


async def detection_history(r: Redis, camera: str, start: float, end: float,
                            limit: int) -> tuple[list[DetectionRecord], bool, int]:
    """Records written in [start, end] (oldest first), whether more exist, how many were bad."""
    await require_camera(r, camera)
    entries = await r.xrange(keys.detections_stream(camera), min=ms_id(start), max=ms_id(end),
                             count=limit + 1)
    truncated = len(entries) > limit
    records = [parse_record(camera, i, f) for i, f in entries[:limit]]
    good = [x for x in records if x is not None]
    return good, truncated, len(records) - len(good)


# ---------------------------------------------------------------------------- analytics


def parse_event(camera: str, entry_id: bytes | str, f: Fields) -> Event | None:
    """An events-stream entry (docs/analytics.md) -> Event, or None when it is malformed."""
    g = {as_str(k): as_str(v) for k, v in f.items()}
    try:
        ts = _float(g.get("ts"))
        return Event(
            id=as_str(entry_id), camera=g.get("camera") or camera, type=g["type"],
            ts=id_ts(entry_id) if ts is None else ts, seq=_int(g.get("seq")),
            track_id=_int(g.get("track_id")), class_name=g.get("class_name"), line=g.get("line"),
            direction=g.get("direction"), zone=g.get("zone"), dwell_s=_float(g.get("dwell_s")),
            reason=g.get("reason"),
        )
    except (KeyError, ValueError, TypeError) as e:
        log.warning("skipping malformed event %s of %s: %s", as_str(entry_id), camera, e)
        return None


async def events(r: Redis, camera: str, start: float, end: float, limit: int,
                 type_: str | None) -> tuple[list[Event], int]:
    """Newest-first events of one camera in [start, end]."""
    await require_camera(r, camera)
    entries = await r.xrevrange(keys.events_stream(camera), max=ms_id(end), min=ms_id(start),
                                count=limit if type_ is None else limit * 10)
    parsed = [parse_event(camera, i, f) for i, f in entries]
    good = [e for e in parsed if e is not None and (type_ is None or e.type == type_)]
    return good[:limit], len(parsed) - sum(e is not None for e in parsed)


async def all_events(r: Redis, start: float, end: float, limit: int, type_: str | None) -> tuple[list[Event], int]:
    """Newest-first events of every camera in [start, end]."""
    merged: list[Event] = []
    skipped = 0
    for cam in await camera_ids(r):
        evs, bad = await events(r, cam, start, end, limit, type_)
        merged += evs
        skipped += bad
    merged.sort(key=lambda e: (e.ts, e.id), reverse=True)
    return merged[:limit], skipped


_ZONE_INT = ("occupancy", "entries", "exits")
_ZONE_FLOAT = ("dwell_s", "dwell_max_s")


def parse_counts(camera: str, h: Fields) -> CameraCounts:
    """The analytics counts hash -> CameraCounts. Field layout: docs/analytics.md.

    Unknown or unreadable fields are left out, so a newer analytics cannot break the API.
    """
    g = {as_str(k) or "": as_str(v) or "" for k, v in h.items()}
    lines: dict[str, LineCounts] = {}
    zones: dict[str, ZoneCounts] = {}
    per_class: dict[str, dict[str, int]] = {"per_minute": {}, "tracks": {}}
    for k, v in g.items():
        parts, val = k.split(":"), _float(v)
        if val is None:
            continue
        if len(parts) == 4 and parts[0] == "line" and parts[2] in ("in", "out"):
            lc = lines.setdefault(parts[1], LineCounts(name=parts[1], in_={}, out={}))
            (lc.in_ if parts[2] == "in" else lc.out)[parts[3]] = int(val)
        elif len(parts) == 4 and parts[0] == "zone" and parts[2] in _ZONE_INT + _ZONE_FLOAT:
            zc = zones.setdefault(parts[1], ZoneCounts(name=parts[1], occupancy={}, entries={}, exits={},
                                                       dwell_s={}, dwell_max_s={}))
            getattr(zc, parts[2])[parts[3]] = int(val) if parts[2] in _ZONE_INT else val
        elif len(parts) == 2 and parts[0] in per_class:
            per_class[parts[0]][parts[1]] = int(val)
    history: list[MinuteCounts] = []
    try:
        history = [MinuteCounts.model_validate(m) for m in json.loads(g.get("per_minute_history") or "[]")]
    except (ValueError, TypeError) as e:
        log.warning("camera %s: unreadable per_minute_history: %s", camera, e)
    return CameraCounts(
        camera=camera, updated_ts=_float(g.get("updated_ts")), seq=_int(g.get("seq")),
        lines=sorted(lines.values(), key=lambda x: x.name), zones=sorted(zones.values(), key=lambda x: x.name),
        tracks=per_class["tracks"], per_minute=per_class["per_minute"],
        per_minute_basis=g.get("per_minute_basis") or None, per_minute_history=history,
        congestion=g.get("congestion") or None, congestion_score=_float(g.get("congestion_score")),
        vehicles=_int(g.get("vehicles")), median_speed=_float(g.get("median_speed")),
        frames=_int(g.get("frames")), skipped_frames=_int(g.get("skipped_frames")),
        rejected_records=_int(g.get("rejected_records")),
    )


async def counts(r: Redis, camera: str) -> CameraCounts:
    await require_camera(r, camera)
    return parse_counts(camera, await r.hgetall(keys.counts_key(camera)))


# ---------------------------------------------------------------------------- snapshots


async def snapshot(r: Redis, camera: str) -> bytes:
    await require_camera(r, camera)
    jpeg = await r.get(keys.snapshot_key(camera))
    if not jpeg:
        raise NotFound(f"camera {camera!r} has sent no snapshot yet")
    return jpeg
