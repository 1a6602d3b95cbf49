"""Batching policies for the cloud worker: one interface, several policies.

The interface (all the worker needs)
------------------------------------
    from split_infer.batching.policy import Frame, QueueView, make_policy

    policy = make_policy("adaptive", slo_ms=200, max_batch=16, cost=CostModel.load("cost.json"))
    view = QueueView(queues={"cam0": [Frame(...), ...], ...}, arrived_total=n, closing=False)
    d = policy.next_batch(view, now)            # now: seconds, the clock of the Frame timestamps
    for frame, reason in d.shed:                # drop (ack) these, count them by reason
        ...
    if d.take:                                  # run the head on these frames, as one batch
        ...
        policy.on_batch_done(len(d.take), head_ms, now_after)
    else:                                       # nothing to run: call again at d.wait_until,
        ...                                     # or at the next arrival when it is None
    policy.metrics.batch_size, policy.metrics.queue_delay_s, policy.metrics.shed   # -> Prometheus

- `Frame`: one queued frame: camera, capture_ts (edge clock, already mapped onto the worker's
  clock), arrival_ts (when the cloud queued it) and an opaque `key` the worker uses to find it.
- `QueueView`: the frames waiting, per camera, each camera's in arrival order (oldest first; a
  per-camera Redis stream is exactly that). `arrived_total` counts every frame ever queued (the
  policies estimate the arrival rate from it). `closing=True` tells the policy no more frames
  will come (shutdown drain, end of a replayed trace): it must then take what is left.
- `Decision`: `take` (the batch, in order; empty = run nothing now), `shed` ((frame, reason)
  pairs to drop now), `wait_until` (when `take` is empty: when to ask again; None = at the next
  arrival), `reason` (set when the choice changed; also logged).
- A policy never removes frames itself; the caller removes `take` and `shed` from its queue.
  Every frame of the view ends up in exactly one batch or one shed entry, over successive calls.

Policies (see docs/batching.md for the precise semantics)
--------------------------------------------------------
- `fixed`: static batches of exactly N frames, oldest first; waits for N (a drain takes the rest).
- `triton`: Triton-style dynamic batcher: max batch, preferred sizes, max queue delay, and a
  queue policy (timeout from arrival; timed-out frames shed or processed late).
- `aimd`: Clipper-style additive-increase / multiplicative-decrease of the batch cap against the
  latency objective of one batch.
- `adaptive`: picks each batch from a CostModel of this device (ms per batch size, learnt
  online), the queue, an arrival-rate estimate and the objective measured from capture time;
  sheds (or defers) frames that can no longer meet it; round-robin across cameras.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from split_infer.batching.cost import CostModel

log = logging.getLogger("split_infer.batching")

# Shed reasons (counted in PolicyMetrics.shed and by the worker).
SHED_DEADLINE = "deadline"  # adaptive: cannot complete within the objective any more
SHED_TIMEOUT = "queue_timeout"  # triton queue policy: waited longer than its timeout

Overload = Literal["shed", "late"]


class Frame:
    """One queued frame. Compared by identity (two frames are never equal)."""

    __slots__ = ("camera", "capture_ts", "arrival_ts", "key")

    def __init__(self, camera: str, capture_ts: float, arrival_ts: float, key: object = None) -> None:
        self.camera, self.capture_ts, self.arrival_ts, self.key = camera, capture_ts, arrival_ts, key

    def __repr__(self) -> str:
        return f"Frame({self.camera!r}, capture={self.capture_ts:.4f}, arrival={self.arrival_ts:.4f}, key={self.key!r})"


@dataclass
class QueueView:
    queues: Mapping[str, Sequence[Frame]]  # per camera, arrival order (oldest first)
    arrived_total: int = 0  # frames ever queued, monotonic (for arrival-rate estimates)
    closing: bool = False  # no more arrivals: take what is left

    @classmethod
    def of(cls, frames: Iterable[Frame], arrived_total: int | None = None, closing: bool = False) -> QueueView:
        """Build a view from frames in any order (grouped per camera, sorted by arrival)."""
        per: dict[str, list[Frame]] = {}
        for f in frames:
            per.setdefault(f.camera, []).append(f)
        for fs in per.values():
            fs.sort(key=lambda f: (f.arrival_ts, f.capture_ts))
        n = sum(len(v) for v in per.values())
        return cls(per, n if arrived_total is None else arrived_total, closing)

    @property
    def depth(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def fifo(self, limit: int | None = None) -> list[Frame]:
        """The oldest `limit` frames across cameras, in arrival order (all when None)."""
        merged = heapq.merge(*self.queues.values(), key=lambda f: f.arrival_ts)
        return list(itertools.islice(merged, limit))


@dataclass
class Decision:
    take: list[Frame] = field(default_factory=list)
    shed: list[tuple[Frame, str]] = field(default_factory=list)
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
    shed: Counter = field(default_factory=Counter)  # reason -> frames shed


class BatchPolicy(Protocol):
    name: str
    metrics: PolicyMetrics

    def next_batch(self, queue: QueueView, now: float) -> Decision: ...

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None: ...


class PolicyError(RuntimeError):
    """A policy broke its contract (e.g. it waits forever while frames are queued)."""


class _Base:
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

def _split_timed_out(queue: QueueView, limit_ts: float, ts: str) -> tuple[list[Frame], dict[str, Sequence[Frame]]]:
    """Split each camera queue at the first frame whose `ts` >= limit_ts (queues are ordered)."""
    old: list[Frame] = []
    live: dict[str, Sequence[Frame]] = {}
    for cam, q in queue.queues.items():
        k = 0
        n = len(q)
        while k < n and getattr(q[k], ts) < limit_ts:
            k += 1
        if k:
            old.extend(itertools.islice(q, 0, k))
        live[cam] = q if k == 0 else list(itertools.islice(q, k, None))
    return old, live


def _fifo(queues: Mapping[str, Sequence[Frame]], limit: int | None = None) -> list[Frame]:
    return list(itertools.islice(heapq.merge(*queues.values(), key=lambda f: f.arrival_ts), limit))


def fair_order(queues: Mapping[str, Sequence[Frame]], limit: int | None = None,
               served: Mapping[str, float] | None = None, heavy: float = 2.0) -> list[Frame]:
    """Round-robin across cameras: every camera's oldest frame, then every camera's second
    oldest, ... Within a round the oldest frame goes first, except that a camera served more than
    `heavy` times the fair share of late (`served`: a decaying count of frames run per camera)
    goes after the others. So a busy camera fills a batch only after every other camera has had
    its turn, and under overload its frames are the ones left to age out."""
    share = (sum(served.values()) / len(served)) if served else 0.0
    limit_w = heavy * share
    out: list[Frame] = []
    qs = [(bool(served) and served.get(c, 0.0) > limit_w, q) for c, q in queues.items() if len(q)]
    depth = max((len(q) for _, q in qs), default=0)
    for r in range(depth):
        rnd = sorted(((h, q[r].capture_ts, q[r]) for h, q in qs if len(q) > r), key=lambda x: (x[0], x[1]))
        out.extend(x[2] for x in rnd)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


# ---------------------------------------------------------------------------------------------
class FixedBatch(_Base):
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


class TritonBatcher(_Base):
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
        shed: list[tuple[Frame, str]] = []
        queues: Mapping[str, Sequence[Frame]] = queue.queues
        late: list[Frame] = []
        if self.timeout_s is not None:
            late, queues = _split_timed_out(queue, now - self.timeout_s, "arrival_ts")
            if self.timeout_action == "shed":
                shed, late = [(f, SHED_TIMEOUT) for f in late], []
        head = _fifo(queues, self.max_batch)
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


class AIMDBatcher(_Base):
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


# ---------------------------------------------------------------------------------------------
class AdaptiveBatcher(_Base):
    """Batches as far as the latency objective allows, no further; see docs/batching.md.

    At each call (the worker is idle), with deadlines d = capture_ts + slo:
    1. A frame that cannot meet its deadline even if run alone right now, even a little faster
       than expected (now + c(1) x (1 - 3 dev) > d, dev: the model's recent relative error), is
       shed with reason "deadline" (overload="shed") or kept for after the on-time frames
       ("late"). A frame that misses on the expected cost but not on a fast run is marginal: it
       runs only when no on-time frame waits, else it waits (and is shed once certain to miss).
    2. The live frames are ordered round-robin across cameras, oldest first, a camera served far
       beyond its share of late last (fair_order).
    3. Candidate caps b: 1, and the cost model's sizes and the queue length up to max_batch whose
       cost per frame is at least `gain_tolerance` below batch 1's (a size that gains nothing per
       frame only delays the first frames of the batch). For each cap a plan serves the queue,
       plus the arrivals the rate estimate expects within one objective, in batches of up to b; a frame whose batch would end after its deadline is skipped (a miss).
       The plan that meets the most queued frames wins; ties: the most expected arrivals met;
       then any plan finishing the queue within `gain_tolerance` of the fastest, smallest b
       first. With a linear cost curve (a CPU) every cap finishes together, so b = 1.
    4. The batch is the first batch of that plan (one frame if that batch's own size gains
       nothing per frame). The policy never idles with work queued.
    The cost model is updated with every batch the worker reports (on_batch_done).
    """

    def __init__(
        self,
        slo_ms: float,
        cost: CostModel,
        max_batch: int = 16,
        overload: Overload = "shed",
        cost_margin: float = 0.02,
        gain_tolerance: float = 0.1,
        rate_tau_s: float = 1.0,
        fair_tau_s: float = 2.0,
        log_interval_s: float = 1.0,
    ) -> None:
        super().__init__()
        if slo_ms <= 0 or max_batch < 1 or cost_margin < 0 or gain_tolerance < 0:
            raise ValueError("adaptive: need slo_ms > 0, max_batch >= 1, cost_margin >= 0, gain_tolerance >= 0")
        if overload not in ("shed", "late"):
            raise ValueError(f"overload must be 'shed' or 'late', got {overload!r}")
        if not cost.sizes:
            raise ValueError("adaptive: the cost model is empty; profile the head or load a cost file")
        self.slo_s, self.cost, self.max_batch, self.overload = slo_ms / 1000.0, cost, max_batch, overload
        self.margin, self.tolerance, self.rate_tau_s = 1.0 + cost_margin, gain_tolerance, rate_tau_s
        self.name = "adaptive"
        self.rate_fps = 0.0  # arrival-rate estimate (EWMA)
        self.transit_s = 0.0  # EWMA of arrival - capture (edge + network), for expected arrivals
        self.cost_dev = 0.05  # EWMA of |measured - predicted| / predicted batch time
        self.choice = 0  # the cap b last chosen
        self._rate_t: float | None = None
        self._rate_n = 0
        self.served: dict[str, float] = {}  # per camera, frames run, decaying with fair_tau_s
        self._served_t = 0.0
        self.fair_tau_s = fair_tau_s
        self._log_interval, self._last_log = log_interval_s, -math.inf

    # -- estimates -------------------------------------------------------------------------------
    def _update_rate(self, queue: QueueView, now: float) -> None:
        if self._rate_t is None:
            self._rate_t, self._rate_n = now, queue.arrived_total
            return
        dt = now - self._rate_t
        if dt >= 0.05:  # short windows are all noise
            sample = (queue.arrived_total - self._rate_n) / dt
            w = 1.0 - math.exp(-dt / self.rate_tau_s)
            self.rate_fps += w * (sample - self.rate_fps)
            self._rate_t, self._rate_n = now, queue.arrived_total

    def _c(self, b: int) -> float:
        """Predicted seconds for a batch of b, with the safety margin."""
        return self.cost.ms(b) * self.margin / 1000.0

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None:
        pred = self.cost.ms(batch_size)
        self.cost_dev += 0.1 * (min(1.0, abs(service_ms - pred) / pred) - self.cost_dev)
        self.cost.observe(batch_size, service_ms)

    def _note_taken(self, frames: Sequence[Frame], now: float) -> None:
        """Per-camera service (for fairness) and edge + network time (to place expected arrivals)."""
        decay = math.exp(-max(0.0, now - self._served_t) / self.fair_tau_s)
        self._served_t = now
        for c in self.served:
            self.served[c] *= decay
        for f in frames:
            self.served[f.camera] = self.served.get(f.camera, 0.0) + 1.0
            self.transit_s += 0.05 * (max(0.0, f.arrival_ts - f.capture_ts) - self.transit_s)

    # -- planning ------------------------------------------------------------------------------
    def _plan(self, deadlines: list[float], virtual: list[tuple[float, float]], b: int, now: float
              ) -> tuple[int, int, float, int]:
        """Serve queued frames (deadlines, in order) then expected arrivals ((arrival, deadline))
        in batches of up to b. Returns (queued met, expected met, when the queue is done, size
        of the first batch)."""
        c = self._c
        t, i, j = now, 0, 0
        n, v = len(deadlines), len(virtual)
        met_q = met_v = first = 0
        done_q: float | None = None if n else now
        while i < n or j < v:  # every round consumes at least one frame
            if i >= n and virtual[j][0] > t:
                t = virtual[j][0]  # idle until the next expected arrival
            avail = j
            while avail < v and virtual[avail][0] <= t:
                avail += 1
            r = min(b, (n - i) + (avail - j))
            end = t + c(r)
            size = 0
            while size < r and i < n:
                if deadlines[i] >= end:
                    size += 1
                    met_q += 1
                i += 1
            while size < r and j < avail:
                if virtual[j][1] >= end:
                    size += 1
                    met_v += 1
                j += 1
            if size:
                t += c(size)
                first = first or size
            if done_q is None and i >= n:
                done_q = t
        return met_q, met_v, (now if done_q is None else done_q), first

    def _decide(self, queue: QueueView, now: float) -> Decision:
        self._update_rate(queue, now)
        shed: list[tuple[Frame, str]] = []
        slo = self.slo_s
        # A frame is dead when even a fast run alone (3 deviations under the expected cost) ends
        # after its deadline: a shed frame is a certain miss. One that the expected cost misses
        # but a fast run would not is marginal: it runs only when nothing on time waits.
        c1 = self.cost.ms(1) / 1000.0
        dead, live = _split_timed_out(queue, now + c1 * (1.0 - min(0.5, 3 * self.cost_dev)) - slo, "capture_ts")
        marginal, live = _split_timed_out(QueueView(live), now + c1 - slo, "capture_ts")
        if dead and self.overload == "shed":
            shed = [(f, SHED_DEADLINE) for f in dead]
            dead = []
        horizon = max(self.max_batch * 16, 64)  # frames beyond this cannot be reached within one objective
        order = fair_order(live, horizon, self.served)
        if not order:
            if marginal:  # the one with the most slack has the best chance
                return Decision(take=[max(marginal, key=lambda f: f.capture_ts)], shed=shed)
            if dead:  # overload="late": frames past their objective, after everything on time
                dead.sort(key=lambda f: f.capture_ts)
                return Decision(take=dead[: self.max_batch], shed=shed)
            return Decision(shed=shed, wait_until=None)

        n = len(order)
        if n == 1:  # every cap takes the one frame there is
            self._note_taken(order, now)
            return Decision(take=order, shed=shed)
        deadlines = [f.capture_ts + slo for f in order]
        virtual: list[tuple[float, float]] = []
        if self.rate_fps > 0:
            gap = 1.0 / self.rate_fps
            k = min(int(self.rate_fps * slo), 4 * self.max_batch)
            virtual = [(now + (m + 1) * gap, now + (m + 1) * gap - self.transit_s + slo) for m in range(k)]
        # a cap is worth planning only if batching at that size gains per frame on this device
        pf1 = self.cost.per_frame_ms(1) * (1.0 - self.tolerance)
        caps = sorted({b for b in {*self.cost.sizes, min(n, self.max_batch)}
                       if b <= self.max_batch and (b == 1 or self.cost.per_frame_ms(b) <= pf1)} | {1})
        plans = {b: self._plan(deadlines, virtual, b, now) for b in caps}
        best_q = max(p[0] for p in plans.values())
        best_v = max(p[1] for p in plans.values() if p[0] == best_q)
        tied = {b: p for b, p in plans.items() if p[0] == best_q and p[1] == best_v}
        fastest = min(p[2] for p in tied.values()) - now
        b = min(b for b, p in tied.items() if p[2] - now <= fastest * (1.0 + self.tolerance) + 1e-9)
        first = plans[b][3]
        if first > 1 and self.cost.per_frame_ms(first) > pf1:  # this batch itself would gain nothing
            first = 1
        if first == 0:  # only with out-of-order captures: run the oldest anyway, it is late
            return Decision(take=order[:1], shed=shed)
        end = now + self._c(first)
        # (within the 2% margin of its deadline, the first frame still runs: it is expected to make it)
        take = [f for f in order if f.capture_ts + slo >= end][:first] or order[:1]
        self._note_taken(take, now)
        d = Decision(take=take, shed=shed)
        if b != self.choice:
            d.reason = (f"cap {self.choice} -> {b}: {n} frame(s) queued, arrivals {self.rate_fps:.1f}/s, "
                        f"cost {self.cost.ms(1):.2f} ms @1 vs {self.cost.ms(b):.2f} ms @{b}; plan meets "
                        f"{best_q}/{n} queued + {best_v}/{len(virtual)} expected within {slo * 1000:.0f} ms")
            if now - self._last_log >= self._log_interval:
                log.info("adaptive batch %s", d.reason)
                self._last_log = now
            else:
                log.debug("adaptive batch %s", d.reason)
            self.choice = b
        return d


# ---------------------------------------------------------------------------------------------
POLICIES = ("fixed", "triton", "aimd", "adaptive")


def make_policy(kind: str, *, slo_ms: float = 200.0, max_batch: int = 16, cost: CostModel | None = None,
                batch_size: int | None = None, overload: Overload = "shed", **kw) -> BatchPolicy:
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

