"""The one HTTP endpoint every long-running process serves: /metrics, /healthz and /readyz.

    probe = Probe()
    start_metrics_server(port, addr, live=probe.live, ready=probe.ready)   # split_infer.metrics
    while not stop:            # the process loop
        probe.beat()           # liveness: the loop still turns
        probe.set_ready(redis_ok, "Redis unreachable")   # readiness: it can do its work

/healthz answers 200 while the process loop is alive (a loop silent for `stale_after_s` is
reported dead, so an orchestrator restarts a hung process); /readyz answers 200 when the process
can do its work (Redis reachable, stream open...), else 503 with a short JSON reason, so traffic
and alerts can tell "starting or degraded" from "dead". Both answer JSON:
`{"status": "ok"}` or `{"status": "unavailable", "reason": "..."}`.

A small standard-library HTTP server in a daemon thread (no framework: the edge stays light); the
API, which has FastAPI already, serves the same paths on its own port instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


class Endpoint(str, Enum):
    METRICS = "/metrics"
    LIVE = "/healthz"
    READY = "/readyz"


@dataclass(frozen=True)
class Health:
    """One probe's answer: ok, or not with the reason (short, for operators; no secrets)."""

    ok: bool
    reason: str = ""

    def to_json(self) -> bytes:
        body = {"status": "ok"} if self.ok else {"status": "unavailable", "reason": self.reason}
        return json.dumps(body).encode()

    @property
    def http_status(self) -> HTTPStatus:
        return HTTPStatus.OK if self.ok else HTTPStatus.SERVICE_UNAVAILABLE


HealthCheck = Callable[[], Health]
OK = Health(True)


class Probe:
    """What a process loop reports about itself; read by the HTTP thread (plain attribute
    assignments, atomic under the GIL: no lock needed)."""

    def __init__(self, stale_after_s: float = 60.0, starting: str = "starting") -> None:
        self.stale_after_s = stale_after_s
        self._last_beat: float | None = None
        self._ready = Health(False, starting)

    def beat(self) -> None:
        """The process loop went round once."""
        self._last_beat = time.monotonic()

    def set_ready(self, ok: bool, reason: str = "") -> None:
        """Whether the process can do its work now; `reason` says why not."""
        self._ready = OK if ok else Health(False, reason or "not ready")

    def live(self) -> Health:
        if self._last_beat is None:
            return OK  # still starting (loading a model...): alive, just not ready
        silent = time.monotonic() - self._last_beat
        if silent > self.stale_after_s:
            return Health(False, f"process loop silent for {silent:.0f} s")
        return OK

    def ready(self) -> Health:
        live = self.live()
        return live if not live.ok else self._ready


def _always_ok() -> Health:
    return OK


def _handler(live: HealthCheck, ready: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == Endpoint.METRICS.value:
                self._send(HTTPStatus.OK, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path in (Endpoint.LIVE.value, Endpoint.READY.value):
                health = self._check(live if path == Endpoint.LIVE.value else ready)
                self._send(health.http_status, JSON_TYPE, health.to_json())
            else:
                body = json.dumps({"detail": f"not found; try {', '.join(e.value for e in Endpoint)}"})
                self._send(HTTPStatus.NOT_FOUND, JSON_TYPE, body.encode())

        @staticmethod
        def _check(check: HealthCheck) -> Health:
            try:
                return check()
            except Exception as e:  # noqa: BLE001 - a broken check is an unhealthy answer, not a 500
                log.exception("health check failed")
                return Health(False, f"health check failed: {type(e).__name__}")

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
            log.debug("%s %s", self.address_string(), format % args)  # scrapes every 15 s: not at INFO

    return Handler


class ObservabilityServer:
    """The HTTP server thread; `port` is the one bound (useful with port 0 in tests)."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd, self._thread = httpd, thread

    @classmethod
    def start(cls, port: int, addr: str = "127.0.0.1", *, live: HealthCheck | None = None,
              ready: HealthCheck | None = None) -> ObservabilityServer:
        """Bind addr:port (OSError if taken) and serve in a daemon thread."""
        httpd = ThreadingHTTPServer((addr, port), _handler(live or _always_ok, ready or _always_ok))
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, name="observability", daemon=True)
        thread.start()
        log.info("serving %s on %s:%d", ", ".join(e.value for e in Endpoint), addr, httpd.server_address[1])
        return cls(httpd, thread)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
