"""HTTP request metrics of the API: requests by method, route template and status, and their time.

A pure ASGI middleware (it sees streaming responses, which Starlette's BaseHTTPMiddleware would
buffer). The route label is the matched route's template (`/api/cameras/{camera}`), never the raw
path, so a scan of random URLs cannot blow up the series count: unmatched paths share one label.
"""

from __future__ import annotations

import re
import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from split_infer import metrics

UNMATCHED_ROUTE = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
STATIC_PREFIX = re.compile(r"(/[A-Za-z0-9_.~-]+)*")
MAX_PREFIX = 64


def route_template(scope: Scope) -> str:
    """The full template of the route the router matched (scope["route"]), e.g. /api/v1/cameras/{camera}.

    FastAPI may hand over the included router's own route, whose template lacks the include prefix
    (/cameras/{camera} under /api/v1 and under the /api alias): the prefix is then what the request
    path holds before the route's own part, the route's template filled with the path parameters.
    A prefix that routing matched is static (no parameters): bounded like the templates themselves.
    """
    route = scope.get("route")
    if isinstance(route, Mount):
        return f"{route.path}/{{path}}"
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED_ROUTE
    params = {k: str(v) for k, v in (scope.get("path_params") or {}).items()}
    try:
        own_part = template.format(**params)
    except (KeyError, IndexError, ValueError):
        return template
    path = str(scope.get("path", ""))
    prefix = path[: len(path) - len(own_part)] if own_part and path.endswith(own_part) else ""
    if len(prefix) > MAX_PREFIX or not STATIC_PREFIX.fullmatch(prefix):
        return template  # not a plain include prefix: never put request text in a label
    return prefix + template


class HttpMetrics:
    """Counts every HTTP request (splitinfer_http_requests_total) and observes its time up to the
    response start (splitinfer_http_request_duration_seconds): for the live feed, an endless stream,
    that is the time to open it, not its lifetime."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        method = scope["method"] if scope["method"] in KNOWN_METHODS else OTHER_METHOD
        status = 500  # an exception before any response is what the client sees as a 500
        timed = False

        async def send_observed(message: Message) -> None:
            nonlocal status, timed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                metrics.HTTP_DURATION.labels(method, route_template(scope)).observe(time.perf_counter() - started)
                timed = True
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = route_template(scope)
            if not timed:
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
