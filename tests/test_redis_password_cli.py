"""`split-infer api` and `split-infer analytics` with `--redis-url` on the command line still take
the Redis password from $SPLIT_INFER_REDIS_PASSWORD or `redis_password_file` (docs/security.md),
against a real redis-server running with `requirepass`."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest
import redis
import yaml

from split_infer.apps.processes import free_port
from split_infer.config import REDIS_PASSWORD_ENV
from split_infer.keys import Keys
from support.analytics import feed, street_records
from support.processes import Services
from support.redisdb import RedisServer
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

PASSWORD = "pw-R3dis@cli/9"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False, password=PASSWORD)
    srv.start()
    yield srv
    srv.stop()


def _health(base: str) -> int | None:
    try:
        return httpx.get(base + "/readyz", timeout=3).status_code  # 200 once Redis answers, with the password
    except httpx.HTTPError:
        return None


def test_api_with_redis_url_takes_the_password_from_env_or_file(server, tmp_path, monkeypatch):
    bare = f"redis://127.0.0.1:{server.port}/0"  # no password in the URL on the command line
    secret_file = tmp_path / "redis_password"
    secret_file.write_text(PASSWORD + "\n")
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump({"redis_password_file": str(secret_file)}))
    services = Services(tmp_path)
    key_digest = hashlib.sha256(b"some-api-key-123").hexdigest()
    runs = {"none": ({}, ()), "env": ({REDIS_PASSWORD_ENV: PASSWORD}, ()),
            # a config's password file, with --api-key-sha256 (which re-validates the config) too
            "file": ({}, ("--config", str(config), "--api-key-sha256", key_digest))}
    monkeypatch.delenv(REDIS_PASSWORD_ENV, raising=False)
    try:
        got = {}
        for name, (env, extra) in runs.items():
            port = free_port()
            services.start(name, "api", "--redis-url", bare, "--listen", f"127.0.0.1:{port}", *extra, env=env)
            base = f"http://127.0.0.1:{port}"
            got[name] = wait_for(lambda base=base, name=name: _health(base) or (services.exited(name) and -1),
                                 60, f"the API ({name}) to answer /readyz")
        assert got == {"none": 503, "env": 200, "file": 200}, {n: services.log(n)[-2000:] for n in runs}
        for name in runs:
            assert PASSWORD not in services.log(name)
    finally:
        services.kill_all()


def test_analytics_with_redis_url_takes_the_password_from_env(server, tmp_path):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    bare = f"redis://127.0.0.1:{server.port}/0"
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"id": "street", "url": "x"}]}))
    r = redis.Redis.from_url(server.url)
    feed(r, keys, street_records()[:30])
    services = Services(tmp_path)
    try:
        services.start("analytics", "analytics", "--config", str(config), "--redis-url", bare,
                       "--consumer", "a1", "--reorder-wait", "0.1",
                       env={REDIS_PASSWORD_ENV: PASSWORD, "SPLIT_INFER_PREFIX": prefix})
        wait_for(lambda: r.hget(keys.counts("street"), "seq") == b"29" or services.exited("analytics"), 90,
                 "analytics to count the frames through the password-protected Redis")
        log = services.log("analytics")
        assert r.hget(keys.counts("street"), "seq") == b"29", log[-3000:]
        assert "AuthenticationError" not in log and PASSWORD not in log
    finally:
        services.kill_all()
