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
from typing import Any

from fastapi.sse import ServerSentEvent
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer.api.store import NotFound, Store, as_str, detection_record, event

log = logging.getLogger(__name__)

POLL_S = 1.0  # camera state and counts refresh; also the longest XREAD block


class _Follower:
    """What one feed follows (stream -> last id delivered) and what it sent last."""

    def __init__(self, store: Store, stale_after_s: float, cameras: list[str] | None) -> None:
        self.store, self.stale_after_s, self.cameras = store, stale_after_s, cameras
        self.positions: dict[str, str] = {}
        self.kind: dict[str, tuple[str, str]] = {}  # stream key -> ("detections" | "event", camera)
        self.last_state: str | None = None
        self.last_counts: dict[str, str] = {}

    async def _follow(self, watch: list[str]) -> None:
        """Start following new cameras' streams at their tail: the feed sends what comes next."""
        keys = self.store.keys
        streams = {keys.detections_stream(c): ("detections", c) for c in watch}
        streams |= {keys.events_stream(c): ("event", c) for c in watch}
        new = [k for k in streams if k not in self.positions]
        if not new:
            return
        async with self.store.r.pipeline(transaction=False) as p:
            for k in new:
                p.xrevrange(k, count=1)
            tails = await p.execute()
        self.positions |= {k: (as_str(t[0][0]) if t else "0-0") for k, t in zip(new, tails, strict=True)}
        self.kind |= streams

    async def poll(self) -> AsyncIterator[ServerSentEvent]:
        """Cameras to follow; their state and counts when they changed."""
        watch = [c for c in await self.store.camera_ids() if self.cameras is None or c in self.cameras]
        await self._follow(watch)
        states = await self.store.camera_states(self.stale_after_s, only=watch)
        state_json = "[" + ",".join(s.model_dump_json() for s in states) + "]"
        if state_json != self.last_state:
            self.last_state = state_json
            yield ServerSentEvent(event="state", raw_data=state_json)
        for c in watch:
            counts = (await self.store.counts(c)).model_dump_json(by_alias=True)
            if self.last_counts.get(c) != counts:
                self.last_counts[c] = counts
                yield ServerSentEvent(event="counts", raw_data=counts)

    async def read(self, block_ms: int) -> AsyncIterator[ServerSentEvent]:
        """New detection records and events (XREAD on every stream followed, up to block_ms)."""
        streams: dict[Any, Any] = self.positions
        replies: Any = await self.store.r.xread(streams, count=100, block=block_ms)
        for stream, entries in replies or []:
            k = as_str(stream)
            what, cam = self.kind[k]
            parse = detection_record if what == "detections" else event
            for entry_id, fields in entries:
                self.positions[k] = as_str(entry_id)
                item = parse(cam, entry_id, fields)
                if item is not None:
                    yield ServerSentEvent(event=what, id=self.positions[k], raw_data=item.model_dump_json())


async def feed(store: Store, stale_after_s: float, cameras: list[str] | None) -> AsyncIterator[ServerSentEvent]:
    follower = _Follower(store, stale_after_s, cameras)
    next_poll = 0.0
    down = False
    while True:
        try:
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + POLL_S
                async for ev in follower.poll():
                    yield ev
                if down:
                    down = False
                    log.info("live feed: Redis reachable again")
            if not follower.positions:
                await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
                continue
            async for ev in follower.read(max(1, int((next_poll - time.monotonic()) * 1000))):
                yield ev
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            if not down:
                down = True
                log.warning("live feed: Redis unreachable: %s", e)
            yield ServerSentEvent(event="error", data={"detail": f"Redis unreachable: {e}; retrying"})
            await asyncio.sleep(POLL_S)
            next_poll = 0.0
        except NotFound:
            next_poll = 0.0  # a camera vanished between two reads; look again
