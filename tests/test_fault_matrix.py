"""The fault matrix, short: two cameras of real footage through the real pipeline while a worker is
SIGKILLed and restarted, the edge-to-ingest link is cut and restored, and a worker is stopped for
5 s. Every frame the ingest acknowledged ends with exactly one detection record, or is shed or
dead-lettered with its reason (benchmarks/faults.py runs the full matrix; docs/reliability.md).
"""

from __future__ import annotations

from collections import Counter

import pytest

from faultrig import Settings
from faults import account, crossings_row, phase_frames, run
from split_infer.model.export import ensure_edge_ir
from support.data import street_video


@pytest.mark.unit
@pytest.mark.e2e
def test_quick_faults_lose_and_double_nothing_the_ingest_acknowledged(tmp_path):
    s = Settings(street_video(), cameras=2, fps=2.0, workers=1, profile_sizes=[1, 2], with_api=False,
                 with_analytics=False)
    ensure_edge_ir("yolov5s", 4, s.imgsz)
    faults = ["worker_sigkill", "link_cut_10s", "worker_sigstop_5s"]
    out = run(s, faults, tmp_path, quiet_s=3, settle_s=3, recover_timeout=60, link_cut_s=6, drain_timeout=60)
    rows = {r["fault"]: r for r in out["rows"]}
    assert list(rows) == ["none", *faults]
    assert out["drained_s"] is not None, out  # every acknowledged frame reached an end in the cloud
    for name, row in rows.items():
        assert row["acked"] > 0, (name, row)
        assert row["lost"] == 0, (name, row["lost_frames"])
        assert row["doubled"] == 0, (name, row["doubled_frames"])
        assert row["revived"] == [], (name, row["revived"])  # no service died that was not killed
        for kind in ("shed", "dead_lettered", "edge_dropped"):
            assert all(reason and reason != "(no reason)" for reason in row[kind]), (name, kind, row[kind])
        # every frame the edge extracted ended somewhere: acked, or dropped on the edge with a reason
        assert row["captured"] == row["acked"] + sum(row["edge_dropped"].values()) + row["never_resolved"], row
        assert row["never_resolved"] == 0, (name, row)  # only an edge killed holding frames leaves any
    for name in faults:
        assert rows[name]["recovery_s"] is not None, (name, rows[name])
    # the link cut was felt: the edge reconnected, and resent what the cut left unanswered
    assert rows["link_cut_10s"]["edge_reconnects"] >= 1, rows["link_cut_10s"]
    assert out["totals"]["lost"] == 0 and out["totals"]["doubled"] == 0, out["totals"]


@pytest.mark.unit
def test_the_ledger_counts_lost_doubled_and_reasons_per_phase():
    """The matrix's accounting itself: a frame acked with no end is lost, two records are doubled,
    every other end is counted with its reason, and frames fall in the phase that extracted them."""
    def out(cam, seq, outcome="acked", **kw):
        return {"camera": cam, "session": "s1", "seq": seq, "outcome": outcome, **kw}
    outcomes = {("c", "s1", q): [out("c", q)] for q in range(6)}
    outcomes[("c", "s1", 6)] = [out("c", 6, "rejected", error="INVALID_ARGUMENT: c: delta frame 6 no reference")]
    outcomes[("c", "s1", 7)] = [out("c", 7, "rejected", error="INVALID_ARGUMENT: c: delta frame 7 no reference")]
    ledger = {"outcomes": outcomes,
              "records": {("c", "s1", 0): 1, ("c", "s1", 1): 2, ("c", "s1", 4): 1, ("c", "s1", 5): 1},
              "shed": {("c", "s1", 2): "deadline"}, "dead": {("c", "s1", 3): "undecodable"}}
    row = account(ledger, set(outcomes) | {("c", "s1", 8)})
    assert row["lost"] == 0 and row["doubled"] == 1 and row["doubled_frames"] == [("c", "s1", 1)]
    assert row["shed"] == {"deadline": 1} and row["dead_lettered"] == {"undecodable": 1}
    assert row["edge_dropped"] == {"rejected: INVALID_ARGUMENT: c: delta frame N no reference": 2}
    assert row["never_resolved"] == 1 and row["captured"] == 9 and row["acked"] == 6
    del ledger["records"][("c", "s1", 5)]
    assert account(ledger, set(outcomes))["lost_frames"] == [("c", "s1", 5)]
    # phases: marks at seq 0 and 4; seq 9 is known only from the session's last counter
    phases = phase_frames(ledger, [{"c": ("s1", 0)}, {"c": ("s1", 4)}], {"s1": {"c": 10}}, ["s1"])
    assert [sorted(q for _, _, q in p) for p in phases] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9]]


@pytest.mark.unit
def test_crossings_per_phase_against_the_no_fault_rate():
    """A phase's crossings are those of its frames, live and reference side by side, and its live
    rate per 100 captured frames is set against the no-fault phase's rate."""
    live = Counter({("c", "s1", 1): 1, ("c", "s1", 3): 2, ("c", "s2", 0): 1})
    ref = Counter({("c", "s1", 1): 1, ("c", "s1", 3): 2, ("c", "s1", 5): 1, ("c", "s2", 0): 1})
    quiet = crossings_row(live, ref, {("c", "s1", q) for q in range(4)}, 4, None)
    assert quiet == {"crossings": 3, "crossings_reference": 3, "crossings_per_100_frames": 75.0,
                     "crossings_rate_vs_no_fault": None}
    fault = crossings_row(live, ref, {("c", "s1", 4), ("c", "s1", 5), ("c", "s2", 0)}, 3, 75.0)
    assert fault["crossings"] == 1 and fault["crossings_reference"] == 2  # one crossing analytics missed
    assert fault["crossings_per_100_frames"] == 33.33 and fault["crossings_rate_vs_no_fault"] == 0.44
    assert crossings_row(live, ref, set(), 0, 75.0)["crossings_per_100_frames"] is None
