"""`split-infer api`: the HTTP read API and the operator dashboard.

Everything it serves comes from Redis (what the ingest, workers and analytics wrote); it keeps no
state of its own, so any number of replicas can run. Redis down: every data endpoint answers 503
with the reason, and the next request after Redis returns succeeds (redis-py reconnects).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import AsyncIterable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import StringConstraints
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import keys, metrics
from split_infer.api import live, store
from split_infer.api.models import (
    CAMERA_ID_PATTERN,
    CameraCounts,
    CameraList,
    CameraState,
    CountsList,
    DetectionHistory,
    DetectionRecord,
    ErrorBody,
    EventList,
    Health,
    InvalidBody,
    UnixTime,
)

log = logging.getLogger(__name__)

CameraId = Annotated[str, Path(pattern=CAMERA_ID_PATTERN, description="camera id", examples=["cam-1"])]
Limit = Annotated[int, Query(ge=1, le=1000, description="most items returned")]
# Every data endpoint may answer these; declared so the schema (and schemathesis) knows them.
ERRORS = {
    404: {"model": ErrorBody, "description": "unknown camera, or nothing recorded yet"},
    422: {"model": InvalidBody, "description": "invalid parameter (camera id pattern, time range, limit)"},
    503: {"model": ErrorBody, "description": "Redis is unreachable; retry later"},
}


def get_redis(request: Request) -> Redis:
    return request.app.state.redis


RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_live_redis(request: Request) -> Redis:
    """Redis, checked before a stream starts: once the response is streaming, no status can change."""
    r: Redis = request.app.state.redis
    await r.ping()
    return r


def _range(start: float | None, end: float | None, default_span_s: float) -> tuple[float, float]:
    """Fill in a missing bound; a reversed range is the caller's error (422)."""
    if end is None:
        end = time.time() if start is None else max(time.time(), start)  # "from start on"
    start = max(0.0, end - default_span_s) if start is None else start
    if start > end:
        raise BadRange(f"start ({start}) is after end ({end})")
    return start, end


class BadRange(ValueError):
    pass


# Query parameters shared by the per-camera and the all-camera event listings.
EventsFrom = Annotated[UnixTime | None, Query(description="from (unix s); default end - 1 h")]
EventsTo = Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")]
EventType = Annotated[str | None, Query(max_length=64, description="only events of this type")]


