"""What the dashboard needs beyond the data routes: the frame a snapshot shows and that frame's
detections, the camera's lines and zones (its scene), and per-minute history by time.

- `GET /api/v1/cameras/{camera}/snapshot.jpg` (in app.py) answers with the frame it shows in
  `X-Frame-*` headers (`snapshot_shown`); the dashboard then asks for exactly that frame's record:
- `GET /api/v1/cameras/{camera}/detections/frame?session=S&seq=N`: 404 until the worker wrote it.
- `GET /api/v1/cameras/{camera}/scene`: lines and zones as analytics counts them (split_infer/analytics/scene.py).
- `GET /api/v1/cameras/{camera}/history?start=&end=`: per-minute buckets (split_infer/analytics/history.py).
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import Field, ValidationError

from split_infer.analytics.history import days_between
from split_infer.api.models import DetectionRecord, Model, UnixTime
from split_infer.api.store import NotFound, Store, as_str, detection_record
from split_infer.keys import CAMERA_ID_PATTERN, SESSION_PATTERN
from split_infer.records.snapshot import SnapshotFrame

FRAME_SEARCH = 1000  # newest records searched for a frame's record (a snapshot names a recent frame)
HISTORY_MAX_SPAN_S = 31 * 86_400

CameraId = Annotated[str, Path(pattern=CAMERA_ID_PATTERN, description="camera id", examples=["cam-1"])]


def _store(request: Request) -> Store:
    return request.app.state.store


StoreDep = Annotated[Store, Depends(_store)]


class SceneLine(Model):
    name: str
    units: str = Field(description="normalized (0-1 of the frame) or pixels")
    a: tuple[float, float]
    b: tuple[float, float] = Field(description="'in' is the side on the left of a -> b (y down)")


class SceneZone(Model):
    name: str
    units: str
    polygon: list[tuple[float, float]]


class Scene(Model):
    """A camera's lines and zones in their configured units; pixels are of `frame_size` when given
    (then rescaled to the stream's size), else of the stream's frames."""

    camera: str
    frame_size: tuple[int, int] | None
    lines: list[SceneLine]
    zones: list[SceneZone]


class MinuteBucket(Model):
    minute: int = Field(description="unix seconds of the minute's start")
    crossings: dict[str, int] = Field(description="line crossings per class")
    tracks: dict[str, int] = Field(description="new tracks per class")
    lines: dict[str, dict[str, dict[str, int]]] = Field(description="line -> in/out -> class -> crossings")


class History(Model):
    camera: str
    start: float = Field(description="from (unix s): the request's, or end - 31 days when it asked for more")
    end: float
    minutes: list[MinuteBucket] = Field(description="minutes with counts, oldest first (absent: none counted)")
    skipped: int = Field(description="unreadable buckets")


async def snapshot_shown(s: Store, camera: str) -> tuple[bytes, SnapshotFrame | None]:
    """The latest snapshot and the frame it shows; None when that is not known for sure (an older
    writer, or a pair torn by a concurrent write)."""
    await s.require_camera(camera)
    async with s.r.pipeline(transaction=False) as p:
        p.get(s.keys.snapshot(camera))
        p.hgetall(s.keys.snapshot_frame(camera))
        jpeg, fields = await p.execute()
    if not jpeg:
        raise NotFound(f"camera {camera!r} has sent no snapshot yet")
    shown = SnapshotFrame.from_fields(fields) if fields else None
    return jpeg, shown if shown is not None and shown.camera == camera and shown.names(jpeg) else None


def frame_headers(shown: SnapshotFrame | None) -> dict[str, str]:
    if shown is None:
        return {}
    return {"X-Frame-Session": shown.session, "X-Frame-Seq": str(shown.seq),
            "X-Frame-Capture-Ts": repr(shown.capture_ts), "X-Frame-Codec": shown.codec}


async def frame_record(s: Store, camera: str, session: str, seq: int) -> DetectionRecord:
    """The record of frame (session, seq), searched among the newest FRAME_SEARCH records."""
    await s.require_camera(camera)
    end, seen = "+", 0
    want = (session, str(seq))
    while seen < FRAME_SEARCH:
        page: Any = await s.r.xrevrange(s.keys.detections_stream(camera), max=end, count=200)
        if not page:
            break
        for entry_id, fields in page:
            got = (as_str(fields.get(b"session", fields.get("session", b""))),
                   as_str(fields.get(b"seq", fields.get("seq", b""))))
            if got == want:
                rec = detection_record(camera, entry_id, fields)
                if rec is not None:
                    return rec
        seen += len(page)
        end = "(" + as_str(page[-1][0])
    raise NotFound(f"no detection record of frame {seq} (session {session!r}) of camera {camera!r} among "
                   f"its newest {FRAME_SEARCH}: not written yet, shed, or too old")


async def history(s: Store, camera: str, start: float, end: float) -> History:
    await s.require_camera(camera)
    days = days_between(start, end)
    async with s.r.pipeline(transaction=False) as p:
        for day in days:
            p.hgetall(s.keys.history(camera, day))
        replies = await p.execute()
    minutes, skipped = [], 0
    for reply in replies:
        for k, v in reply.items():
            try:
                minute = int(as_str(k))
                if start - 60 < minute <= end:
                    minutes.append(MinuteBucket(minute=minute, **json.loads(as_str(v))))
            except (ValueError, TypeError, ValidationError, RecursionError):
                skipped += 1
    return History(camera=camera, start=start, end=end, minutes=sorted(minutes, key=lambda m: m.minute),
                   skipped=skipped)


def dashboard_routes(app: APIRouter, errors: dict[int | str, dict[str, Any]]) -> None:
    @app.get("/cameras/{camera}/detections/frame", response_model=DetectionRecord, responses=errors,
             tags=["detections"], operation_id="get_frame_detections")
    async def get_frame_detections(
        camera: CameraId, s: StoreDep,
        session: Annotated[str, Query(pattern=SESSION_PATTERN, description="edge session of the frame")],
        seq: Annotated[int, Query(ge=0, le=2**63 - 1, description="seq of the frame")],
    ) -> DetectionRecord:
        """The detection record of one frame (e.g. the one a snapshot shows: its X-Frame-* headers);
        404 until the worker has written it."""
        return await frame_record(s, camera, session, seq)

    @app.get("/cameras/{camera}/scene", response_model=Scene, responses=errors, tags=["analytics"],
             operation_id="get_camera_scene")
    async def get_scene(camera: CameraId, s: StoreDep) -> Scene:
        """The camera's configured lines and zones (written by analytics when it takes the camera)."""
        await s.require_camera(camera)
        raw: Any = await s.r.get(s.keys.scene(camera))
        if not raw:
            raise NotFound(f"camera {camera!r} has no lines or zones published (analytics has not taken it yet)")
        try:
            return Scene.model_validate_json(raw)
        except ValidationError as e:
            raise NotFound(f"camera {camera!r}: its published scene is unreadable ({e.error_count()} errors)") from None

    @app.get("/cameras/{camera}/history", response_model=History, responses=errors, tags=["analytics"],
             operation_id="get_camera_history")
    async def get_history(
        camera: CameraId, s: StoreDep,
        start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 24 h")] = None,
        end: Annotated[UnixTime | None, Query(description="to (unix s); default now")] = None,
    ) -> History:
        """Per-minute counts (per class, per line and direction) in [start, end], kept
        `analytics.history_days` days; at most 31 days at once (the answer's `start` says where it began)."""
        if end is None:  # as the data routes do: "from start on" when only start is given
            end = time.time() if start is None else max(time.time(), start)
        start = max(0.0, end - 86_400) if start is None else start
        if start > end:
            raise HTTPException(422, f"start ({start}) is after end ({end})")
        return await history(s, camera, max(start, end - HISTORY_MAX_SPAN_S), end)
