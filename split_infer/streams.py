"""Redis Streams as every service uses them, on one server or a Redis Cluster.

Consumer groups are created by whichever service needs one first. A group starts at id 0, so
entries appended before any reader existed are still read. Creating a group that exists is
answered BUSYGROUP, which is success here: another process was first.

Reading many camera streams at once, and publishing, differ on a cluster (below; docs/redis.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

Client = redis.Redis | RedisCluster  # what split_infer.redisconn.connect returns
AsyncClient = aioredis.Redis | aioredis.RedisCluster


def _unless_exists(error: ResponseError) -> None:
    if "BUSYGROUP" not in str(error):
        raise error


def create_group(r: Client, stream: str, group: str) -> None:
    try:
        r.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as e:
        _unless_exists(e)


async def create_group_async(r: AsyncClient, stream: str, group: str,
                             run: Callable[[Awaitable[Any]], Awaitable[Any]] | None = None) -> None:
    """The same on redis.asyncio; `run` wraps the command (e.g. the ingest's outage handling)."""
    command = r.xgroup_create(stream, group, id="0", mkstream=True)
    try:
        await (run(command) if run is not None else command)
    except ResponseError as e:
        _unless_exists(e)


# -- reading many streams, on one server or a cluster ----------------------------------------------
#
# One XREAD(GROUP) may name only keys of one hash slot on a Redis Cluster, and every camera has a
# slot of its own (split_infer/keys.py). So on a cluster each stream is read on its own, without
# blocking, all in one pipeline (redis-py sends one batch per node), and an empty round is repeated
# after a pause that doubles from POLL_FIRST_S up to POLL_MAX_S until `block_ms` has passed. Blocking
# per stream would need a connection per camera; the pause bounds the added latency when idle.
# Each read names its node (the slot map is the client's): redis-py would otherwise ask a server for
# the keys of every XREAD (COMMAND GETKEYS, its keys are "movable"), two round trips per stream.
# A slot that moved meanwhile answers MOVED, and redis-py retries that read the ordinary way.
POLL_FIRST_S = 0.005
POLL_MAX_S = 0.1

StreamReply = list[Any]  # [[stream, [[entry id, fields], ...]], ...] as redis-py returns XREAD's reply


def _time_left(end: float | None) -> float:
    return math.inf if end is None else end - time.monotonic()


def _deadline(block_ms: int | None) -> float | None:
    """None: wait until something comes (BLOCK 0); else the monotonic time to give up (None ms: now)."""
    return None if block_ms == 0 else time.monotonic() + (block_ms or 0) / 1000


def read_group(r: Client, group: str, consumer: str, streams: Mapping[str, str], count: int,
               block_ms: int | None) -> StreamReply:
    """XREADGROUP GROUP `group` `consumer` over `streams` ({stream: id}); `block_ms` as XREAD's BLOCK
    (None: do not wait). One command on a single server, a polled pipeline on a cluster."""
    if not streams:
        return []
    if not isinstance(r, RedisCluster):
        wanted: dict[Any, Any] = dict(streams)
        reply: Any = r.xreadgroup(group, consumer, wanted, count=count, block=block_ms)
        return reply or []
    end, pause = _deadline(block_ms), POLL_FIRST_S
    while True:
        pipe = r.pipeline(transaction=False)
        for stream, at in streams.items():
            pipe.execute_command("XREADGROUP", "GROUP", group, consumer, "COUNT", count, "STREAMS", stream, at,
                                 target_nodes=r.get_node_from_key(stream))
        got = [item for reply in pipe.execute() for item in reply or []]
        left = _time_left(end)
        if got or left <= 0:
            return got
        time.sleep(min(pause, left))
        pause = min(2 * pause, POLL_MAX_S)


async def read_streams_async(r: AsyncClient, streams: Mapping[str, str], count: int,
                             block_ms: int | None) -> StreamReply:
    """XREAD over `streams` ({stream: last id seen}) on redis.asyncio, as `read_group`."""
    if not streams:
        return []
    if not isinstance(r, aioredis.RedisCluster):
        positions: dict[Any, Any] = dict(streams)
        reply: Any = await r.xread(positions, count=count, block=block_ms)
        return reply or []
    end, pause = _deadline(block_ms), POLL_FIRST_S
    await r.initialize()  # the slot map, for get_node_from_key (a no-op once read)
    while True:
        async with r.pipeline(transaction=False) as pipe:
            for stream, at in streams.items():
                pipe.execute_command("XREAD", "COUNT", count, "STREAMS", stream, at,
                                     target_nodes=r.get_node_from_key(stream))
            replies = await pipe.execute()
        got = [item for reply in replies for item in reply or []]
        left = _time_left(end)
        if got or left <= 0:
            return got
        await asyncio.sleep(min(pause, left))
        pause = min(2 * pause, POLL_MAX_S)


def publish_all(r: Client, messages: list[tuple[str, str]]) -> None:
    """PUBLISH each (channel, message), in one round trip. A cluster broadcasts a PUBLISH from any
    node to every node, and redis-py's cluster pipeline refuses PUBLISH (it names no key): there the
    messages go through one node's own connection."""
    if not messages:
        return
    client = r.get_redis_connection(r.get_default_node()) if isinstance(r, RedisCluster) else r
    pipe = client.pipeline(transaction=False)
    for channel, message in messages:
        pipe.publish(channel, message)
    pipe.execute()


def total_length(r: Client, streams: Iterable[str]) -> int:
    """The summed XLEN of `streams` (e.g. every camera's dropped stream), in one pipeline."""
    pipe = r.pipeline(transaction=False)
    for stream in streams:
        pipe.xlen(stream)
    return sum(int(n) for n in pipe.execute())
