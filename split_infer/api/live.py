"""The live feed: detection records and events as they land in Redis, plus camera state and counts.

One `LiveHub` per API process follows Redis for every live connection at once: one XREAD over
all the cameras' streams, and one poll a second of camera state and counts, on a Redis client of
its own. Each connection is a bounded in-process queue fed by the hub, so 50 open dashboards
cost one Redis connection, never the pool that the other endpoints use.

It follows the Redis streams (XREAD) rather than pub/sub, so a connection misses nothing between
two reads and a Redis restart only pauses the feed. SSE event types: `detections`, `event`,
`state`, `counts`, `snapshot` (the frame a new snapshot shows), `replay`, and `error` (Redis
unreachable; the feed resumes by itself).

Ids and replay: `detections` and `event` carry the id `<kind>:<camera>:<stream id>`; a client that
reconnects with `Last-Event-ID` first gets what it missed, from the streams (split_infer/api/replay.py).

Bounds: at most `max_live` connections (`reserve` says no beyond: the route answers 503); a
connection is closed after `max_age_s` (EventSource reconnects by itself), and a client that does
not read (its queue of `queue_size` events is full) is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import ServerSentEvent
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from split_infer.api.replay import Cursor, event_id, replay, stream_order
from split_infer.api.store import NotFound, Store, as_str, detection_record, event
from split_infer.records.snapshot import SnapshotFrame
from split_infer.streams import read_streams_async

log = logging.getLogger(__name__)

POLL_S = 1.0  # camera state and counts refresh; also the longest XREAD block
REPLAY_WAIT_S = 5.0  # a resuming client waits this long for its replay, then goes on live only


class Client:
    """One live connection: the cameras it wants, its queue, and what it was sent last."""

    def __init__(self, cameras: list[str] | None, queue_size: int, resume: Cursor | None = None) -> None:
        self.cameras = set(cameras) if cameras else None
        self.queue: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(queue_size)
        self.last_state: str | None = None
        self.last_counts: dict[str, str] = {}
        self.last_snapshots: dict[str, str] = {}
        self.closed = False
        # Resuming after `resume` (Last-Event-ID): live entries wait until the hub has read the
        # missed ones into `backlog`, so they come in order.
        self.resume = resume
        self.backlog: list[ServerSentEvent] = []
        self.caught_up = asyncio.Event()
        if resume is None:
            self.caught_up.set()

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
        self.snapshots: dict[str, str] = {}  # camera -> the frame its latest snapshot shows (JSON)
        self._task: asyncio.Task[None] | None = None

    def reserve(self, cameras: list[str] | None, resume: Cursor | None = None) -> Client | None:
        """A place for one more connection, or None when `max_clients` are open."""
        if len(self.clients) >= self.max_clients:
            return None
        client = Client(cameras, self.queue_size, resume)
        self.clients.add(client)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="live-hub")
        return client

    async def stream(self, client: Client) -> AsyncIterator[ServerSentEvent]:
        """The events of `client` until its age limit, its queue overflows, or it disconnects."""
        try:
            try:
                await asyncio.wait_for(client.caught_up.wait(), REPLAY_WAIT_S)
            except TimeoutError:  # Redis is slow or down: no replay, the live feed still starts
                client.resume = None
                client.caught_up.set()
            for missed in client.backlog:
                yield missed
            client.backlog = []
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
            if (camera is None or client.wants(camera)) and client.caught_up.is_set():
                client.send(ev)

    async def _catch_up(self) -> None:
        """Read the missed entries of resuming clients, up to where the live feed now stands."""
        for client in list(self.clients):
            if client.resume is not None and not client.caught_up.is_set():
                client.backlog = await replay(self.store, client.resume, self.kind, self.positions, client.wants)
                client.resume = None
                client.caught_up.set()

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
        for c, shown in self.snapshots.items():
            if client.wants(c) and client.last_snapshots.get(c) != shown:
                client.last_snapshots[c] = shown
                out.append(ServerSentEvent(event="snapshot", raw_data=shown))
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
        # A new snapshot (camera, session, seq): the dashboard fetches it (GET .../snapshot.jpg).
        async with self.store.r.pipeline(transaction=False) as p:
            for c in cameras:
                p.hgetall(self.store.keys.snapshot_frame(c))
            shown = await p.execute()
        self.snapshots = {c: json.dumps({"camera": c, "session": f.session, "seq": f.seq})
                          for c, f in zip(cameras, map(SnapshotFrame.from_fields, shown), strict=True) if f}
        for client in list(self.clients):
            for ev in self._changes(client):
                client.send(ev)

    async def _read(self, block_ms: int) -> None:
        streams: dict[Any, Any] = self.positions
        # One XREAD on a single server; per stream, polled, on a cluster (split_infer/streams.py).
        replies = await read_streams_async(self.store.r, streams, 100, block_ms)
        # Sent in stream-id order across streams: what makes a Last-Event-ID replay complete (replay.py).
        batch = sorted(((stream_order(as_str(i)), as_str(stream), as_str(i), f)
                        for stream, entries in replies for i, f in entries), key=lambda x: x[0])
        for _, k, entry_id, fields in batch:
            what, cam = self.kind[k]
            parse = detection_record if what == "detections" else event
            self.positions[k] = entry_id
            item = parse(cam, entry_id, fields)
            if item is not None:
                self._broadcast(cam, ServerSentEvent(event=what, id=event_id(what, cam, entry_id),
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
                await self._catch_up()  # clients that came since the last poll
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
        # Nobody is connected: the next client starts at the streams' tails (and a resuming one
        # replays up to them), not at where this run stopped, which would send old entries as new.
        self.positions.clear()
        self.kind.clear()
