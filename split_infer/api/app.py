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
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import StringConstraints
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import __version__, metrics
from split_infer.api.auth import TICKET_TTL_S, ApiAuth, SecurityHeaders, new_key, require_read
from split_infer.api.dashboard_routes import dashboard_routes, frame_headers, snapshot_shown
from split_infer.api.docs import add_docs
from split_infer.api.health import add_service_routes
from split_infer.api.http_metrics import HttpMetrics
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
    EventType,
    InvalidBody,
    LiveTicket,
    UnixTime,
)
from split_infer.api.pages import CURSOR_PATTERN, POSITION_PATTERN, BadCursor, Position, parse_cursor
from split_infer.api.replay import ID_PATTERN as REPLAY_ID_PATTERN
from split_infer.api.replay import Cursor
from split_infer.api.store import NotFound, Store
from split_infer.api.versions import mount_versioned
from split_infer.config import ApiConfig, load_config
from split_infer.keys import CAMERA_ID_PATTERN, Keys
from split_infer.redact import redact_url, register_url
from split_infer.redisconn import connect_async
from split_infer.service import StopEvent, UsageError, service_main

log = logging.getLogger(__name__)

CameraId = Annotated[str, Path(pattern=CAMERA_ID_PATTERN, description="camera id", examples=["cam-1"])]
Limit = Annotated[int, Query(ge=1, le=1000, description="most items returned")]
CURSOR_HELP = "the `next_cursor` of the previous page; without it, the first page"
# The pattern is in the schema only: a cursor that breaks it is answered 400 with the reason, not 422.
StreamCursor = Annotated[str | None, Query(max_length=100, description=CURSOR_HELP,
                                           json_schema_extra={"pattern": CURSOR_PATTERN})]
EventsCursor = Annotated[str | None, Query(max_length=100, description=CURSOR_HELP,
                                           json_schema_extra={"pattern": POSITION_PATTERN})]
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
BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a cursor that is not a `next_cursor` this listing handed out"},
}


def get_store(request: Request) -> Store:
    return request.app.state.store


StoreDep = Annotated[Store, Depends(get_store)]


JPEG_MAGIC = b"\xff\xd8\xff"


async def live_client(
    request: Request,
    camera: Annotated[list[Annotated[str, StringConstraints(pattern=CAMERA_ID_PATTERN)]],
                      Query(description="only these cameras (repeatable); default all")] = [],  # noqa: B006
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", include_in_schema=False)] = None,
    resume: Annotated[str | None, Query(alias="last_event_id", pattern=REPLAY_ID_PATTERN,
                                        description="replay what came after this event id first (as the "
                                        "Last-Event-ID header, which a new EventSource cannot send)")] = None,
) -> Client:
    """A place in the live hub, Redis checked before a stream starts (once the response is
    streaming, no status can change); 503 when Redis is down or every place is taken."""
    s: Store = request.app.state.store
    after = last_event_id or resume
    try:
        cursor = Cursor.parse(after) if after else None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    await s.r.ping()
    hub: LiveHub = request.app.state.hub
    client = hub.reserve(camera or None, cursor)
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
    cursor: str | None


def event_query(
    start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 1 h, or (with a cursor) "
                                            "the stream's start")] = None,
    end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
    limit: Limit = 100,
    type: Annotated[EventType | None, Query(description="only events of this type (filtered in Redis: "
                                            "pages are full while matches exist)")] = None,
    cursor: StreamCursor = None,
) -> EventQuery:
    # A walk of pages goes back from its cursor: a default start of "an hour before now" would cut it short.
    return EventQuery(*_range(0.0 if cursor is not None and start is None else start, end, 3600.0), limit, type, cursor)


def every_event_query(
    start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 1 h, or (with a cursor) "
                                            "the streams' start")] = None,
    end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
    limit: Limit = 100,
    type: Annotated[EventType | None, Query(description="only events of this type (filtered in Redis)")] = None,
    cursor: EventsCursor = None,
) -> EventQuery:
    return event_query(start, end, limit, type, cursor)  # the same, with the every-camera cursor's pattern


