"""Consumer groups on Redis Streams, created by whichever service needs one first.

A group starts at id 0, so entries appended before any reader existed are still read. Creating a
group that exists is answered BUSYGROUP, which is success here: another process was first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError


def _unless_exists(error: ResponseError) -> None:
    if "BUSYGROUP" not in str(error):
        raise error


def create_group(r: redis.Redis, stream: str, group: str) -> None:
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        _unless_exists(e)


async def create_group_async(r: aioredis.Redis, stream: str, group: str,
                             run: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None) -> None:
    """The same on redis.asyncio; `run` wraps the command (e.g. the ingest's outage handling)."""
    command = r.xgroup_create(stream, group, id="0", mkstream=True)
    try:
        await (run(command) if run is not None else command)
    except ResponseError as e:
        _unless_exists(e)
