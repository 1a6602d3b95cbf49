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
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import StringConstraints
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import __version__, metrics
from split_infer.api.auth import TICKET_TTL_S, ApiAuth, SecurityHeaders, new_key, require_read
from split_infer.api.live import Client, LiveHub
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
    LiveTicket,
    UnixTime,
)
from split_infer.api.store import NotFound, Store
from split_infer.config import ApiConfig, load_config
from split_infer.keys import CAMERA_ID_PATTERN, Keys
from split_infer.redact import redact_url, register_url
from split_infer.service import StopEvent, UsageError, service_main

log = logging.getLogger(__name__)

CameraId = Annotated[str, Path(pattern=CAMERA_ID_PATTERN, description="camera id", examples=["cam-1"])]
Limit = Annotated[int, Query(ge=1, le=1000, description="most items returned")]
# Every data endpoint may answer these; declared so the schema (and schemathesis) knows them.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or invalid API key (only when keys are configured)"},
    429: {"model": ErrorBody, "description": "this key's rate limit is reached; see Retry-After"},
}
ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    404: {"model": ErrorBody, "description": "unknown camera, or nothing recorded yet"},
    422: {"model": InvalidBody, "description": "invalid parameter (camera id pattern, time range, limit)"},
    503: {"model": ErrorBody, "description": "Redis is unreachable; retry later"},
}


def get_store(request: Request) -> Store:
    return request.app.state.store


StoreDep = Annotated[Store, Depends(get_store)]


JPEG_MAGIC = b"\xff\xd8\xff"