EventQueryDep = Annotated[EventQuery, Depends(event_query)]
EveryEventQueryDep = Annotated[EventQuery, Depends(every_event_query)]


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
        docs_url=None,  # FastAPI's Swagger UI loads from a CDN: ours is served from a package (api/docs.py)
        redoc_url=None,
    )
    client = redis or connect_async(  # one server or a cluster, as the URL says
        redis_url, socket_connect_timeout=1.0, socket_timeout=3.0, retry_on_timeout=False,
    )
    keys = keys or Keys.from_env()
    app.state.store = Store(client, keys)
    # The live feed's own client: its blocking XREAD never takes a connection the endpoints need.
    live_redis = redis or connect_async(redis_url, socket_connect_timeout=1.0, socket_timeout=5.0)
    app.state.hub = LiveHub(Store(live_redis, keys), stale_after_s, cfg.max_live, cfg.live_max_s, cfg.live_queue)
    app.state.auth = ApiAuth(cfg.api_keys, cfg.rate_per_s, cfg.rate_burst)
    if not cfg.api_keys:
        log.warning("NO API KEYS CONFIGURED: every /api/... endpoint is open to anyone who can reach this "
                    "port. Configure api_keys (split-infer api --new-key) outside a trusted network.")
    app.add_middleware(SecurityHeaders)
    if cfg.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"], max_age=600)
    app.add_middleware(HttpMetrics)  # outermost: counts every answer, 429s and CORS preflights included
    _error_handlers(app, redis_url)
    add_service_routes(app)  # /healthz, /readyz, /metrics (split_infer/api/health.py)
    router = APIRouter(dependencies=[Depends(require_read)])
    _data_routes(router, stale_after_s)
    _analytics_routes(router)
    _live_routes(router)
    dashboard_routes(router, ERRORS)  # frame records, scenes, history (split_infer/api/dashboard_routes.py)
    mount_versioned(app, router)  # /api/v1/..., and /api/... as the deprecated alias (split_infer/api/versions.py)
    add_docs(app)  # Swagger UI at /docs, offline

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

    @app.exception_handler(BadCursor)
    async def _bad_cursor(request: Request, exc: BadCursor) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(BadRange)
    async def _bad_range(request: Request, exc: BadRange) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)


def _data_routes(app: APIRouter, stale_after_s: float) -> None:
    @app.get("/cameras", response_model=CameraList, responses={503: ERRORS[503], **AUTH_ERRORS},
             tags=["cameras"], operation_id="list_cameras")
    async def list_cameras(s: StoreDep) -> CameraList:
        """Every known camera with its state: online, fps, bytes per second, last frame time."""
        return CameraList(server_ts=time.time(), stale_after_s=stale_after_s,
                          cameras=await s.camera_states(stale_after_s))

    @app.get("/cameras/{camera}", response_model=CameraView, responses=ERRORS, tags=["cameras"],
             operation_id="get_camera")
    async def get_camera(camera: CameraId, s: StoreDep) -> CameraView:
        await s.require_camera(camera)
        return (await s.camera_states(stale_after_s, only=[camera]))[0]

    @app.get("/cameras/{camera}/snapshot.jpg", response_class=Response, tags=["cameras"], operation_id="get_snapshot",
             responses={200: {"content": {"image/jpeg": {}}, "description": "the latest JPEG thumbnail"},
                        **ERRORS})
    async def get_snapshot(camera: CameraId, s: StoreDep) -> Response:
        """The latest JPEG thumbnail the edge sent for this camera (only if it is a JPEG). Headers
        X-Frame-Session, X-Frame-Seq, X-Frame-Capture-Ts and X-Frame-Codec name the frame it shows
        (absent when that is not known): its boxes are GET .../detections/frame?session=&seq=."""
        jpeg, shown = await snapshot_shown(s, camera)
        if not jpeg.startswith(JPEG_MAGIC):  # never serve other bytes (HTML...) labelled image/jpeg
            log.warning("camera %s: the stored snapshot is not a JPEG (%d bytes); not served", camera, len(jpeg))
            raise NotFound(f"camera {camera!r} has no valid snapshot (the stored one is not a JPEG)")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store", **frame_headers(shown)})

    @app.get("/cameras/{camera}/detections/latest", response_model=DetectionRecord,
             responses=ERRORS, tags=["detections"], operation_id="get_latest_detections")
    async def get_latest(camera: CameraId, s: StoreDep) -> DetectionRecord:
        """The newest detection record of a camera."""
        return await s.latest_detections(camera)

    @app.get("/cameras/{camera}/detections", response_model=DetectionHistory,
             responses={**ERRORS, **BAD_CURSOR}, tags=["detections"], operation_id="list_detections")
    async def get_history(
        camera: CameraId, s: StoreDep,
        start: Annotated[UnixTime | None, Query(description="from (unix s); default end - 60 s")] = None,
        end: Annotated[UnixTime | None, Query(description="to (unix s); default now (or start, if later)")] = None,
        limit: Limit = 100,
        cursor: StreamCursor = None,
    ) -> DetectionHistory:
        """Detection records written in [start, end], oldest first (by the time they were written),
        a page at a time: `next_cursor` continues after this page's last record."""
        after = parse_cursor(cursor) if cursor is not None else None  # '' too is malformed: 400
        start, end = _range(start, end, 60.0)
        page = await s.detection_history(camera, start, end, limit, after)
        return DetectionHistory(camera=camera, start=start, end=end, records=page.items,
                                truncated=page.next_cursor is not None, skipped=page.skipped,
                                next_cursor=page.next_cursor)



