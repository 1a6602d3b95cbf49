"""Schemathesis against the read API's own OpenAPI schema, in-process (ASGI), over a populated Redis.

Every operation is called with generated parameters (valid and invalid) and every response is
checked against the schema: status codes, content types, bodies; no 5xx. The API runs with an
API key configured, and every call is authenticated with it (bearer).
"""

from __future__ import annotations

import hashlib
import time
import uuid

import hypothesis
import pytest
import schemathesis

from split_infer.api.app import create_app
from split_infer.config import ApiConfig, ApiKey
from split_infer.keys import Keys
from support.feeder import Feeder
from support.redisdb import REDIS_URL, connect, isolated_prefix

pytestmark = pytest.mark.redis

# The schema is read from the app when the module loads; the app's keys are the ones `populated` fills.
KEYS = Keys(f"test-schema-{uuid.uuid4().hex[:10]}")
API_KEY = f"schema-{uuid.uuid4().hex}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
SETTINGS_API = ApiConfig(redis_url=REDIS_URL, rate_per_s=1000, rate_burst=10_000,
                         api_keys=[ApiKey(name="schemathesis", sha256=hashlib.sha256(API_KEY.encode()).hexdigest())])
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(REDIS_URL, keys=KEYS, settings=SETTINGS_API))


@schema.auth()
class BearerKey:
    """Schemathesis authenticates every call with the API key (and leaves it out on purpose in
    negative cases that drop the Authorization header: those must answer 401)."""

    def get(self, case, context) -> str:
        return API_KEY

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


SETTINGS = dict(deadline=None, suppress_health_check=list(hypothesis.HealthCheck))


@pytest.fixture(scope="module")
def populated():
    r = connect()
    with isolated_prefix(r, KEYS.prefix) as prefix:
        feeder = Feeder(r, KEYS, n_cameras=3, dead=("cam-3",))
        t0 = time.time() - 8
        for i in range(80):  # 8 s of traffic: detections, crossings, zone events, counts, snapshots
            feeder.step(now=t0 + i * 0.1)
        yield prefix


def number(v) -> float | None:
    """A query value as the API's UnixTime would accept it, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if 0 <= f <= 4_102_444_800 else None


# /api/v1 only: the deprecated /api/... alias serves the same handlers (tests/test_api_v1.py checks it).
@schema.exclude(path_regex=r"^/api/(?!v1/)").exclude(path="/api/v1/live").parametrize()
@hypothesis.settings(max_examples=40, **SETTINGS)
def test_api_conforms_to_its_schema(case, populated):
    start, end = number((case.query or {}).get("start")), number((case.query or {}).get("end"))
    if start is not None and end is not None and start > end:
        # A reversed range is schema-valid (OpenAPI cannot relate two parameters) but meaningless:
        # the API rejects it with a clear 422 instead of answering an empty page.
        response = case.call()
        if response.status_code == 401:  # a negative case without the key: refused before the range
            assert (case.headers or {}).get("Authorization") != AUTH["Authorization"], response.text
            return
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        # Either our message, or FastAPI's list when another parameter is invalid as well.
        assert isinstance(detail, list) or "is after end" in detail, detail
        return
    case.call_and_validate()


@pytest.mark.e2e
@schema.include(path="/api/v1/live").parametrize()
@hypothesis.settings(max_examples=5, **SETTINGS)
def test_live_feed_conforms_to_its_schema(case, populated):
    # An endless stream: schemathesis reads it for a few seconds, then checks what came.
    case.call_and_validate(timeout=3)
