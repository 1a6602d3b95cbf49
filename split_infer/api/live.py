"""The live feed: detection records and events as they land in Redis, plus camera state and counts.

It follows the Redis streams (XREAD) rather than pub/sub, so a dashboard misses nothing between
two reads and a Redis restart only pauses the feed. Camera state and counts are polled once a
second and sent when they change. SSE event types: `detections`, `event`, `state`, `counts`,
`error` (Redis unreachable; the feed resumes by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi.sse import ServerSentEvent
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer import keys
from split_infer.api import store

log = logging.getLogger(__name__)

POLL_S = 1.0  # camera state and counts refresh; also the longest XREAD block


async def _tail_ids(r: Redis, stream_keys: list[str]) -> dict[str, str]:
    """The last id of each stream ("0-0" when empty), so the feed starts with what comes next."""
    async with r.pipeline(transaction=False) as p:
        for k in stream_keys:
            p.xrevrange(k, count=1)
        tails = await p.execute()
    return {k: (store.as_str(t[0][0]) if t else "0-0") for k, t in zip(stream_keys, tails)}


async def feed(r: Redis, stale_after_s: float, cameras: list[str] | None) -> AsyncIterator[ServerSentEvent]:
    positions: dict[str, str] = {}  # stream key -> last id delivered
    kind: dict[str, tuple[str, str]] = {}  # stream key -> ("detections" | "event", camera)
    last_state: str | None = None
    last_counts: dict[str, str] = {}
    next_poll = 0.0
    down = False
    while True:
        try:
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                known = await store.camera_ids(r)
                watch = [c for c in known if cameras is None or c in cameras]
                new = [k for c in watch for k in (keys.detections_stream(c), keys.events_stream(c))
                       if k not in positions]
                if new:
                    positions.update(await _tail_ids(r, new))
                    for c in watch:
                        kind[keys.detections_stream(c)] = ("detections", c)
                        kind[keys.events_stream(c)] = ("event", c)
                states = await store.camera_states(r, stale_after_s, only=watch)
                state_json = "[" + ",".join(s.model_dump_json() for s in states) + "]"
                if state_json != last_state:
                    last_state = state_json
                    yield ServerSentEvent(event="state", raw_data=state_json)
                for c in watch:
                    cc = await store.counts(r, c)
                    j = cc.model_dump_json(by_alias=True)
                    if last_counts.get(c) != j:
                        last_counts[c] = j
                        yield ServerSentEvent(event="counts", raw_data=j)
                if down:
                    down = False
                    log.info("live feed: Redis reachable again")
            if not positions:
                await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
                continue
            block_ms = max(1, int((next_poll - time.monotonic()) * 1000))
            replies = await r.xread(positions, count=100, block=block_ms)
            for stream, entries in replies or []:
                k = store.as_str(stream)
                what, cam = kind[k]
                for entry_id, fields in entries:
                    positions[k] = store.as_str(entry_id)
                    item = (store.parse_record if what == "detections" else store.parse_event)(cam, entry_id, fields)
                    if item is not None:
                        yield ServerSentEvent(event=what, id=positions[k], raw_data=item.model_dump_json())
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            if not down:
                down = True
                log.warning("live feed: Redis unreachable: %s", e)
            yield ServerSentEvent(event="error", data={"detail": f"Redis unreachable: {e}; retrying"})
            await asyncio.sleep(POLL_S)
            next_poll = 0.0
        except store.NotFound:
            next_poll = 0.0  # a camera vanished between two reads; look again
