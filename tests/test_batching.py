"""Batching policies, cost model, traces and the simulator (no timing asserts: all clocks are fake)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from split_infer.batching import traces as T
from split_infer.batching.adaptive import AdaptiveBatcher
from split_infer.batching.cost import CostModel
from split_infer.batching.interface import (
    SHED_DEADLINE,
    SHED_TIMEOUT,
    Decision,
    PolicyError,
    QueuedFrameView,
    QueueView,
    fair_order,
)
from split_infer.batching.policy import AIMDBatcher, FixedBatch, TritonBatcher, make_policy
from split_infer.batching.simulate import AccountingError, simulate

pytestmark = pytest.mark.unit

SIZES = (1, 2, 4, 8, 16)
GPU = CostModel({b: 2.0 + 0.15 * b for b in SIZES}, device="gpu model")  # big batching gain
CPU = CostModel({b: 100.0 * b for b in SIZES}, device="linear cpu")  # no batching gain


def frames(spec: list[tuple[str, float]], transit: float = 0.0) -> list[QueuedFrameView]:
    """(camera, capture time) -> frames arriving `transit` later, keys 0.."""
    return [QueuedFrameView(c, t, t + transit, i) for i, (c, t) in enumerate(spec)]


def view(fs: list[QueuedFrameView], closing: bool = False) -> QueueView:
    return QueueView.of(fs, closing=closing)


def trace_of(spec: list[tuple[str, float, float]], name: str = "t") -> T.Trace:
    cams, cap, arr = zip(*spec, strict=True)
    return T.Trace(name, list(cams), list(cap), list(arr))


# -- cost model -------------------------------------------------------------------------------
def test_cost_interpolates_extrapolates_and_assumes_no_gain_from_one_point():
    m = CostModel({1: 10.0, 4: 16.0})
    assert m.ms(2) == pytest.approx(12.0) and m.ms(3) == pytest.approx(14.0)
    assert m.ms(8) == pytest.approx(24.0)  # beyond: continues the last segment
    assert CostModel({2: 8.0}).ms(6) == pytest.approx(24.0)  # one point: linear, no batching gain
    with pytest.raises(ValueError, match="empty"):
        CostModel().ms(1)
    with pytest.raises(ValueError, match=">= 1"):
        m.ms(0)


def test_cost_ewma_and_first_live_measurement_replaces_a_far_off_prior():
    m = CostModel({1: 10.0, 2: 10.0}, alpha=0.5)
    m.observe(1, 12.0)  # within 2x of the prior: EWMA
    assert m.ms(1) == pytest.approx(11.0)
    m.observe(1, 13.0)
    assert m.ms(1) == pytest.approx(12.0)
    m.observe(2, 200.0)  # 20x the prior (profiled elsewhere): replaced
    assert m.ms(2) == pytest.approx(200.0)
    m.observe(3, 50.0)  # a new size is inserted
    assert m.sizes == [1, 2, 3] and m.observations == {1: 2, 2: 1, 3: 1}


def test_cost_file_round_trip_and_clear_errors(tmp_path):
    m = CostModel({1: 3.5, 2: 4.25}, device="cpu test", meta={"source": "unit"})
    p = tmp_path / "c.json"
    m.save(p)
    data = json.loads(p.read_text())
    assert data["device"] == "cpu test" and data["batch_ms"] == {"1": 3.5, "2": 4.25}
    back = CostModel.load(p)
    assert back.known() == m.known() and back.meta["source"] == "unit"
    (tmp_path / "bad.json").write_text('{"device": "x", "batch_ms": {}}')
    with pytest.raises(ValueError, match="non-empty"):
        CostModel.load(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text('{"batch_ms": {"1": -3}}')
    with pytest.raises(ValueError, match="positive"):
        CostModel.load(tmp_path / "neg.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CostModel.load(tmp_path / "junk.json")
    with pytest.raises(ValueError, match="not found"):
        CostModel.load(tmp_path / "missing.json")


def test_profile_takes_the_median_after_warmup_with_a_fake_clock():
    clock = {"t": 0.0}
    calls: list[int] = []
    durations = iter([None, 0.004, 0.100, 0.005, None, 0.010, 0.011, 0.012])  # None: warm-up

    def run(b: int) -> None:
        calls.append(b)
        d = next(durations)
        clock["t"] += d or 0.0

    m = CostModel.profile(run, sizes=(1, 2), warmup=1, repeats=3, timer=lambda: clock["t"])
    assert calls == [1, 1, 1, 1, 2, 2, 2, 2]
    assert m.known() == pytest.approx({1: 5.0, 2: 11.0})  # medians: the 100 ms outlier is ignored
    assert m.meta["min_ms"] == {"1": 4.0, "2": 10.0}
    durations = iter([None, 0.004, 0.100, 0.005])
    clock["t"] = 0.0
    low = CostModel.profile(run, sizes=(1,), warmup=1, repeats=3, timer=lambda: clock["t"], statistic="min")
    assert low.known() == pytest.approx({1: 4.0}) and low.meta["statistic"] == "min"
    with pytest.raises(ValueError, match="statistic"):
        CostModel.profile(run, sizes=(1,), statistic="mean")


# -- policy semantics -------------------------------------------------------------------------
def test_fixed_waits_for_n_oldest_first_and_drains_on_close():
    p = FixedBatch(4)
    fs = frames([("a", 0.0), ("b", 0.01), ("a", 0.02)])
    d = p.next_batch(view(fs), 0.03)
    assert d.take == [] and d.wait_until is None
    fs += frames([("c", 0.03), ("b", 0.04)])
    fs[3].key, fs[4].key = 3, 4
    d = p.next_batch(view(fs), 0.05)
    assert [f.key for f in d.take] == [0, 1, 2, 3]
    d = p.next_batch(view(fs[4:], closing=True), 0.06)
    assert [f.key for f in d.take] == [4]


def test_triton_honours_max_queue_delay_and_preferred_sizes():
    p = TritonBatcher(max_batch=8, max_queue_delay_ms=10)
    fs = frames([("a", 0.0)], transit=0.05)
    d = p.next_batch(view(fs), 0.05)
    assert d.take == [] and d.wait_until == pytest.approx(0.06)  # oldest arrival + 10 ms
    d = p.next_batch(view(fs), 0.06)
    assert d.take == fs
    full = frames([("a", i / 100) for i in range(9)])
    assert len(p.next_batch(view(full), 0.0).take) == 8  # max batch goes at once
    pref = TritonBatcher(max_batch=16, preferred=(4, 8), max_queue_delay_ms=100)
    assert len(pref.next_batch(view(frames([("a", i / 100) for i in range(6)])), 0.06).take) == 4


def test_triton_max_queue_delay_holds_in_replay():
    """Light traffic, cheap head: no frame waits in the queue longer than the delay (+ one batch)."""
    tr = T.poisson(20.0, duration_s=20, seed=3)
    p = TritonBatcher(max_batch=16, max_queue_delay_ms=15)
    r = simulate(tr, p, GPU.ms, slo_ms=200)
    wait_ms = r.latency_ms - (tr.arrival_ts - tr.capture_ts) * 1000
    # a frame waits at most the delay, plus a batch already running when it became due
    assert wait_ms.max() <= 15 + 2 * GPU.ms(16) + 1e-6
    assert r.summary()["mean_batch"] > 1.0  # and the delay did make batches


def test_triton_queue_policy_sheds_with_reason_or_processes_late():
    fs = frames([("a", 0.0), ("b", 0.5)])
    shed = TritonBatcher(max_batch=4, timeout_ms=100, timeout_action="shed")
    d = shed.next_batch(view(fs), 0.55)
    assert [(f.key, r) for f, r in d.shed] == [(0, SHED_TIMEOUT)] and [f.key for f in d.take] == [1]
    assert shed.metrics.shed == {SHED_TIMEOUT: 1}
    late = TritonBatcher(max_batch=1, timeout_ms=100, timeout_action="late")
    d = late.next_batch(view(fs), 0.55)
    assert d.shed == [] and [f.key for f in d.take] == [1]  # timed-out frames go after the others
    assert [f.key for f in late.next_batch(view(fs[:1]), 0.56).take] == [0]


def test_adaptive_sends_a_batch_of_one_at_once_at_low_traffic():
    for cost in (GPU, CPU):
        p = make_policy("adaptive", slo_ms=200, cost=cost.copy())
        d = p.next_batch(view(frames([("a", 0.0)], transit=0.03)), 0.03)
        assert len(d.take) == 1 and d.shed == []
    tr = T.poisson(4.0, duration_s=60, seed=1)  # ~4 frames/s over 8 cameras: night
    r = simulate(tr, make_policy("adaptive", slo_ms=200, cost=GPU.copy()), GPU.ms, 200)
    assert set(r.batch_sizes) == {1} and r.slo_met == 1.0


def test_adaptive_batches_a_backlog_on_a_gpu_curve_and_stays_small_on_a_linear_one():
    backlog = frames([(f"c{i % 8}", 0.001 * i) for i in range(30)], transit=0.03)
    gpu = make_policy("adaptive", slo_ms=200, cost=GPU.copy())
    assert len(gpu.next_batch(view(backlog), 0.06).take) == 16
    cpu = make_policy("adaptive", slo_ms=2000, cost=CPU.copy())  # a loose objective: batching allowed
    assert len(cpu.next_batch(view(backlog), 0.06).take) == 1  # but it gains nothing: stay at 1
    # and over a whole overloaded replay on the linear curve, every batch is a batch of one
    tr = T.rush(15.0, duration_s=30, seed=2)
    r = simulate(tr, make_policy("adaptive", slo_ms=400, cost=CPU.copy()), CPU.ms, 400)
    assert set(r.batch_sizes) == {1}


def test_adaptive_learns_a_linear_curve_when_its_prior_came_from_a_gpu():
    """Profile from another device (cheap big batches), true cost linear: it tries, learns, stays small."""
    p = make_policy("adaptive", slo_ms=1000, cost=CostModel({b: 5.0 + 0.5 * b for b in SIZES}))
    tr = T.poisson(9.0, duration_s=120, seed=4)
    r = simulate(tr, p, CPU.ms, 1000)
    assert max(r.batch_sizes) > 1  # it believed the prior at first
    late = r.batch_sizes[len(r.batch_sizes) // 2:]
    assert set(late) == {1}  # and then learnt
    assert p.cost.ms(16) == pytest.approx(CPU.ms(16), rel=0.3) or p.cost.observations.get(16) is None
    assert p.cost.per_frame_ms(4) >= 0.9 * p.cost.per_frame_ms(1)


def test_adaptive_sheds_frames_that_cannot_meet_the_objective_with_a_counted_reason():
    p = make_policy("adaptive", slo_ms=200, cost=CPU.copy())  # 100 ms per frame
    fs = frames([("a", 0.0), ("b", 0.15), ("c", 0.16)], transit=0.01)
    d = p.next_batch(view(fs), 0.17)  # frame 0 would end at 0.27 > 0.20
    assert [(f.key, r) for f, r in d.shed] == [(0, SHED_DEADLINE)]
    assert [f.key for f in d.take] == [1]
    assert p.metrics.shed == {SHED_DEADLINE: 1} and p.metrics.batch_size == 1
    assert p.metrics.queue_delay_s == pytest.approx(0.01) and p.metrics.frame_age_s == pytest.approx(0.02)
    late = make_policy("adaptive", slo_ms=200, cost=CPU.copy(), overload="late")
    d = late.next_batch(view(fs), 0.17)
    assert d.shed == [] and [f.key for f in d.take] == [1]
    assert [f.key for f in late.next_batch(view([fs[0]]), 0.5).take] == [0]  # late, after the rest


def test_shedding_keeps_latency_bounded_under_overload_and_late_mode_does_not():
    tr = T.poisson(30.0, duration_s=30, seed=5)  # 3x what a 100 ms/frame head serves
    shed = simulate(tr, make_policy("adaptive", slo_ms=200, cost=CPU.copy()), CPU.ms, 200)
    late = simulate(tr, make_policy("fixed", batch_size=1), CPU.ms, 200)
    assert shed.shed[SHED_DEADLINE] > 0 and sum(shed.shed.values()) + shed.processed == len(tr)
    assert np.nanmax(shed.latency_ms) <= 200 + 1e-6  # every processed frame met it
    assert shed.slo_met > late.slo_met
    assert np.nanmax(late.latency_ms) > 10_000  # FIFO without shedding: latency grows without bound


def test_fair_order_is_round_robin_oldest_camera_first():
    fs = frames([("busy", 0.00), ("busy", 0.01), ("busy", 0.02), ("q1", 0.05), ("q2", 0.03)])
    assert [f.key for f in fair_order(view(fs).queues)] == [0, 4, 3, 1, 2]


def test_adaptive_gives_every_camera_a_turn_in_a_batch():
    spec = [("busy", 0.001 * i) for i in range(40)] + [(f"q{i}", 0.05) for i in range(7)]
    p = make_policy("adaptive", slo_ms=200, max_batch=8, cost=GPU.copy())
    d = p.next_batch(view(frames(spec, transit=0.01)), 0.07)
    assert sorted(f.camera for f in d.take) == ["busy"] + [f"q{i}" for i in range(7)]


def test_one_busy_camera_does_not_starve_the_others_in_replay():
    quiet = T.poisson(3.5, duration_s=60, cameras=7, seed=6)  # 0.5 fps per camera
    busy = T.poisson(20.0, duration_s=60, cameras=1, seed=7)  # one camera floods a 100 ms/frame head
    tr = T.Trace("busy", np.concatenate([quiet.camera, np.full(len(busy), "busy")]),
                 np.concatenate([quiet.capture_ts, busy.capture_ts]),
                 np.concatenate([quiet.arrival_ts, busy.arrival_ts]))
    # 300 ms: a quiet frame meets it even behind a busy-camera batch already running (<= 60 ms
    # transit + <= 100 ms residual + 100 ms own) - if it is served next
    r = simulate(tr, make_policy("adaptive", slo_ms=300, cost=CPU.copy()), CPU.ms, 300)
    per = r.per_camera_slo_met()
    assert all(per[c] >= 0.85 for c in per if c != "busy"), per
    assert per["busy"] < 0.6  # the overload falls on the camera that causes it
    fifo = simulate(tr, make_policy("fixed", batch_size=1), CPU.ms, 300).per_camera_slo_met()
    assert max(fifo[c] for c in fifo if c != "busy") < 0.5  # FIFO without shedding starves everyone


def test_aimd_grows_on_full_batches_within_target_and_backs_off_beyond():
    p = AIMDBatcher(target_ms=50, max_batch=8)
    for _ in range(3):
        p.on_batch_done(int(p.cap), 10.0, 0.0)
    assert int(p.cap) == 4
    p.on_batch_done(2, 10.0, 0.0)  # not full: no evidence, no growth
    assert int(p.cap) == 4
    p.on_batch_done(4, 80.0, 0.0)
    assert p.cap == pytest.approx(3.6)
    assert len(p.next_batch(view(frames([("a", i / 100) for i in range(10)])), 1.0).take) == 3


def test_adaptive_logs_why_its_choice_changed(caplog):
    p = make_policy("adaptive", slo_ms=200, cost=GPU.copy())
    backlog = frames([(f"c{i % 8}", 0.001 * i) for i in range(30)], transit=0.03)
    with caplog.at_level(logging.INFO, logger="split_infer.batching"):
        d = p.next_batch(view(backlog), 0.06)
    assert d.reason.startswith("cap 0 -> 16") and "30 frame(s) queued" in d.reason
    assert any("cap 0 -> 16" in r.getMessage() for r in caplog.records)


# -- simulator ----------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", [
    lambda: FixedBatch(4), lambda: TritonBatcher(16, (4, 8), 5.0, timeout_ms=120),
    lambda: AIMDBatcher(200), lambda: AdaptiveBatcher(200, CPU.copy()),
    lambda: AdaptiveBatcher(200, CPU.copy(), overload="late"),
])
def test_every_arrived_frame_is_processed_or_shed_exactly_once(policy):
    tr = T.rush(20.0, duration_s=20, seed=8)
    p = policy()
    r = simulate(tr, p, CPU.ms, 200, noise=0.05, seed=1)
    done = np.isfinite(r.latency_ms)
    assert r.processed + sum(r.shed.values()) == len(tr)
    assert not (done & (r.shed_reason != "")).any()
    assert sum(r.batch_sizes) == r.processed == p.metrics.frames
    assert sum(p.metrics.shed.values()) == sum(r.shed.values())
    assert (r.latency_ms[done] >= (tr.arrival_ts - tr.capture_ts)[done] * 1000 - 1e-6).all()
    s = r.summary()
    assert set(s["per_camera_slo_met"]) == set(tr.cameras)
    assert r.slo_met == pytest.approx(float((np.nan_to_num(r.latency_ms, nan=np.inf) <= 200).mean()))


def test_simulator_rejects_policies_that_break_the_contract():
    tr = trace_of([("a", 0.0, 0.01), ("a", 0.02, 0.03)])

    class Twice(FixedBatch):
        def _decide(self, queue, now):
            f = queue.fifo(1)[0]
            return Decision(take=[f], shed=[(f, "x")])

    with pytest.raises(AccountingError, match="not queued"):
        simulate(tr, Twice(1), GPU.ms, 200)

    class Sleeper(FixedBatch):
        def _decide(self, queue, now):
            return Decision(wait_until=None)

    with pytest.raises(PolicyError):
        simulate(tr, Sleeper(1), GPU.ms, 200)


# -- traces -----------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_trace_save_load_round_trip(tmp_path, suffix):
    tr = T.rush(40.0, duration_s=10, seed=9)
    back = T.Trace.load(tr.save(tmp_path / f"rush{suffix}"))
    assert len(back) == len(tr) and back.cameras == tr.cameras
    assert (back.camera == tr.camera).all()
    np.testing.assert_array_equal(back.capture_ts, tr.capture_ts)
    np.testing.assert_array_equal(back.arrival_ts, tr.arrival_ts)


def test_generated_traces_are_reproducible_and_ordered_per_camera():
    for gen in T.GENERATORS.values():
        a, b = gen(40.0, duration_s=10, seed=11), gen(40.0, duration_s=10, seed=11)
        np.testing.assert_array_equal(a.arrival_ts, b.arrival_ts)
        assert len(a.cameras) == 8
        for c in a.cameras:
            m = a.camera == c
            assert (np.diff(a.capture_ts[m]) >= 0).all() and (np.diff(a.arrival_ts[m]) >= 0).all()
            assert (a.arrival_ts[m] >= a.capture_ts[m]).all()


def test_recorded_arrivals_without_capture_times_and_bad_files(tmp_path):
    p = tmp_path / "day.csv"
    p.write_text("camera,arrival_ts\ncam1,0.5\ncam0,0.25\n")
    tr = T.Trace.load(p)
    assert tr.camera.tolist() == ["cam0", "cam1"] and tr.capture_ts.tolist() == [0.25, 0.5]
    (tmp_path / "bad.csv").write_text("camera,arrival_ts\ncam0,soon\n")
    with pytest.raises(ValueError, match="bad.csv: not a valid trace"):
        T.Trace.load(tmp_path / "bad.csv")
    (tmp_path / "early.csv").write_text("camera,capture_ts,arrival_ts\ncam0,2.0,1.0\n")
    with pytest.raises(ValueError, match="arrives before it was captured"):
        T.Trace.load(tmp_path / "early.csv")
    with pytest.raises(ValueError, match="not found"):
        T.Trace.load(tmp_path / "none.csv")
    with pytest.raises(ValueError, match=".csv or .json"):
        tr.save(tmp_path / "x.txt")


def test_make_policy_rejects_unknown_kinds_and_missing_cost():
    with pytest.raises(ValueError, match="unknown batching policy"):
        make_policy("magic")
    with pytest.raises(ValueError, match="cost model"):
        make_policy("adaptive")
    with pytest.raises(ValueError, match="empty"):
        make_policy("adaptive", cost=CostModel())


@pytest.mark.parametrize("bad", [
    lambda: FixedBatch(0), lambda: TritonBatcher(max_batch=0), lambda: TritonBatcher(8, preferred=(16,)),
    lambda: TritonBatcher(8, max_queue_delay_ms=-1), lambda: TritonBatcher(8, timeout_action="drop"),
    lambda: AIMDBatcher(0), lambda: AIMDBatcher(100, decrease=1.5),
    lambda: AdaptiveBatcher(0, GPU.copy()), lambda: AdaptiveBatcher(200, GPU.copy(), overload="maybe"),
])
def test_bad_policy_settings_are_clear_errors(bad):
    with pytest.raises(ValueError):
        bad()


def test_closing_queue_is_always_drained():
    """With no more arrivals every policy takes what is left (the worker's drain at shutdown)."""
    fs = frames([("a", 0.0), ("b", 0.001), ("a", 0.002)], transit=0.01)
    for p in (FixedBatch(16), TritonBatcher(16, max_queue_delay_ms=500), AIMDBatcher(200),
              AdaptiveBatcher(200, GPU.copy())):
        taken: list[QueuedFrameView] = []
        left = list(fs)
        for _ in range(10):
            if not left:
                break
            d = p.next_batch(view(left, closing=True), 0.02)
            gone = {id(f) for f in d.take} | {id(f) for f, _ in d.shed}
            taken += d.take
            left = [f for f in left if id(f) not in gone]
        assert not left and sorted(f.key for f in taken) == [0, 1, 2], p.name
