"""Shared fixtures' plumbing for the API tests: a real Redis with a key prefix of its own."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from split_infer import keys

ROOT = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("SPLIT_INFER_TEST_REDIS", "redis://127.0.0.1:6379/0")


def redis_client(url: str = REDIS_URL) -> redis.Redis:
    r = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.exceptions.ConnectionError as e:
        pytest.fail(f"Redis is required at {url} for the API tests and is not reachable: {e}")
    return r


@contextlib.contextmanager
def isolated_prefix(r: redis.Redis) -> Iterator[str]:
    """A fresh key prefix for this test (keys.set_prefix), removed with its keys afterwards."""
    old = keys.PREFIX
    prefix = f"test-api-{uuid.uuid4().hex[:10]}"
    keys.set_prefix(prefix)
    try:
        yield prefix
    finally:
        keys.set_prefix(old)
        try:
            for k in r.scan_iter(match=f"{prefix}:*", count=1000):
                r.delete(k)
        except redis.exceptions.ConnectionError:
            pass  # a test that stopped its own Redis: nothing left to clean


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def api_server(prefix: str, redis_url: str = REDIS_URL, stale_after_s: float = 5.0) -> Iterator[str]:
    """`split-infer api` in a subprocess, as deployed; yields its base URL once /openapi.json answers."""
    port = free_port()
    log = open(ROOT / ".pytest_cache" / f"api-{port}.log", "w") if (ROOT / ".pytest_cache").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "split_infer", "api", "--redis-url", redis_url, "--prefix", prefix,
         "--listen", f"127.0.0.1:{port}", "--stale-after", str(stale_after_s), "--log-level", "warning"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"split-infer api exited with {proc.returncode} before serving")
            try:
                if httpx.get(base + "/openapi.json", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("split-infer api did not answer within 30 s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log is not subprocess.DEVNULL:
            log.close()
