"""Redis for the tests: the shared server (one key prefix per test), and private servers that a
test may stop and restart under a running service.

A Redis that does not answer, or a missing redis-server binary, is a test failure with a clear
message, never a skip.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from redis.exceptions import RedisClusterException

from split_infer.apps.processes import free_port
from split_infer.keys import Keys
from split_infer.redisconn import connect as connect_any
from support.processes import Services, require_binary
from support.wait import wait_for

SHARED_REDIS = "redis://127.0.0.1:6379"
REDIS_URL = f"{SHARED_REDIS}/0"


def database_url(db: int) -> str:
    """The shared Redis, database number `db` (a test that flushes owns its database)."""
    return f"{SHARED_REDIS}/{db}"


def connect(url: str = REDIS_URL) -> redis.Redis:
    """A client of the Redis (or Redis Cluster: split_infer/redisconn.py) at `url`, which must answer now."""
    try:
        r = connect_any(url, socket_connect_timeout=2)
        r.ping()
    except (redis.exceptions.RedisError, RedisClusterException) as e:
        pytest.fail(f"Redis is not reachable at {url} ({e}); the tests need a real Redis 7")
    return r  # a RedisCluster offers the same commands


@contextlib.contextmanager
def isolated_prefix(r: redis.Redis, prefix: str | None = None) -> Iterator[str]:
    """A key prefix for this test (`Keys(prefix)`; default a fresh one); its keys in `r` are deleted afterwards."""
    prefix = prefix or f"test-{uuid.uuid4().hex[:10]}"
    try:
        yield prefix
    finally:
        try:
            for k in r.scan_iter(match=Keys(prefix).scan_pattern, count=1000):
                r.delete(k)
        except redis.exceptions.ConnectionError:
            pass  # a test that stopped its own Redis: nothing left to clean


class RedisServer:
    """A private redis-server on a free port, append-only by default so that a restart keeps its data."""

    def __init__(self, tmp: Path, appendonly: bool = True, password: str | None = None) -> None:
        """`password`: the server runs with `requirepass` (its URL carries it, percent-encoded)."""
        self.exe = require_binary("redis-server", "apt-get install -y redis-server")
        self.dir, self.port, self.appendonly, self.password = tmp, free_port(), appendonly, password
        self.services = Services(tmp)

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.services.spawn("redis-server", [
            self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            *(["--requirepass", self.password] if self.password else [])])
        wait_for(self._answers, 10, f"the private redis-server on port {self.port}")

    def _answers(self) -> bool:
        if "redis-server" in self.services.dead():  # e.g. its port was taken meanwhile: say why
            pytest.fail(f"the private redis-server exited:\n{self.services.log_tail('redis-server')}")
        try:
            return bool(redis.Redis(port=self.port, password=self.password).ping())
        except redis.exceptions.RedisError:
            return False

    def stop(self) -> None:
        self.services.terminate("redis-server")
