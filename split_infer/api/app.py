"""`split-infer api`: the HTTP read API and the operator dashboard.

Everything it serves comes from Redis (what the ingest, workers and analytics wrote); it keeps no
state of its own, so any number of replicas can run. Redis down: every data endpoint answers 503
with the reason, and the next request after Redis returns succeeds (redis-py reconnects).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import StringConstraints
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import metrics
from split_infer.api import live
from split_infer.api.models import (
    CameraCounts,
    CameraList,
    CameraView,
    CountsList,
    DetectionHistory,
    DetectionRecord,
    ErrorBody,
    EventList,
    Health,
    InvalidBody,
    UnixTime,
)
from split_infer.api.store import NotFound, Store
from split_infer.keys import CAMERA_ID_PATTERN, Keys
from split_infer.service import StopEvent, UsageError, service_main

log = logging.getLogger(__name__)

CameraId = Annotated[str, Path(pattern=CAMERA_ID_PATTERN, description="camera id", examples=["cam-1"])]
Limit = Annotated[int, Query(ge=1, le=1000, description="most items returned")]
# Every data endpoint may answer these; declared so the schema (and schemathesis) knows them.
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "unknown camera, or nothing recorded yet"},
    422: {"model": InvalidBody, "description": "invalid parameter (camera id pattern, time range, limit)"},
    503: {"model": ErrorBody, "description": "Redis is unreachable; retry later"},
}


def get_store(request: Request) -> Store:
    return request.app.state.store


StoreDep = Annotated[Store, Depends(get_store)]


async def get_live_store(request: Request) -> Store:
    """The store, its Redis checked before a stream starts: once the response is streaming, no
    status can change."""
    s: Store = request.app.state.store
    await s.r.ping()
    return s


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


@dataclass(frozen=True)
class EventQuery:
    """Query parameters shared by the per-camera and the all-camera event listings."""

    start: float
    end: float
    limit: int
    type: str | None


def event_query(
    start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 1 h")] = None,
    end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
    limit: Limit = 100,
    type: Annotated[str | None, Query(max_length=64, description="only events of this type")] = None,
) -> EventQuery:
    return EventQuery(*_range(start, end, 3600.0), limit, type)


EventQueryDep = Annotated[EventQuery, Depends(event_query)]


def create_app(redis_url: str = "redis://127.0.0.1:6379/0", stale_after_s: float = 5.0,
               redis: Redis | None = None, keys: Keys | None = None) -> FastAPI:
    """The API bound to one Redis and one deployment's keys (default: Keys.from_env()).
    `stale_after_s`: no frame for this long means offline."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if redis is None:
            await app.state.store.r.aclose()

    app = FastAPI(
        title="split-infer read API",
        version="0.1.0",
        description="Cameras, detections, counts and events of the split-inference pipeline, "
        "read from Redis; a live feed over Server-Sent Events; the operator dashboard at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; nothing here may need the internet
        redoc_url=None,
    )
    client = redis or Redis.from_url(
        redis_url, socket_connect_timeout=1.0, socket_timeout=3.0, retry_on_timeout=False,
    )
    app.state.store = Store(client, keys or Keys.from_env())
    _error_handlers(app, redis_url)
    _service_routes(app, stale_after_s)
    _data_routes(app, stale_after_s)

    static = resources.files("split_infer.api") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> RedirectResponse:
        return RedirectResponse("/static/index.html")

    return app


