"""The batching interface: what the cloud worker and every policy agree on.

    from split_infer.batching import QueuedFrameView, QueueView, make_policy

    policy = make_policy("adaptive", slo_ms=200, max_batch=16, cost=CostModel.load("cost.json"))
    view = QueueView(queues={"cam0": [QueuedFrameView(...), ...], ...}, arrived_total=n, closing=False)
    d = policy.next_batch(view, now)            # now: seconds, the clock of the frames' timestamps
    for frame, reason in d.shed:                # drop (ack) these, count them by reason
        ...
    if d.take:                                  # run the head on these frames, as one batch
        ...
        policy.on_batch_done(len(d.take), head_ms, now_after)
    else:                                       # nothing to run: call again at d.wait_until,
        ...                                     # or at the next arrival when it is None
    policy.metrics.batch_size, policy.metrics.queue_delay_s, policy.metrics.shed   # -> Prometheus

- `QueuedFrameView`: what a policy knows of one queued frame: camera, capture_ts (edge clock,
  already mapped onto the worker's clock), arrival_ts (when the cloud queued it) and an opaque
  `key` the worker uses to find the frame itself.
- `QueueView`: the frames waiting, per camera, each camera's in arrival order (oldest first; a
  per-camera Redis stream is exactly that). `arrived_total` counts every frame ever queued (the
  policies estimate the arrival rate from it). `closing=True` tells the policy no more frames
  will come (shutdown drain, end of a replayed trace): it must then take what is left.
- `Decision`: `take` (the batch, in order; empty = run nothing now), `shed` ((frame, reason)
  pairs to drop now), `wait_until` (when `take` is empty: when to ask again; None = at the next
  arrival), `reason` (set when the choice changed; also logged).
- A policy never removes frames itself; the caller removes `take` and `shed` from its queue.
  Every frame of the view ends up in exactly one batch or one shed entry, over successive calls.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

# Shed reasons (counted in PolicyMetrics.shed and by the worker).
SHED_DEADLINE = "deadline"  # adaptive: cannot complete within the objective any more
SHED_TIMEOUT = "queue_timeout"  # triton queue policy: waited longer than its timeout

Overload = Literal["shed", "late"]


class QueuedFrameView:
    """A policy's view of one queued frame. Compared by identity (two frames are never equal)."""

    __slots__ = ("camera", "capture_ts", "arrival_ts", "key")

    def __init__(self, camera: str, capture_ts: float, arrival_ts: float, key: Any = None) -> None:
        self.camera, self.capture_ts, self.arrival_ts = camera, capture_ts, arrival_ts
        self.key: Any = key  # opaque to the policy: whatever the caller finds its frame by

    def __repr__(self) -> str:
        return (f"QueuedFrameView({self.camera!r}, capture={self.capture_ts:.4f}, arrival={self.arrival_ts:.4f}, "
                f"key={self.key!r})")


Queues = Mapping[str, Sequence[QueuedFrameView]]  # per camera, arrival order (oldest first)


def fifo(queues: Queues, limit: int | None = None) -> list[QueuedFrameView]:
    """The oldest `limit` frames across cameras, in arrival order (all when None)."""
    merged = heapq.merge(*queues.values(), key=lambda f: f.arrival_ts)
    return list(itertools.islice(merged, limit))


@dataclass
class QueueView:
    queues: Queues
    arrived_total: int = 0  # frames ever queued, monotonic (for arrival-rate estimates)
    closing: bool = False  # no more arrivals: take what is left

    @classmethod
    def of(cls, frames: Iterable[QueuedFrameView], arrived_total: int | None = None,
           closing: bool = False) -> QueueView:
        """Build a view from frames in any order (grouped per camera, sorted by arrival)."""
        per: dict[str, list[QueuedFrameView]] = {}
        for f in frames:
            per.setdefault(f.camera, []).append(f)
        for fs in per.values():
            fs.sort(key=lambda f: (f.arrival_ts, f.capture_ts))
        n = sum(len(v) for v in per.values())
        return cls(per, n if arrived_total is None else arrived_total, closing)

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def fifo(self, limit: int | None = None) -> list[QueuedFrameView]:
        """The oldest `limit` frames across cameras, in arrival order (all when None)."""
        return fifo(self.queues, limit)


