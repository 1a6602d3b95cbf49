"""The live feed: detection records and events as they land in Redis, plus camera state and counts.

One `LiveHub` per API process follows Redis for every live connection at once: one XREAD over
all the cameras' streams, and one poll a second of camera state and counts, on a Redis client of
its own. Each connection is a bounded in-process queue fed by the hub, so 50 open dashboards
cost one Redis connection, never the pool that the other endpoints use.

It follows the Redis streams (XREAD) rather than pub/sub, so a connection misses nothing between
two reads and a Redis restart only pauses the feed. SSE event types: `detections`, `event`,
`state`, `counts`, `error` (Redis unreachable; the feed resumes by itself).

Bounds: at most `max_live` connections (`reserve` says no beyond: the route answers 503); a
connection is closed after `max_age_s` (EventSource reconnects by itself), and a client that does
not read (its queue of `queue_size` events is full) is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import ServerSentEvent
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer.api.store import NotFound, Store, as_str, detection_record, event

log = logging.getLogger(__name__)

POLL_S = 1.0  # camera state and counts refresh; also the longest XREAD block


class Client:
    """One live connection: the cameras it wants, its queue, and what it was sent last."""

    def __init__(self, cameras: list[str] | None, queue_size: int) -> None:
        self.cameras = set(cameras) if cameras else None
        self.queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(queue_size)
        self.last_state: str | None = None
        self.last_counts: dict[str, str] = {}
        self.closed = False

    def wants(self, camera: str) -> bool:
        return self.cameras is None or camera in self.cameras

    def send(self, ev: ServerSentEvent) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(ev)
        except asyncio.QueueFull:  # not reading: close it rather than buffer without end
            self.closed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class LiveHub:
    def __init__(self, store: Store, stale_after_s: float, max_clients: int = 50, max_age_s: float = 3600.0,
                 queue_size: int = 256) -> None:
        self.store, self.stale_after_s = store, stale_after_s
        self.max_clients, self.max_age_s, self.queue_size = max_clients, max_age_s, queue_size
        # Reserved and connected clients; a reservation whose stream never starts is garbage,
        # and leaves this set by itself.
        self.clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self.positions: dict[str, str] = {}  # stream key -> last id seen
        self.kind: dict[str, tuple[str, str]] = {}  # stream key -> ("detections" | "event", camera)
        self.states: dict[str, str] = {}  # camera -> its latest state (JSON)
        self.counts: dict[str, str] = {}  # camera -> its latest counts (JSON)
        self._task: asyncio.Task[None] | None = None

    def reserve(self, cameras: list[str] | None) -> Client | None:
        """A place for one more connection, or None when `max_clients` are open."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(cameras, self.queue_size)
        self.clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="live-hub")
        return client

    async def stream(self, client: Client) -> AsyncIterator[ServerSentEvent]:
        """The events of `client` until its age limit, its queue overflows, or it disconnects."""
        try:
            if self.states:  # what the hub knows already; the next poll sends what changed
                for change in self._changes(client):
                    yield change
            deadline = time.monotonic() + self.max_age_s
            while True:
                try:
                    left = max(0.0, deadline - time.monotonic())
                    ev: ServerSentEvent | None = await asyncio.wait_for(client.queue.get(), left)
                except TimeoutError:
                    return  # age limit: EventSource reconnects by itself
                if ev is None:
                    yield ServerSentEvent(event="error", data={"detail": "client too slow: closing the feed"})
                    return
                yield ev
        finally:
            client.closed = True
            self.clients.discard(client)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # -- the one follower ------------------------------------------------------------------------

    def _broadcast(self, camera: str | None, ev: ServerSentEvent) -> None:
        for client in list(self.clients):
            if camera is None or client.wants(camera):
                client.send(ev)

    def _changes(self, client: Client) -> list[ServerSentEvent]:
        """State and counts events `client` has not seen yet."""
        out = []
        state_json = "[" + ",".join(s for c, s in self.states.items() if client.wants(c)) + "]"
        if state_json != client.last_state:
            client.last_state = state_json
            out.append(ServerSentEvent(event="state", raw_data=state_json))
        for c, counts in self.counts.items():
            if client.wants(c) and client.last_counts.get(c) != counts:
                client.last_counts[c] = counts
                out.append(ServerSentEvent(event="counts", raw_data=counts))
        return out

    async def _follow(self, cameras: list[str]) -> None:
        """Start following new cameras' streams at their tail: the feed sends what comes next."""
        keys = self.store.keys
        streams = {keys.detections_stream(c): ("detections", c) for c in cameras}
        streams |= {keys.events_stream(c): ("event", c) for c in cameras}
        new = [k for k in streams if k not in self.positions]
        if not new:
            return
        async with self.store.r.pipeline(transaction=False) as p:
            for k in new:
                p.xrevrange(k, count=1)
            tails = await p.execute()
        self.positions |= {k: (as_str(t[0][0]) if t else "0-0") for k, t in zip(new, tails, strict=True)}
        self.kind |= streams

    async def _poll(self) -> None:
        cameras = await self.store.camera_ids()
        await self._follow(cameras)
        states = await self.store.camera_states(self.stale_after_s, only=cameras)
        self.states = {s.id: s.model_dump_json() for s in states}
        self.counts = {c: (await self.store.counts(c)).model_dump_json(by_alias=True) for c in cameras}
        for client in list(self.clients):
            for ev in self._changes(client):
                client.send(ev)

    async def _read(self, block_ms: int) -> None:
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
                    self._broadcast(cam, ServerSentEvent(event=what, id=self.positions[k],
                                                         raw_data=item.model_dump_json()))

    async def _run(self) -> None:
        """Follow Redis while any client is connected."""
        next_poll = 0.0
        down = False
        while len(self.clients):
            try:
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + POLL_S
                    await self._poll()
                    if down:
                        down = False
                        log.info("live feed: Redis reachable again")
                if not self.positions:
                    await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
                    continue
                await self._read(max(1, int((next_poll - time.monotonic()) * 1000)))
            except (RedisConnectionError, RedisTimeoutError, OSError) as e:
                if not down:
                    down = True
                    log.warning("live feed: Redis unreachable: %s", e)
                self._broadcast(None, ServerSentEvent(event="error",
                                                      data={"detail": f"Redis unreachable: {e}; retrying"}))
                await asyncio.sleep(POLL_S)
                next_poll = 0.0
            except NotFound:
                next_poll = 0.0  # a camera vanished between two reads; look again
