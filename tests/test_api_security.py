"""The read API's defences, against `split-infer api` running as its own process over real Redis:
bearer API keys (401/200), the per-key rate limit (429), live-feed tickets, the bound on live
connections (the API and /healthz keep answering), nosniff on every response, snapshots served
only when they are JPEGs, and no key or ticket in the logs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time

import httpx
import pytest
import yaml

from split_infer.api.auth import ApiAuth, new_key
from split_infer.config import ApiKey
from support.api import api_server
from support.feeder import Feeder, thumbnail, video_frames
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

KEY = "test-key-Zq8v3nW1xR5tY7uI9oP2aS4dF6gH"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {KEY}"}


def api_config(tmp_path, **settings) -> str:
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


@pytest.mark.unit
def test_token_bucket_and_tickets():
    key = ApiKey(name="dash", sha256=DIGEST)
    auth = ApiAuth([key], rate_per_s=2.0, burst=3)
    assert auth.check_key(KEY) == key and auth.check_key(KEY + "x") is None
    assert [auth.take("dash", now=10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert auth.take("dash", now=10.0) == pytest.approx(0.5)  # empty: one token every 0.5 s
    assert auth.take("dash", now=10.5) == 0.0
    ticket = auth.issue_ticket(key, now=1000.0)
    assert auth.check_ticket(ticket, now=1030.0) == key
    assert auth.check_ticket(ticket, now=1061.0) is None  # expired
    assert auth.check_ticket(ticket.replace("dash", "evil"), now=1030.0) is None  # forged name
    assert auth.check_ticket(ticket[:-1] + ("0" if ticket[-1] != "0" else "1"), now=1030.0) is None
    assert ApiAuth([]).check_ticket(ticket) is None  # another process's ticket
    assert auth.check_ticket("dash.1030.é") is None and auth.check_ticket("dash.١٠٣٠." + ticket[-32:]) is None
    k, d = new_key()
    assert hashlib.sha256(k.encode()).hexdigest() == d and len(k) >= 40


def test_keys_rate_limit_and_tickets_and_no_secret_in_logs(r, keys, prefix, tmp_path):
    Feeder(r, keys, n_cameras=1, dead=()).step()
    config = api_config(tmp_path, api_keys=[{"name": "dashboard", "sha256": DIGEST}], rate_per_s=2, rate_burst=8)
    with api_server(prefix, extra=("--config", config), log_level="info", workdir=tmp_path) as base, \
            httpx.Client(base_url=base, timeout=10) as api:
        # Open: health and metrics. Closed without a key: every /api/... endpoint.
        assert api.get("/healthz").status_code == 200 and api.get("/metrics").status_code == 200
        for path in ("/api/cameras", "/api/cameras/cam-1", "/api/counts", "/api/events", "/api/live",
                     "/api/cameras/cam-1/snapshot.jpg", "/api/cameras/cam-1/detections/latest"):
            resp = api.get(path)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.headers["www-authenticate"] == "Bearer" and "API key" in resp.json()["detail"]
        assert api.post("/api/live/ticket").status_code == 401
        assert api.get("/api/cameras", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert api.get("/api/cameras", params={"ticket": "dashboard.9999999999.00"}).status_code == 401
        # With the key: 200.
        assert api.get("/api/cameras", headers=AUTH).json()["cameras"][0]["id"] == "cam-1"
        # EventSource's way in: a ticket, in the query string.
        ticket = api.post("/api/live/ticket", headers=AUTH).json()["ticket"]
        with api.stream("GET", "/api/live", params={"ticket": ticket}, timeout=httpx.Timeout(10, read=5)) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("event: state"):
                    break
        assert api.get("/api/cameras", params={"ticket": ticket}).status_code == 401  # only for the live feed
        # The bucket (8, refilled at 2/s) runs dry: 429 with Retry-After.
        codes = [api.get("/api/cameras", headers=AUTH) for _ in range(20)]
        limited = [c for c in codes if c.status_code == 429]
        assert limited and all(c.status_code in (200, 429) for c in codes)
        assert int(limited[0].headers["retry-after"]) >= 1 and "rate limit" in limited[0].json()["detail"]
        assert api.get("/healthz").status_code == 200  # not rate limited
        time.sleep(1.5)
        assert api.get("/api/cameras", headers=AUTH).status_code == 200  # refilled
    log = (tmp_path / "api.log").read_text()
    assert "NO API KEYS CONFIGURED" not in log and "GET /api/live?ticket=***" in log  # access log, redacted
    for secret in (KEY, ticket, ticket.rsplit(".", 1)[1]):
        assert secret not in log, f"{secret!r} in the API log"


def test_without_keys_the_api_is_open_and_says_so_loudly(r, keys, prefix, tmp_path):
    with api_server(prefix, workdir=tmp_path) as base:
        assert httpx.get(base + "/api/cameras").status_code == 200
    assert "NO API KEYS CONFIGURED" in (tmp_path / "api.log").read_text()


def test_bad_key_digest_in_the_config_is_a_clear_error(tmp_path):
    from split_infer.api.app import main

    config = api_config(tmp_path, api_keys=[{"name": "x", "sha256": KEY}])  # the key itself, not a digest
    assert main(["--config", config]) == 2


def test_live_connections_are_bounded_and_the_api_still_answers(r, keys, prefix, tmp_path):
    """Regression: 100 open /api/live connections made every endpoint answer 503."""
    Feeder(r, keys, n_cameras=2, dead=()).step()
    bound, opened = 20, 60
    with api_server(prefix, extra=("--max-live", str(bound)), workdir=tmp_path) as base, \
            httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=30),
                         limits=httpx.Limits(max_connections=opened + 10)) as api, contextlib.ExitStack() as streams:
        codes = []
        for _ in range(opened):
            resp = streams.enter_context(api.stream("GET", "/api/live"))
            codes.append(resp.status_code)
            if resp.status_code == 503:
                assert resp.headers["retry-after"] == "5" and "live connections" in json.loads(resp.read())["detail"]
        assert codes.count(200) == bound and codes.count(503) == opened - bound, codes
        for _ in range(5):
            assert api.get("/api/cameras").status_code == 200
            assert api.get("/readyz").json()["redis"] == "ok"
            assert api.get("/api/cameras/cam-1/counts").status_code == 200
    # Closed connections give their places back.
    with api_server(prefix, extra=("--max-live", "2"), workdir=None) as base, \
            httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=5)) as api:
        def one_feed() -> bool:
            with api.stream("GET", "/api/live") as resp:
                if resp.status_code == 503:
                    return False  # the server has not noticed an earlier disconnect yet
                assert resp.status_code == 200
                next(resp.iter_lines())
                return True

        for i in range(5):  # more than the bound, one after the other
            wait_for(one_feed, 10, f"live connection {i + 1} of 5 to open")


def test_nosniff_everywhere_and_only_jpeg_snapshots(r, keys, prefix, tmp_path):
    """Regression: a snapshot holding HTML was served as image/jpeg without nosniff."""
    r.sadd(keys.cameras, "cam-1", "cam-2")
    r.set(keys.snapshot("cam-1"), b"<html><script>alert(document.cookie)</script></html>")
    jpeg = thumbnail(video_frames(1)[0])
    r.set(keys.snapshot("cam-2"), jpeg)
    with api_server(prefix, workdir=tmp_path) as base, httpx.Client(base_url=base, timeout=10) as api:
        html = api.get("/api/cameras/cam-1/snapshot.jpg")
        assert html.status_code == 404 and "not a JPEG" in html.json()["detail"] and b"<script>" not in html.content
        good = api.get("/api/cameras/cam-2/snapshot.jpg")
        assert good.status_code == 200 and good.content == jpeg
        responses = [html, good] + [api.get(p) for p in ("/healthz", "/metrics", "/openapi.json", "/static/index.html",
                                                         "/static/dashboard.js", "/api/cameras", "/api/nope")]
        for resp in responses:
            assert resp.headers["x-content-type-options"] == "nosniff", resp.url
        assert "frame-ancestors 'none'" in good.headers["content-security-policy"]
        # No CORS unless configured: a foreign origin gets no Access-Control-Allow-Origin.
        pre = api.options("/api/cameras", headers={"Origin": "http://evil.example",
                                                   "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in pre.headers


def test_cors_only_for_configured_origins(r, keys, prefix, tmp_path):
    with api_server(prefix, extra=("--cors-origin", "https://ops.city.example"), workdir=tmp_path) as base:
        ok = httpx.get(base + "/api/cameras", headers={"Origin": "https://ops.city.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ops.city.example"
        evil = httpx.get(base + "/api/cameras", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in evil.headers
