"""Batching policies for the cloud worker, on one interface (split_infer.batching.interface).

Policies (see docs/batching.md for the precise semantics)
--------------------------------------------------------
- `fixed`: static batches of exactly N frames, oldest first; waits for N (a drain takes the rest).
- `triton`: Triton-style dynamic batcher: max batch, preferred sizes, max queue delay, and a
  queue policy (timeout from arrival; timed-out frames shed or processed late).
- `aimd`: Clipper-style additive-increase / multiplicative-decrease of the batch cap against the
  latency objective of one batch.
- `adaptive` (split_infer.batching.adaptive): picks each batch from a CostModel of this device (ms
  per batch size, learnt online), the queue, an arrival-rate estimate and the objective measured
  from capture time; sheds (or defers) frames that can no longer meet it; round-robin across cameras.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from split_infer.batching.adaptive import AdaptiveBatcher
from split_infer.batching.cost import CostModel
from split_infer.batching.interface import (
    SHED_TIMEOUT,
    BatchPolicy,
    Decision,
    Overload,
    PolicyBase,
    QueuedFrameView,
    QueueView,
    fifo,
    split_timed_out,
)

log = logging.getLogger(__name__)


class FixedBatch(PolicyBase):
    """Static batching: exactly `batch_size` frames, oldest first; waits until that many are queued."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch size must be >= 1")
        self.batch_size = batch_size
        self.name = f"fixed-{batch_size}"

    def _decide(self, queue: QueueView, now: float) -> Decision:
        if queue.depth >= self.batch_size or (queue.closing and queue.depth):
            return Decision(take=queue.fifo(self.batch_size))
        return Decision(wait_until=None)


class TritonBatcher(PolicyBase):
    """Triton's dynamic batcher, as documented (model configuration `dynamic_batching`).

    - A batch takes frames in arrival order. Up to `max_batch` queued: a batch of max_batch goes
      at once. Else, with preferred sizes, the largest preferred size that can be formed goes at
      once. Else, with `max_queue_delay_ms` > 0, it waits until the oldest frame has been queued
      that long, then sends what is there; with no delay, what is there goes at once.
    - Queue policy: `timeout_ms` counts from arrival in the queue; a frame past it is shed
      ("REJECT") or, with action "late" ("DELAY"), scheduled after every frame not timed out.
    """

    def __init__(
        self,
        max_batch: int = 16,
        preferred: Sequence[int] = (),
        max_queue_delay_ms: float = 0.0,
        timeout_ms: float | None = None,
        timeout_action: Overload = "shed",
        name: str | None = None,
    ) -> None:
        super().__init__()
        if max_batch < 1 or any(p < 1 or p > max_batch for p in preferred) or max_queue_delay_ms < 0:
            raise ValueError("triton: need max_batch >= 1, preferred sizes in 1..max_batch, delay >= 0")
        if timeout_action not in ("shed", "late"):
            raise ValueError(f"timeout_action must be 'shed' or 'late', got {timeout_action!r}")
        self.max_batch, self.preferred = max_batch, sorted(set(preferred))
        self.delay_s = max_queue_delay_ms / 1000.0
        self.timeout_s = None if timeout_ms is None else timeout_ms / 1000.0
        self.timeout_action = timeout_action
        self.name = name or f"triton-{max_batch}-d{max_queue_delay_ms:g}ms"

    def _decide(self, queue: QueueView, now: float) -> Decision:
        shed: list[tuple[QueuedFrameView, str]] = []
        queues = queue.queues
        late: list[QueuedFrameView] = []
        if self.timeout_s is not None:
            late, queues = split_timed_out(queues, now - self.timeout_s, "arrival_ts")
            if self.timeout_action == "shed":
                shed, late = [(f, SHED_TIMEOUT) for f in late], []
        head = fifo(queues, self.max_batch)
        n = len(head)
        if n == 0:
            late.sort(key=lambda f: f.arrival_ts)
            return Decision(take=late[: self.max_batch], shed=shed)
        if n >= self.max_batch:
            return Decision(take=head, shed=shed)
        fits = [p for p in self.preferred if p <= n]
        if fits:
            return Decision(take=head[: fits[-1]], shed=shed)
        oldest = head[0].arrival_ts
        if self.delay_s > 0 and not queue.closing and now < oldest + self.delay_s - 1e-9:
            return Decision(shed=shed, wait_until=oldest + self.delay_s)
        return Decision(take=head, shed=shed)


class AIMDBatcher(PolicyBase):
    """Clipper's adaptive batching: the batch cap grows by `increase` after each full batch that
    ran within `target_ms` and shrinks by the factor `decrease` after one that did not. Frames
    are taken oldest first, never waited for (Clipper's default, no delayed batching)."""

    def __init__(self, target_ms: float, max_batch: int = 16, increase: float = 1.0, decrease: float = 0.9) -> None:
        super().__init__()
        if target_ms <= 0 or max_batch < 1 or increase <= 0 or not 0 < decrease < 1:
            raise ValueError("aimd: need target_ms > 0, max_batch >= 1, increase > 0, 0 < decrease < 1")
        self.target_ms, self.max_batch, self.increase, self.decrease = target_ms, max_batch, increase, decrease
        self.cap = 1.0
        self.name = "aimd"

    def _decide(self, queue: QueueView, now: float) -> Decision:
        if not queue.depth:
            return Decision(wait_until=None)
        return Decision(take=queue.fifo(int(self.cap)))

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None:
        old = int(self.cap)
        if service_ms > self.target_ms:
            self.cap = max(1.0, self.cap * self.decrease)
        elif batch_size >= int(self.cap):
            self.cap = min(float(self.max_batch), self.cap + self.increase)
        if int(self.cap) != old:
            log.debug("aimd: batch cap %d -> %d (last batch %d took %.1f ms, target %.1f ms)",
                      old, int(self.cap), batch_size, service_ms, self.target_ms)


POLICIES = ("fixed", "triton", "aimd", "adaptive")


def make_policy(kind: str, *, slo_ms: float = 200.0, max_batch: int = 16, cost: CostModel | None = None,
                batch_size: int | None = None, overload: Overload = "shed", **kw: Any) -> BatchPolicy:
    """One factory for the worker, the simulator and the benchmark.

    kind: "fixed" (batch_size), "triton" (preferred, max_queue_delay_ms, timeout_ms,
    timeout_action), "aimd" (target_ms, default slo_ms), "adaptive" (cost required; overload).
    """
    if kind == "fixed":
        return FixedBatch(batch_size or max_batch)
    if kind == "triton":
        return TritonBatcher(max_batch=max_batch, **kw)
    if kind == "aimd":
        return AIMDBatcher(target_ms=kw.pop("target_ms", slo_ms), max_batch=max_batch, **kw)
    if kind == "adaptive":
        if cost is None:
            raise ValueError("the adaptive policy needs a cost model (profile the head or pass a cost file)")
        return AdaptiveBatcher(slo_ms, cost, max_batch=max_batch, overload=overload, **kw)
    raise ValueError(f"unknown batching policy {kind!r}; choose one of {', '.join(POLICIES)}")
