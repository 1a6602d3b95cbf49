"""No secret reaches a log: the real pipeline (ingest, worker, edge, analytics, API) runs at DEBUG
with secrets planted everywhere they can be configured, then every log and every file the run
wrote is searched for them.

Planted: the Redis password (a private redis-server with `requirepass`, password in the Redis
URL, holding `@` and `/`), the edge token (environment), a camera's `user:password@` (an HTTP
camera that serves frames, password with `@`), a `?token=` of a camera that is down (so the
capture warnings name its URL again and again), and the read API's key.
"""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import httpx
import pytest

from split_infer.apps.processes import free_port
from split_infer.config import EDGE_TOKEN_ENV
from split_infer.keys import Keys
from support.media import HttpFeed, clip
from support.pipeline import Pipeline
from support.redisdb import RedisServer, connect
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

REDIS_PASSWORD = "r3dis-P@ss/w0rd"
EDGE_TOKEN = "edge-T0ken-5f1c9a"
CAMERA_PASSWORD = "s3cr@t-cam-PW"
QUERY_TOKEN = "qtok-77a1b2c3"
API_KEY = "api-Key-0d9e8f7a6b"


def forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret)}


def test_no_planted_secret_in_any_log(tmp_path, monkeypatch):
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")  # the children inherit it: every logger at its chattiest
    monkeypatch.setenv(EDGE_TOKEN_ENV, EDGE_TOKEN)
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = RedisServer(redis_dir, appendonly=False, password=REDIS_PASSWORD)
    server.start()
    url = server.url.replace("redis://:", "redis://default:")  # the ACL user too
    assert quote(REDIS_PASSWORD, safe="") in url
    video = clip(tmp_path, 24)
    feed = HttpFeed(video, realtime=True, loop=True).start()
    cameras = [
        {"id": "feed", "url": feed.url.replace("http://", f"http://admin:{quote(CAMERA_PASSWORD, safe='')}@")},
        {"id": "down", "url": f"http://viewer:{quote(CAMERA_PASSWORD, safe='')}@127.0.0.1:{free_port()}"
                              f"/video.cgi?user=viewer&token={QUERY_TOKEN}"},
    ]
    token = {"name": "edge-1", "sha256": hashlib.sha256(EDGE_TOKEN.encode()).hexdigest(), "cameras": ["*"]}
    pipe = Pipeline(tmp_path, db=11, cameras=cameras, cloud_extra={"redis_url": url, "tokens": [token]})
    api_port = free_port()
    try:
        pipe.start_ingest()
        pipe.start_worker("w1")
        pipe.wait_ingest()
        pipe.wait_worker("w1")
        pipe.services.start("analytics", "analytics", "--config", str(pipe.cloud_yaml))
        pipe.services.start("api", "api", "--redis-url", url, "--listen", f"127.0.0.1:{api_port}",
                            "--api-key-sha256", hashlib.sha256(API_KEY.encode()).hexdigest())
        pipe.start_edge()
        private = connect(url)
        keys = Keys.from_env()
        wait_for(lambda: private.xlen(keys.detections_stream("feed")) >= 5 or pipe.services.exited("edge"), 180,
                 "detections of the HTTP camera (through the password-protected Redis)")
        assert not pipe.services.exited("edge"), pipe.log("edge")[-3000:]
        wait_for(lambda: "cannot open" in pipe.log("edge"), 60, "the capture warnings of the camera that is down")
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: _answers(base + "/healthz"), 60, "the API")
        auth = {"Authorization": f"Bearer {API_KEY}"}
        assert httpx.get(base + "/api/cameras", headers=auth, timeout=10).status_code == 200
        ticket = httpx.post(base + "/api/live/ticket", headers=auth, timeout=10).json()["ticket"]
        with httpx.stream("GET", base + "/api/live", params={"ticket": ticket}, timeout=10) as resp:
            assert resp.status_code == 200
        assert httpx.get(base + "/api/cameras", headers={"Authorization": "Bearer x" + API_KEY}).status_code == 401
        wait_for(lambda: "analytics" in pipe.log("analytics"), 60, "analytics to log")
    finally:
        pipe.stop()
        feed.stop()
        server.stop()
    written = {p: p.read_text(errors="replace") for p in tmp_path.rglob("*")
               if p.is_file() and p.suffix in (".log", ".json", ".jsonl") and p.stat().st_size < 50 << 20}
    logs = {p.name: text for p, text in written.items() if p.suffix == ".log"}
    assert {"ingest.log", "w1.log", "edge.log", "analytics.log", "api.log"} <= set(logs), sorted(logs)
    assert "redis://***@127.0.0.1" in logs["ingest.log"] + logs["w1.log"]  # the URL is logged, masked
    assert "http://***@127.0.0.1" in logs["edge.log"]
    secrets = set().union(*map(forms, (REDIS_PASSWORD, EDGE_TOKEN, CAMERA_PASSWORD, QUERY_TOKEN, API_KEY, ticket)))
    leaks = [f"{p.relative_to(tmp_path)}: {s!r}" for p, text in written.items() for s in secrets if s in text]
    assert not leaks, "secrets in the logs:\n" + "\n".join(leaks)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
