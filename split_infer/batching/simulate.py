"""Discrete-event replay of an arrival trace against a cost curve, driving a real policy object.

One worker (one head, one batch at a time), as the cloud worker runs. The simulator owns only
the queue and the clock; every batching decision is the policy's own `next_batch` (the same
objects the worker uses), and it reports every batch back through `on_batch_done`.

Accounting: every frame of the trace is, exactly once, either processed (completion time) or
shed (with the policy's reason). Latency = completion - capture time. `slo_met` = share of ALL
frames of the trace that completed within the objective (a shed frame is a miss); p50/p99 are
over processed frames; throughput = processed frames per second of the replay.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from split_infer.batching.interface import BatchPolicy, PolicyError, QueuedFrameView, QueueView
from split_infer.batching.traces import Trace


class AccountingError(AssertionError):
    """A frame was processed or shed twice, or a decision named a frame not in the queue."""


@dataclass
class SimResult:
    policy: str
    trace: str
    slo_ms: float
    latency_ms: np.ndarray  # per frame, NaN when shed
    shed_reason: np.ndarray  # per frame, "" when processed
    camera: np.ndarray
    batch_sizes: list[int]
    span_s: float

    @property
    def processed(self) -> int:
        return int(np.isfinite(self.latency_ms).sum())

    @property
    def shed(self) -> Counter[str]:
        return Counter(r for r in self.shed_reason.tolist() if r)

    def _met(self, mask: np.ndarray | None = None) -> float:
        lat = self.latency_ms if mask is None else self.latency_ms[mask]
        if not len(lat):
            return 1.0
        return float((np.nan_to_num(lat, nan=np.inf) <= self.slo_ms).sum() / len(lat))

    @property
    def slo_met(self) -> float:
        return self._met()

    def per_camera_slo_met(self) -> dict[str, float]:
        return {c: round(self._met(self.camera == c), 5) for c in sorted(set(self.camera.tolist()))}

    def summary(self) -> dict[str, Any]:
        lat = self.latency_ms[np.isfinite(self.latency_ms)]
        bs = np.asarray(self.batch_sizes or [0])
        return {
            "throughput_fps": round(self.processed / self.span_s, 3) if self.span_s else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "slo_met": round(self.slo_met, 5),
            "per_camera_slo_met": self.per_camera_slo_met(),
            "frames": int(len(self.latency_ms)),
            "processed": self.processed,
            "shed": dict(self.shed),
            "mean_batch": round(float(bs.mean()), 3),
            "max_batch": int(bs.max()),
        }


class _Queue:
    """The simulated cloud queue: per-camera deques, and which frames (by key) are in it."""

    def __init__(self, policy: BatchPolicy, cameras: list[str]) -> None:
        self.policy = policy
        self.queues: dict[str, deque[QueuedFrameView]] = {c: deque() for c in cameras}
        self.queued: set[int] = set()

    def add(self, f: QueuedFrameView) -> None:
        self.queues[f.camera].append(f)
        self.queued.add(f.key)

    def remove(self, f: QueuedFrameView) -> None:
        if f.key not in self.queued:
            raise AccountingError(f"{self.policy.name}: decision names {f!r}, which is not queued")
        self.queued.discard(f.key)
        q = self.queues[f.camera]
        if q and q[0] is f:
            q.popleft()
        else:
            q.remove(f)


def simulate(trace: Trace, policy: BatchPolicy, service_ms: Callable[[int], float], slo_ms: float,
             noise: float = 0.0, seed: int = 0) -> SimResult:
    """Replay `trace` through `policy`; a batch of b runs service_ms(b) x lognormal(noise) ms.

    The noise factor is drawn per frame up front and a batch takes its first frame's: every
    policy replaying the same trace and seed sees the same luck for the same frame (common
    random numbers), so differences between policies are the policies', not the dice's."""
    rng = np.random.default_rng(seed)
    n = len(trace)
    luck = rng.lognormal(0.0, noise, size=n) if noise else np.ones(n)
    frames = [QueuedFrameView(c, cap, arr, i) for i, (c, cap, arr) in
              enumerate(zip(trace.camera.tolist(), trace.capture_ts.tolist(), trace.arrival_ts.tolist(), strict=True))]
    queue = _Queue(policy, trace.cameras)
    completion = np.full(n, np.nan)
    reason = np.full(n, "", dtype=object)
    batches: list[int] = []
    t = float(trace.arrival_ts[0]) if n else 0.0
    i = 0  # next arrival (trace is sorted by arrival)

    while True:
        while i < n and frames[i].arrival_ts <= t:
            queue.add(frames[i])
            i += 1
        if not queue.queued:
            if i >= n:
                break
            t = frames[i].arrival_ts
            continue
        d = policy.next_batch(QueueView(queue.queues, i, closing=i >= n), t)
        for f, why in d.shed:
            queue.remove(f)
            reason[f.key] = why or "unspecified"
        if d.take:
            for f in d.take:
                queue.remove(f)
            b = len(d.take)
            ms = service_ms(b) * float(luck[d.take[0].key])
            t_done = t + ms / 1000.0
            completion[[f.key for f in d.take]] = t_done
            batches.append(b)
            policy.on_batch_done(b, ms, t_done)
            t = t_done
        elif not d.shed:  # (after a shed the queue changed: ask again at the same instant)
            t = _wake_time(policy, t, frames[i].arrival_ts if i < n else None, d.wait_until, len(queue.queued))

    done = np.isfinite(completion)
    if (done & (reason != "")).any() or (~done & (reason == "")).any():
        raise AccountingError("a frame was both processed and shed, or neither")
    latency = (completion - trace.capture_ts) * 1000.0
    end = max(float(np.nanmax(completion)) if done.any() else t, float(trace.arrival_ts[-1]) if n else t)
    span = end - (float(trace.arrival_ts[0]) if n else t)
    return SimResult(policy.name, trace.name, slo_ms, latency, reason.astype(str), trace.camera, batches, span)


def _wake_time(policy: BatchPolicy, t: float, next_arrival: float | None, wait_until: float | None,
               depth: int) -> float:
    """When an idle policy is asked again: the next arrival or its wait_until, whichever is first."""
    nxt = [x for x in (next_arrival, wait_until) if x is not None and x > t]
    if not nxt:
        raise PolicyError(f"{policy.name}: waits at t={t:.4f} with {depth} frame(s) queued and nothing to wake it")
    return min(nxt)