def _error_handlers(app: FastAPI, redis_url: str) -> None:
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

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(BadRange)
    async def _bad_range(request: Request, exc: BadRange) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _service_routes(app: FastAPI, stale_after_s: float) -> None:
    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}}, tags=["service"])
    async def healthz(s: StoreDep) -> Response:
        """Ready when Redis answers; 503 (with the reason) when it does not."""
        try:
            await s.r.ping()
        except (RedisConnectionError, RedisTimeoutError) as e:
            metrics.REDIS_UP.labels("api").set(0)
            body = Health(status="degraded", redis="down", detail=f"Redis unreachable: {e}")
            return JSONResponse(body.model_dump(), status_code=503)
        metrics.REDIS_UP.labels("api").set(1)
        return JSONResponse(Health(status="ok", redis="ok").model_dump())

    @app.get("/metrics", response_class=Response, tags=["service"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    async def prometheus(s: StoreDep) -> Response:
        """Prometheus metrics; camera_up and queue_depth are refreshed from Redis at each scrape."""
        try:
            states = await s.camera_states(stale_after_s)
            async with s.r.pipeline(transaction=False) as p:
                for state in states:
                    p.xlen(s.keys.frames_stream(state.id))
                depths = await p.execute()
            for state, depth in zip(states, depths, strict=True):
                metrics.CAMERA_UP.labels(state.id).set(1 if state.online else 0)
                metrics.QUEUE_DEPTH.labels(state.id).set(depth)
            metrics.REDIS_UP.labels("api").set(1)
        except (RedisConnectionError, RedisTimeoutError):
            metrics.REDIS_UP.labels("api").set(0)  # still serve the metrics: redis_up says why
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _data_routes(app: FastAPI, stale_after_s: float) -> None:
    @app.get("/api/cameras", response_model=CameraList, responses={503: ERRORS[503]}, tags=["cameras"])
    async def list_cameras(s: StoreDep) -> CameraList:
        """Every known camera with its state: online, fps, bytes per second, last frame time."""
        return CameraList(server_ts=time.time(), stale_after_s=stale_after_s,
                          cameras=await s.camera_states(stale_after_s))

    @app.get("/api/cameras/{camera}", response_model=CameraView, responses=ERRORS, tags=["cameras"])
    async def get_camera(camera: CameraId, s: StoreDep) -> CameraView:
        await s.require_camera(camera)
        return (await s.camera_states(stale_after_s, only=[camera]))[0]

    @app.get("/api/cameras/{camera}/snapshot.jpg", response_class=Response, tags=["cameras"],
             responses={200: {"content": {"image/jpeg": {}}, "description": "the latest JPEG thumbnail"},
                        **ERRORS})
    async def get_snapshot(camera: CameraId, s: StoreDep) -> Response:
        """The latest JPEG thumbnail the edge sent for this camera."""
        return Response(await s.snapshot(camera), media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/cameras/{camera}/detections/latest", response_model=DetectionRecord,
             responses=ERRORS, tags=["detections"])
    async def get_latest(camera: CameraId, s: StoreDep) -> DetectionRecord:
        """The newest detection record of a camera."""
        return await s.latest_detections(camera)

    @app.get("/api/cameras/{camera}/detections", response_model=DetectionHistory,
             responses=ERRORS, tags=["detections"])
    async def get_history(
        camera: CameraId, s: StoreDep,
        start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 60 s")] = None,
        end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
        limit: Limit = 100,
    ) -> DetectionHistory:
        """Detection records written in [start, end], oldest first (by the time they were written)."""
        start, end = _range(start, end, 60.0)
        records, truncated, skipped = await s.detection_history(camera, start, end, limit)
        return DetectionHistory(camera=camera, start=start, end=end, records=records,
                                truncated=truncated, skipped=skipped)

    @app.get("/api/counts", response_model=CountsList, responses={503: ERRORS[503]}, tags=["analytics"])
    async def all_counts(s: StoreDep) -> CountsList:
        """Line and zone counts of every camera."""
        return CountsList(cameras=[await s.counts(c) for c in await s.camera_ids()])

    @app.get("/api/cameras/{camera}/counts", response_model=CameraCounts, responses=ERRORS, tags=["analytics"])
    async def camera_counts(camera: CameraId, s: StoreDep) -> CameraCounts:
        """Counts per line (in/out per class) and zone (occupancy, entries, dwell), rates, congestion."""
        return await s.counts(camera)

    @app.get("/api/cameras/{camera}/events", response_model=EventList, responses=ERRORS, tags=["analytics"])
    async def camera_events(camera: CameraId, s: StoreDep, q: EventQueryDep) -> EventList:
        """Line crossings and zone entries/exits, newest first."""
        events, skipped = await s.events(camera, q.start, q.end, q.limit, q.type)
        return EventList(events=events, skipped=skipped)

    @app.get("/api/events", response_model=EventList, responses={503: ERRORS[503], 422: ERRORS[422]},
             tags=["analytics"])
    async def every_event(s: StoreDep, q: EventQueryDep) -> EventList:
        """Events of every camera, newest first."""
        events, skipped = await s.all_events(q.start, q.end, q.limit, q.type)
        return EventList(events=events, skipped=skipped)

    @app.get("/api/live", response_class=EventSourceResponse, tags=["live"],
             responses={code: {"description": ERRORS[code]["description"],  # JSON, not an event stream
                               "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{m}"}}}}
                        for code, m in ((422, "InvalidBody"), (503, "ErrorBody"))})
    async def live_feed(
        s: Annotated[Store, Depends(get_live_store)],
        camera: Annotated[list[Annotated[str, StringConstraints(pattern=CAMERA_ID_PATTERN)]],
                          Query(description="only these cameras (repeatable); default all")] = [],  # noqa: B006
    ) -> AsyncIterable[ServerSentEvent]:
        """Server-Sent Events: `detections`, `event`, `state`, `counts`, and `error` while Redis is down."""
        async for ev in live.feed(s, stale_after_s, camera or None):
            yield ev


def _safe_url(url: str) -> str:
    """The Redis URL without a password, for error messages."""
    if "@" in url:
        scheme, rest = url.split("://", 1) if "://" in url else ("redis", url)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer api", "HTTP read API and dashboard", argv, _add_arguments, _run)


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--listen", default="127.0.0.1:8080", help="host:port")
    ap.add_argument("--prefix", default=None, help="Redis key prefix (default: env SPLIT_INFER_PREFIX or 'si')")
    ap.add_argument("--stale-after", type=float, default=5.0, help="seconds without frames before a camera is offline")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn takes both signals over while it serves)."""
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen must be host:port, got {args.listen!r}")
    if args.stale_after <= 0:
        raise UsageError("--stale-after must be > 0")
    keys = Keys(args.prefix) if args.prefix else Keys.from_env()
    try:
        app = create_app(args.redis_url, stale_after_s=args.stale_after, keys=keys)
    except ValueError as e:  # redis-py's verdict on a malformed URL
        raise UsageError(f"--redis-url {_safe_url(args.redis_url)!r}: {e}") from None
    print(f"split-infer api: dashboard at http://{host}:{port}/  "
          f"(OpenAPI schema at /openapi.json, Redis {_safe_url(args.redis_url)})", flush=True)
    # log_config=None: uvicorn's loggers keep the process's one set-up (format, --log-level).
    uvicorn.run(app, host=host, port=int(port), log_config=None)
    return 0