def create_app(redis_url: str = "redis://127.0.0.1:6379/0", stale_after_s: float = 5.0,
               redis: Redis | None = None) -> FastAPI:
    """The API bound to one Redis. `stale_after_s`: no frame for this long means offline."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if redis is None:
            await app.state.redis.aclose()

    app = FastAPI(
        title="split-infer read API",
        version="0.1.0",
        description="Cameras, detections, counts and events of the split-inference pipeline, "
        "read from Redis; a live feed over Server-Sent Events; the operator dashboard at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; nothing here may need the internet
        redoc_url=None,
    )
    app.state.redis = redis or Redis.from_url(
        redis_url, socket_connect_timeout=1.0, socket_timeout=3.0, retry_on_timeout=False,
    )

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(request: Request, exc: RedisError) -> JSONResponse:
        metrics.REDIS_UP.labels("api").set(0)
        return JSONResponse(
            {"detail": f"Redis unreachable at {_safe_url(redis_url)}: {exc}. Retry later."},
            status_code=503, headers={"Retry-After": "1"},
        )

    @app.exception_handler(RedisError)
    async def _redis_error(request: Request, exc: RedisError) -> JSONResponse:
        # Redis answered, but with an error (e.g. WRONGTYPE: another program's key under our prefix).
        log.error("Redis error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"Redis error: {exc}"}, status_code=500)

    @app.exception_handler(store.NotFound)
    async def _not_found(request: Request, exc: store.NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(BadRange)
    async def _bad_range(request: Request, exc: BadRange) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # ------------------------------------------------------------------ service

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["service"])
    async def healthz(r: RedisDep) -> Response:
        """Ready when Redis answers; 503 (with the reason) when it does not."""
        try:
            await r.ping()
        except (RedisConnectionError, RedisTimeoutError) as e:
            metrics.REDIS_UP.labels("api").set(0)
            body = Health(status="degraded", redis="down", detail=f"Redis unreachable: {e}")
            return JSONResponse(body.model_dump(), status_code=503)
        metrics.REDIS_UP.labels("api").set(1)
        return JSONResponse(Health(status="ok", redis="ok").model_dump())

    @app.get("/metrics", response_class=Response, tags=["service"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    async def prometheus(r: RedisDep) -> Response:
        """Prometheus metrics; camera_up and queue_depth are refreshed from Redis at each scrape."""
        try:
            states = await store.camera_states(r, stale_after_s)
            async with r.pipeline(transaction=False) as p:
                for s in states:
                    p.xlen(keys.frames_stream(s.id))
                depths = await p.execute()
            for s, depth in zip(states, depths):
                metrics.CAMERA_UP.labels(s.id).set(1 if s.online else 0)
                metrics.QUEUE_DEPTH.labels(s.id).set(depth)
            metrics.REDIS_UP.labels("api").set(1)
        except (RedisConnectionError, RedisTimeoutError):
            metrics.REDIS_UP.labels("api").set(0)  # still serve the metrics: redis_up says why
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # ------------------------------------------------------------------ cameras

    @app.get("/api/cameras", response_model=CameraList, responses={503: ERRORS[503]}, tags=["cameras"])
    async def list_cameras(r: RedisDep) -> CameraList:
        """Every known camera with its state: online, fps, bytes per second, last frame time."""
        return CameraList(server_ts=time.time(), stale_after_s=stale_after_s,
                          cameras=await store.camera_states(r, stale_after_s))

    @app.get("/api/cameras/{camera}", response_model=CameraState, responses=ERRORS, tags=["cameras"])
    async def get_camera(camera: CameraId, r: RedisDep) -> CameraState:
        await store.require_camera(r, camera)
        return (await store.camera_states(r, stale_after_s, only=[camera]))[0]

    @app.get("/api/cameras/{camera}/snapshot.jpg", response_class=Response, tags=["cameras"],
             responses={200: {"content": {"image/jpeg": {}}, "description": "the latest JPEG thumbnail"},
                        **ERRORS})
    async def get_snapshot(camera: CameraId, r: RedisDep) -> Response:
        """The latest JPEG thumbnail the edge sent for this camera."""
        jpeg = await store.snapshot(r, camera)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------------------ detections

    @app.get("/api/cameras/{camera}/detections/latest", response_model=DetectionRecord,
             responses=ERRORS, tags=["detections"])
    async def get_latest(camera: CameraId, r: RedisDep) -> DetectionRecord:
        """The newest detection record of a camera."""
        return await store.latest_detections(r, camera)

    @app.get("/api/cameras/{camera}/detections", response_model=DetectionHistory,
             responses=ERRORS, tags=["detections"])
    async def get_history(
        camera: CameraId, r: RedisDep,
        start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 60 s")] = None,
        end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
        limit: Limit = 100,
    ) -> DetectionHistory:
        """Detection records written in [start, end], oldest first (by the time they were written)."""
        start, end = _range(start, end, 60.0)
        records, truncated, skipped = await store.detection_history(r, camera, start, end, limit)
        return DetectionHistory(camera=camera, start=start, end=end, records=records,
                                truncated=truncated, skipped=skipped)

    # ------------------------------------------------------------------ analytics

    @app.get("/api/counts", response_model=CountsList, responses={503: ERRORS[503]}, tags=["analytics"])
    async def all_counts(r: RedisDep) -> CountsList:
        """Line and zone counts of every camera."""
        return CountsList(cameras=[await store.counts(r, c) for c in await store.camera_ids(r)])

    @app.get("/api/cameras/{camera}/counts", response_model=CameraCounts, responses=ERRORS, tags=["analytics"])
    async def camera_counts(camera: CameraId, r: RedisDep) -> CameraCounts:
        """Counts per line (in/out per class) and zone (occupancy, entries, dwell), rates, congestion."""
        return await store.counts(r, camera)

    @app.get("/api/cameras/{camera}/events", response_model=EventList, responses=ERRORS, tags=["analytics"])
    async def camera_events(
        camera: CameraId, r: RedisDep,
        start: EventsFrom = None,
        end: EventsTo = None,
        limit: Limit = 100,
        type: EventType = None,
    ) -> EventList:
        """Line crossings and zone entries/exits, newest first."""
        start, end = _range(start, end, 3600.0)
        events, skipped = await store.events(r, camera, start, end, limit, type)
        return EventList(events=events, skipped=skipped)

    @app.get("/api/events", response_model=EventList, responses={503: ERRORS[503], 422: ERRORS[422]},
             tags=["analytics"])
    async def every_event(
        r: RedisDep,
        start: EventsFrom = None,
        end: EventsTo = None,
        limit: Limit = 100,
        type: EventType = None,
    ) -> EventList:
        """Events of every camera, newest first."""
        start, end = _range(start, end, 3600.0)
        events, skipped = await store.all_events(r, start, end, limit, type)
        return EventList(events=events, skipped=skipped)

    # ------------------------------------------------------------------ live

    @app.get("/api/live", response_class=EventSourceResponse, tags=["live"],
             responses={code: {"description": ERRORS[code]["description"],  # JSON, not an event stream
                               "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{m}"}}}}
                        for code, m in ((422, "InvalidBody"), (503, "ErrorBody"))})
    async def live_feed(
        r: Annotated[Redis, Depends(get_live_redis)],
        camera: Annotated[list[Annotated[str, StringConstraints(pattern=CAMERA_ID_PATTERN)]],
                          Query(description="only these cameras (repeatable); default all")] = [],
    ) -> AsyncIterable[ServerSentEvent]:
        """Server-Sent Events: `detections`, `event`, `state`, `counts`, and `error` while Redis is down."""
        async for ev in live.feed(r, stale_after_s, camera or None):
            yield ev

    # ------------------------------------------------------------------ dashboard

    static = resources.files("split_infer.api") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/static/index.html")

    return app


def _safe_url(url: str) -> str:
    """The Redis URL without a password, for error messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="split-infer api", description="HTTP read API and dashboard")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--listen", default="127.0.0.1:8080", help="host:port")
    ap.add_argument("--prefix", default=None, help="Redis key prefix (default: env SPLIT_INFER_PREFIX or 'si')")
    ap.add_argument("--stale-after", type=float, default=5.0, help="seconds without frames before a camera is offline")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        ap.error(f"--listen must be host:port, got {args.listen!r}")
    if args.stale_after <= 0:
        ap.error("--stale-after must be > 0")
    if args.prefix:
        keys.set_prefix(args.prefix)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    try:
        app = create_app(args.redis_url, stale_after_s=args.stale_after)
    except ValueError as e:  # redis-py's verdict on a malformed URL
        ap.error(f"--redis-url {_safe_url(args.redis_url)!r}: {e}")
    print(f"split-infer api: dashboard at http://{host}:{port}/  (OpenAPI schema at /openapi.json, Redis {_safe_url(args.redis_url)})",
          flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level=args.log_level.lower())
    return 0