def _analytics_routes(app: APIRouter) -> None:
    @app.get("/counts", response_model=CountsList, responses={503: ERRORS[503], **AUTH_ERRORS},
             tags=["analytics"], operation_id="list_counts")
    async def all_counts(s: StoreDep) -> CountsList:
        """Line and zone counts of every camera."""
        return CountsList(cameras=[await s.counts(c) for c in await s.camera_ids()])

    @app.get("/cameras/{camera}/counts", response_model=CameraCounts, responses=ERRORS, tags=["analytics"],
             operation_id="get_camera_counts")
    async def camera_counts(camera: CameraId, s: StoreDep) -> CameraCounts:
        """Counts per line (in/out per class) and zone (occupancy, entries, dwell), rates, congestion."""
        return await s.counts(camera)

    @app.get("/cameras/{camera}/events", response_model=EventList, responses={**ERRORS, **BAD_CURSOR},
             tags=["analytics"], operation_id="list_camera_events")
    async def camera_events(camera: CameraId, s: StoreDep, q: EventQueryDep) -> EventList:
        """Line crossings and zone entries/exits, newest first, a page at a time (`next_cursor`)."""
        before = parse_cursor(q.cursor) if q.cursor is not None else None
        page = await s.events(camera, q.start, q.end, q.limit, q.type, before)
        return EventList(events=page.items, skipped=page.skipped, next_cursor=page.next_cursor)

    @app.get("/events", response_model=EventList, operation_id="list_events", tags=["analytics"],
             responses={503: ERRORS[503], 422: ERRORS[422], **BAD_CURSOR, **AUTH_ERRORS})
    async def every_event(s: StoreDep, q: EveryEventQueryDep) -> EventList:
        """Events of every camera, newest first (by stream id, then camera), a page at a time."""
        before = Position.parse(q.cursor) if q.cursor is not None else None
        page = await s.all_events(q.start, q.end, q.limit, q.type, before)
        return EventList(events=page.items, skipped=page.skipped, next_cursor=page.next_cursor)



def _live_routes(app: APIRouter) -> None:
    @app.get("/live", response_class=EventSourceResponse, tags=["live"], operation_id="live_feed",
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

    @app.post("/live/ticket", response_model=LiveTicket, responses=AUTH_ERRORS, tags=["live"],
              operation_id="create_live_ticket")
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
    ap.add_argument("--stale-after", type=float, default=None, help="seconds without frames before a camera is offline "
                                                                     "(default from config)")
    ap.add_argument("--api-key-sha256", action="append", default=None, metavar="HEX",
                    help="sha256 of an accepted API key (scope read); repeatable, adds to the config's (default: none)")
    ap.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                    help="an origin allowed to call the API from a browser; repeatable (default: none)")
    ap.add_argument("--max-live", type=int, default=None,
                    help="most concurrent /api/live connections (default from config)")
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
    metrics.set_build_info(None, None)  # the API runs no model and no codec
    # log_config=None: uvicorn's loggers keep the process's one set-up (format, --log-level).
    uvicorn.run(app, host=host, port=int(port), log_config=None)
    return 0