@dataclass
class Decision:
    take: list[QueuedFrameView] = field(default_factory=list)
    shed: list[tuple[QueuedFrameView, str]] = field(default_factory=list)
    wait_until: float | None = None
    reason: str = ""

    @property
    def batch_size(self) -> int:
        return len(self.take)


@dataclass
class PolicyMetrics:
    """What the worker exports: the last batch's size and how long its oldest frame was queued."""

    batch_size: int = 0  # frames in the last batch (Prometheus batch_size)
    queue_delay_s: float = 0.0  # last batch: longest wait of one of its frames in the cloud queue
    frame_age_s: float = 0.0  # last batch: age of its oldest frame since capture, at dispatch
    batches: int = 0
    frames: int = 0
    shed: Counter[str] = field(default_factory=Counter)  # reason -> frames shed


class BatchPolicy(Protocol):
    name: str
    metrics: PolicyMetrics

    def next_batch(self, queue: QueueView, now: float) -> Decision: ...

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None: ...


class PolicyError(RuntimeError):
    """A policy broke its contract (e.g. it waits forever while frames are queued)."""


class PolicyBase:
    """Common bookkeeping: metrics, contract checks. Subclasses implement `_decide`."""

    name = "base"

    def __init__(self) -> None:
        self.metrics = PolicyMetrics()

    def _decide(self, queue: QueueView, now: float) -> Decision:
        raise NotImplementedError

    def next_batch(self, queue: QueueView, now: float) -> Decision:
        d = self._decide(queue, now)
        if d.take:
            m = self.metrics
            m.batch_size = len(d.take)
            m.queue_delay_s = max(0.0, now - min(f.arrival_ts for f in d.take))
            m.frame_age_s = max(0.0, now - min(f.capture_ts for f in d.take))
            m.batches += 1
            m.frames += len(d.take)
        for _, reason in d.shed:
            self.metrics.shed[reason] += 1
        if queue.closing and not d.take and not d.shed and queue.depth:
            raise PolicyError(f"{self.name}: queue is closing with {queue.depth} frame(s) left but nothing taken")
        return d

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None:
        pass


def split_timed_out(queues: Queues, limit_ts: float, ts: str) -> tuple[list[QueuedFrameView], Queues]:
    """Split each camera queue at the first frame whose `ts` >= limit_ts (queues are ordered)."""
    old: list[QueuedFrameView] = []
    live: dict[str, Sequence[QueuedFrameView]] = {}
    for cam, q in queues.items():
        k = 0
        n = len(q)
        while k < n and getattr(q[k], ts) < limit_ts:
            k += 1
        if k:
            old.extend(itertools.islice(q, 0, k))
        live[cam] = q if k == 0 else list(itertools.islice(q, k, None))
    return old, live


def fair_order(queues: Queues, limit: int | None = None, served: Mapping[str, float] | None = None,
               heavy: float = 2.0) -> list[QueuedFrameView]:
    """Round-robin across cameras: every camera's oldest frame, then every camera's second
    oldest, ... Within a round the oldest frame goes first, except that a camera served more than
    `heavy` times the fair share of late (`served`: a decaying count of frames run per camera)
    goes after the others. So a busy camera fills a batch only after every other camera has had
    its turn, and under overload its frames are the ones left to age out."""
    share = (sum(served.values()) / len(served)) if served else 0.0
    heavy_cameras = {c for c, n in served.items() if n > heavy * share} if served else set()
    out: list[QueuedFrameView] = []
    qs = [(c in heavy_cameras, q) for c, q in queues.items() if len(q)]
    depth = max((len(q) for _, q in qs), default=0)
    for r in range(depth):
        rnd = sorted(((h, q[r].capture_ts, q[r]) for h, q in qs if len(q) > r), key=lambda x: (x[0], x[1]))
        out.extend(x[2] for x in rnd)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out
