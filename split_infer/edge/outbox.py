"""The edge's bounded send buffer and per-camera flow control (no I/O here, so it is easy to test).

Encoded frames wait in one FIFO across cameras. When it is full the oldest frame is dropped and
counted: while the cloud is unreachable the edge keeps the newest `capacity` frames. Each camera
may have at most `credit` frames in flight, the credit its latest Ack granted (the ingest shrinks
it as the camera's queue fills); a camera at credit 0 sends one probe frame after `probe_s`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Item:
    camera: str
    seq: int
    frame: Any  # the FeatureFrame message
    info: dict = field(default_factory=dict)  # source index etc., for logs and tests
    retried: bool = False  # the ingest answered RETRY for it once


@dataclass
class CameraFlow:
    credit: int
    inflight: int = 0
    blocked_until: float = 0.0  # after RETRY / credit 0: no send before this (monotonic)


class Outbox:
    def __init__(self, capacity: int, window: int, probe_s: float = 0.25) -> None:
        self.capacity, self.window, self.probe_s = capacity, window, probe_s
        self.queue: deque[Item] = deque()
        self.inflight: dict[tuple[str, int], Item] = {}
        self.flows: dict[str, CameraFlow] = {}

    def __len__(self) -> int:
        return len(self.queue)

    def flow(self, camera: str) -> CameraFlow:
        f = self.flows.get(camera)
        if f is None:
            f = self.flows[camera] = CameraFlow(credit=self.window)
        return f

    @property
    def full(self) -> bool:
        return len(self.queue) >= self.capacity

    def push(self, item: Item) -> list[Item]:
        """Append; returns what had to be dropped to make room: the oldest frame and, for stateful
        codecs, the queued delta frames of its camera that depended on it (up to its next key frame)."""
        dropped: list[Item] = []
        if self.full:
            oldest = self.queue.popleft()
            dropped.append(oldest)
            for other in list(self.queue):
                if other.camera != oldest.camera:
                    continue
                if other.info.get("key", True):
                    break
                self.queue.remove(other)
                dropped.append(other)
        self.queue.append(item)
        return dropped

    def next_sendable(self, now: float | None = None) -> Item | None:
        """The oldest queued frame whose camera has room in its window (and the node-wide one)."""
        if len(self.inflight) >= self.window:
            return None
        now = time.monotonic() if now is None else now
        blocked: set[str] = set()
        for i, item in enumerate(self.queue):
            if item.camera in blocked:
                continue
            f = self.flow(item.camera)
            room = f.inflight < f.credit or (f.credit == 0 and f.inflight == 0)  # 0: one probe
            if room and now >= f.blocked_until:
                del self.queue[i]
                f.inflight += 1
                self.inflight[(item.camera, item.seq)] = item
                return item
            blocked.add(item.camera)  # keep each camera's frames in order
        return None

    def acked(self, camera: str, seq: int, credit: int) -> tuple[Item | None, list[Item]]:
        """An OK or REJECTED answer. Returns (the item, queued RETRY items it overtook).

        The ingest acknowledges an already-queued seq without queueing it again, so a frame that
        was answered RETRY and then overtaken by a later accepted frame of its camera will never
        be queued: it is removed here and the caller counts it as dropped.
        """
        item = self._settle(camera, seq, credit)
        overtaken = [it for it in self.queue if it.camera == camera and it.seq < seq and it.retried]
        for it in overtaken:
            self.queue.remove(it)
        return item, overtaken

    def retry(self, camera: str, seq: int, credit: int, backoff_s: float) -> Item | None:
        """A RETRY answer: the frame goes back in front of its camera's later frames."""
        item = self._settle(camera, seq, credit)
        if item is None:
            return None
        item.retried = True
        self.flow(camera).blocked_until = time.monotonic() + backoff_s
        self._requeue([item])
        return item

    def requeue_inflight(self) -> int:
        """The stream broke: every unanswered frame goes back to the queue, in order."""
        items = sorted(self.inflight.values(), key=lambda it: (it.camera, it.seq))
        self.inflight.clear()
        for f in self.flows.values():
            f.inflight = 0
            f.credit = max(f.credit, 1)
        self._requeue(items)
        return len(items)

    def _settle(self, camera: str, seq: int, credit: int) -> Item | None:
        item = self.inflight.pop((camera, seq), None)
        f = self.flow(camera)
        if item is not None:
            f.inflight -= 1
        f.credit = min(credit, self.window)
        if credit == 0:
            f.blocked_until = max(f.blocked_until, time.monotonic() + self.probe_s)
        return item

    def _requeue(self, items: list[Item]) -> None:
        """Put items back ahead of the later frames of their cameras (global order is by age)."""
        for item in sorted(items, key=lambda it: it.seq, reverse=True):
            for i, other in enumerate(self.queue):
                if other.camera == item.camera and other.seq > item.seq:
                    self.queue.insert(i, item)
                    break
            else:
                self._insert_by_age(item)

    def _insert_by_age(self, item: Item) -> None:
        ts = item.frame.capture_ts
        for i, other in enumerate(self.queue):
            if other.frame.capture_ts > ts:
                self.queue.insert(i, item)
                return
        self.queue.append(item)
