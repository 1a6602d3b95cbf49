"""The API's service routes: /healthz (liveness), /readyz (readiness: Redis answers) and /metrics.

Same contract as every other process's observability port (split_infer/observability.py):
/healthz never touches Redis, so a Redis outage marks the API unready (503 with the reason) but
never gets it restarted.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import metrics
from split_infer.api.models import Health, Model
from split_infer.api.store import Store

SERVICE = "api"  # REDIS_UP's service label


class Liveness(Model):
    status: Literal["ok"]


async def _redis_health(store: Store) -> Health:
    try:
        await store.r.ping()
    except (RedisConnectionError, RedisTimeoutError) as e:
        metrics.REDIS_UP.labels(SERVICE).set(0)
        return Health(status="degraded", redis="down", detail=f"Redis unreachable: {e}")
    metrics.REDIS_UP.labels(SERVICE).set(1)
    return Health(status="ok", redis="ok")


def add_service_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Liveness, tags=["service"], operation_id="healthz")
    async def healthz() -> Liveness:
        """Liveness: 200 while the API serves requests (Redis is not asked: see /readyz)."""
        return Liveness(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health}}, tags=["service"],
             operation_id="readyz")
    async def readyz(request: Request) -> Response:
        """Readiness: 200 when Redis answers; 503 with the reason when it does not."""
        health = await _redis_health(request.app.state.store)
        return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)

    @app.get("/metrics", response_class=Response, tags=["service"], operation_id="metrics",
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics of this process: HTTP requests and times, splitinfer_redis_up{service="api"}
        (checked at each scrape), build info. Camera and queue series come from the ingest and workers."""
        await _redis_health(request.app.state.store)  # still serve the metrics when down: redis_up says why
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