async def live_client(
    request: Request,
    camera: Annotated[list[Annotated[str, StringConstraints(pattern=CAMERA_ID_PATTERN)]],
                      Query(description="only these cameras (repeatable); default all")] = [],  # noqa: B006
) -> Client:
    """A place in the live hub, Redis checked before a stream starts (once the response is
    streaming, no status can change); 503 when Redis is down or every place is taken."""
    s: Store = request.app.state.store
    await s.r.ping()
    hub: LiveHub = request.app.state.hub
    client = hub.reserve(camera or None)
    if client is None:
        raise HTTPException(503, f"{hub.max_clients} live connections are open already; retry later",
                            headers={"Retry-After": "5"})
    return client


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
               redis: Redis | None = None, keys: Keys | None = None, settings: ApiConfig | None = None) -> FastAPI:
    """The API bound to one Redis and one deployment's keys (default: Keys.from_env()).
    `stale_after_s`: no frame for this long means offline. `settings`: API keys, CORS, rate limit
    and live-feed bounds (default: none of the keys, no CORS)."""
    cfg = settings or ApiConfig(redis_url=redis_url, stale_after_s=stale_after_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.hub.close()
        if redis is None:
            await app.state.store.r.aclose()
            await app.state.hub.store.r.aclose()

    app = FastAPI(
        title="split-infer read API",
        version=__version__,
        description="Cameras, detections, counts and events of the split-inference pipeline, "
        "read from Redis; a live feed over Server-Sent Events; the operator dashboard at /.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; nothing here may need the internet
        redoc_url=None,
    )
    client = redis or Redis.from_url(
        redis_url, socket_connect_timeout=1.0, socket_timeout=3.0, retry_on_timeout=False,
    )
    keys = keys or Keys.from_env()
    app.state.store = Store(client, keys)
    # The live feed's own client: its blocking XREAD never takes a connection the endpoints need.
    live_redis = redis or Redis.from_url(redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
    app.state.hub = LiveHub(Store(live_redis, keys), stale_after_s, cfg.max_live, cfg.live_max_s, cfg.live_queue)
    app.state.auth = ApiAuth(cfg.api_keys, cfg.rate_per_s, cfg.rate_burst)
    if not cfg.api_keys:
        log.warning("NO API KEYS CONFIGURED: every /api/... endpoint is open to anyone who can reach this "
                    "port. Configure api_keys (split-infer api --new-key) outside a trusted network.")
    app.add_middleware(SecurityHeaders)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"], max_age=600)
    _error_handlers(app, redis_url)
    _service_routes(app, stale_after_s)
    router = APIRouter(dependencies=[Depends(require_read)])
    _data_routes(router, stale_after_s)
    _analytics_routes(router)
    _live_routes(router)
    app.include_router(router)

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
            {"detail": f"Redis unreachable at {redact_url(redis_url)}: {exc}. Retry later."},
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


def _data_routes(app: APIRouter, stale_after_s: float) -> None:
    @app.get("/api/cameras", response_model=CameraList, responses={503: ERRORS[503], **AUTH_ERRORS},
             tags=["cameras"])
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
        """The latest JPEG thumbnail the edge sent for this camera (only if it is a JPEG)."""
        jpeg = await s.snapshot(camera)
        if not jpeg.startswith(JPEG_MAGIC):  # never serve other bytes (HTML...) labelled image/jpeg
            log.warning("camera %s: the stored snapshot is not a JPEG (%d bytes); not served", camera, len(jpeg))
            raise NotFound(f"camera {camera!r} has no valid snapshot (the stored one is not a JPEG)")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

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



def _analytics_routes(app: APIRouter) -> None:
    @app.get("/api/counts", response_model=CountsList, responses={503: ERRORS[503], **AUTH_ERRORS},
             tags=["analytics"])
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

    @app.get("/api/events", response_model=EventList,
             responses={503: ERRORS[503], 422: ERRORS[422], **AUTH_ERRORS}, tags=["analytics"])
    async def every_event(s: StoreDep, q: EventQueryDep) -> EventList:
        """Events of every camera, newest first."""
        events, skipped = await s.all_events(q.start, q.end, q.limit, q.type)
        return EventList(events=events, skipped=skipped)



def _live_routes(app: APIRouter) -> None:
    @app.get("/api/live", response_class=EventSourceResponse, tags=["live"],
             responses={code: {"description": ERRORS[code]["description"],  # JSON, not an event stream
                               "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{m}"}}}}
                        for code, m in ((401, "ErrorBody"), (422, "InvalidBody"), (429, "ErrorBody"),
                                        (503, "ErrorBody"))})
    async def live_feed(
        request: Request, client: Annotated[Client, Depends(live_client)],
        ticket: Annotated[str | None, Query(max_length=200, description="from POST /api/live/ticket: "
                                            "EventSource cannot send the Authorization header")] = None,
    ) -> AsyncIterable[ServerSentEvent]:
        """Server-Sent Events: `detections`, `event`, `state`, `counts`, and `error` while Redis is down.
        At most `max_live` connections (then 503); each is closed after `live_max_s`."""
        async for ev in request.app.state.hub.stream(client):
            yield ev

    @app.post("/api/live/ticket", response_model=LiveTicket, responses=AUTH_ERRORS, tags=["live"])
    async def live_ticket(request: Request, key: Annotated[Any, Depends(require_read)]) -> LiveTicket:
        """A short-lived ticket for `/api/live?ticket=...` (for EventSource, which cannot send headers)."""
        return LiveTicket(ticket=request.app.state.auth.issue_ticket(key), expires_in=TICKET_TTL_S)


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer api", "HTTP read API and dashboard", argv, _add_arguments, _run,
                        config_help="api YAML (ApiConfig: redis_url, api_keys, cors_origins, rate and live limits)")


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--redis-url", default=None, help="default from config, else redis://127.0.0.1:6379/0")
    ap.add_argument("--listen", default=None, help="host:port (default from config, else 127.0.0.1:8080)")
    ap.add_argument("--prefix", default=None, help="Redis key prefix (default: env SPLIT_INFER_PREFIX or 'si')")
    ap.add_argument("--stale-after", type=float, default=None, help="seconds without frames before a camera is offline")
    ap.add_argument("--api-key-sha256", action="append", default=None, metavar="HEX",
                    help="sha256 of an accepted API key (scope read); repeatable, adds to the config's")
    ap.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                    help="an origin allowed to call the API from a browser; repeatable (default: none)")
    ap.add_argument("--max-live", type=int, default=None, help="most concurrent /api/live connections")
    ap.add_argument("--new-key", action="store_true", help="print a new random API key and its config entry, then exit")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    """Serve until SIGTERM/SIGINT (uvicorn takes both signals over while it serves)."""
    if args.new_key:
        key, digest = new_key()
        print(f"API key (give it to the dashboard's users; it is not stored anywhere): {key}\n"
              f"config entry:\napi_keys:\n  - name: dashboard\n    sha256: {digest}\n    scopes: [read]")
        return 0
    if args.stale_after is not None and args.stale_after <= 0:
        raise UsageError("--stale-after must be > 0")
    register_url(args.redis_url)
    overrides: dict[str, Any] = {"redis_url": args.redis_url, "listen": args.listen,
                                 "stale_after_s": args.stale_after, "max_live": args.max_live,
                                 "cors_origins": args.cors_origin}
    cfg = load_config(args.config, ApiConfig, overrides)
    if args.api_key_sha256:
        extra = [{"name": f"cli-{i}", "sha256": h.lower()} for i, h in enumerate(args.api_key_sha256)]
        # The password file is already read into redis_url: validating it again would find it twice.
        base = cfg.model_dump(exclude={"redis_password_file"})
        cfg = load_config(None, ApiConfig, {**base, "api_keys": [*base["api_keys"], *extra]})
    host, _, port = cfg.listen.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--listen must be host:port, got {cfg.listen!r}")
    keys = Keys(args.prefix) if args.prefix else Keys.from_env()
    try:
        app = create_app(cfg.redis_url, stale_after_s=cfg.stale_after_s, keys=keys, settings=cfg)
    except ValueError as e:  # redis-py's verdict on a malformed URL
        raise UsageError(f"--redis-url {redact_url(cfg.redis_url)!r}: {e}") from None
    print(f"split-infer api: dashboard at http://{host}:{port}/  (OpenAPI schema at /openapi.json, "
          f"Redis {redact_url(cfg.redis_url)}, {len(cfg.api_keys)} API key(s))", flush=True)
    # log_config=None: uvicorn's loggers keep the process's one set-up (format, --log-level).
    uvicorn.run(app, host=host, port=int(port), log_config=None)
    return 0
