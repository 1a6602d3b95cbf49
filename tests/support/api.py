"""`split-infer api` as its own process, as deployed, for the API and dashboard tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from split_infer.apps.processes import free_port
from support.processes import Services
from support.redisdb import REDIS_URL
from support.wait import wait_for


@contextlib.contextmanager
def api_server(prefix: str, redis_url: str = REDIS_URL, stale_after_s: float = 5.0, *, extra: tuple[str, ...] = (),
               log_level: str = "warning", workdir: Path | None = None) -> Iterator[str]:
    """Yields the API's base URL once /openapi.json answers; stops the process afterwards.
    `extra`: more command-line arguments; its log is `workdir/api.log` when `workdir` is given."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    services = Services(workdir)
    services.start("api", "api", "--redis-url", redis_url, "--prefix", prefix, "--listen", f"127.0.0.1:{port}",
                   "--stale-after", str(stale_after_s), "--log-level", log_level, *extra)

    def serving() -> bool:
        assert not services.exited("api"), f"split-infer api exited before serving:\n{services.log_tail('api')}"
        try:
            return httpx.get(base + "/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(serving, 30, "split-infer api to answer")
        yield base
    finally:
        services.stop_all()
