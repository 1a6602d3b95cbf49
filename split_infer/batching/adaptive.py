"""The adaptive batching policy: batches from a cost model of this device, the queue and the
arrival rate, as far as the latency objective allows; see docs/batching.md."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from split_infer.batching.cost import CostModel
from split_infer.batching.interface import (
    SHED_DEADLINE,
    Decision,
    Overload,
    PolicyBase,
    QueuedFrameView,
    QueueView,
    fair_order,
    split_timed_out,
)

log = logging.getLogger(__name__)


class AdaptiveBatcher(PolicyBase):
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
       plus the arrivals the rate estimate expects within one objective, in batches of up to b; a
       frame whose batch would end after its deadline is skipped (a miss).
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

    def _note_taken(self, frames: Sequence[QueuedFrameView], now: float) -> None:
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
        shed: list[tuple[QueuedFrameView, str]] = []
        slo = self.slo_s
        # A frame is dead when even a fast run alone (3 deviations under the expected cost) ends
        # after its deadline: a shed frame is a certain miss. One that the expected cost misses
        # but a fast run would not is marginal: it runs only when nothing on time waits.
        c1 = self.cost.ms(1) / 1000.0
        dead, live = split_timed_out(queue.queues, now + c1 * (1.0 - min(0.5, 3 * self.cost_dev)) - slo, "capture_ts")
        marginal, live = split_timed_out(live, now + c1 - slo, "capture_ts")
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
