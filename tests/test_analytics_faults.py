"""Hostile input to the analytics service over a real Redis (issue 11): a pickle planted as the
checkpoint runs nothing, poison records (not UTF-8, nested too deeply) are skipped and counted
while the camera goes on, and a frame dated in the future can neither be analysed nor freeze the
camera for the next session."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis

from split_infer import metrics
from split_infer.analytics.service import AnalyticsService, Settings
from split_infer.config import CameraConfig, CloudConfig
from split_infer.keys import Keys
from support.analytics import LINE, feed, street_records
from test_analytics_checkpoint import exploit_pickle

pytestmark = pytest.mark.redis


def service(r: redis.Redis, keys: Keys) -> AnalyticsService:
    cfg = CloudConfig(cameras=[CameraConfig(id="street", url="x", lines=[LINE])])
    return AnalyticsService(r, cfg, Settings(consumer="a", reorder_wait_s=0.2, block_ms=20, discover=False),
                            keys=keys)


def drive(svc: AnalyticsService, r: redis.Redis, frames: int, timeout: float = 30) -> dict[str, str]:
    """Step until the counts hash shows `frames` analysed and nothing is pending; the counts."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        svc.step()
        counts = {k.decode(): v.decode() for k, v in r.hgetall(svc.keys.counts("street")).items()}
        pending = r.xpending(svc.keys.detections_stream("street"), svc.keys.ANALYTICS_GROUP)["pending"]
        if counts.get("frames") == str(frames) and not pending and not svc.owned["street"].buffer:
            return counts
    pytest.fail(f"the service did not analyse {frames} frames in {timeout} s "
                f"(counts {r.hgetall(svc.keys.counts('street'))})")


def metric(counter, **labels) -> float:
    return counter.labels(**labels)._value.get()


def test_a_pickle_planted_as_the_checkpoint_runs_nothing(r, keys, tmp_path, caplog):
    marker = tmp_path / "pwned"
    r.set(keys.analytics_state("street"), exploit_pickle(str(marker)))
    feed(r, keys, street_records()[:50])
    before = metric(metrics.ANALYTICS_CHECKPOINTS, outcome="unreadable")
    with caplog.at_level(logging.ERROR):
        counts = drive(service(r, keys), r, frames=50)
    assert not marker.exists()
    assert metric(metrics.ANALYTICS_CHECKPOINTS, outcome="unreadable") == before + 1
    assert "CHECKPOINT UNREADABLE" in caplog.text and "not a JSON checkpoint" in caplog.text
    assert counts["seq"] == "49"  # started afresh, and analysed everything
    assert r.get(keys.analytics_state("street")).startswith(b'{"format":"split-infer analytics checkpoint"')
    # The checkpoint it wrote reads back on a restart.
    svc2 = service(r, keys)
    svc2.step()
    assert svc2.owned["street"].analytics.last_seq == 49


def test_poison_records_are_skipped_counted_and_the_camera_goes_on(r, keys, caplog):
    records = street_records()[:60]
    stream = keys.detections_stream("street")
    feed(r, keys, records[:20])
    bad_utf8 = r.xadd(stream, {**records[20], "detections": b"[\xff\xfe]"})
    bad_key = r.xadd(stream, {**{k: str(v) for k, v in records[21].items()}, b"\xc3\x28": b"1"})
    deep = r.xadd(stream, {**records[22], "detections": "[" * 100_000 + "]" * 100_000})
    deep_obj = r.xadd(stream, {**records[23], "timings": '{"a":' * 50_000 + "1" + "}" * 50_000})
    feed(r, keys, records[24:])
    before = metric(metrics.ANALYTICS_REJECTED, reason="malformed")
    with caplog.at_level(logging.ERROR):
        counts = drive(service(r, keys), r, frames=56)
    assert counts["rejected_records"] == "4" and counts["seq"] == "59" and counts["skipped_frames"] == "4"
    assert metric(metrics.ANALYTICS_REJECTED, reason="malformed") == before + 4
    for entry in (bad_utf8, bad_key, deep, deep_obj):
        assert caplog.text.count(entry.decode()) == 1  # logged once, with its id
    assert "not UTF-8" in caplog.text and "nested too deeply" in caplog.text


def test_a_frame_dated_in_the_future_is_rejected_and_freezes_nothing(r, keys, caplog):
    now = time.time()
    records = [{**rec, "capture_ts": repr(now - 60 + rec["capture_ts"])} for rec in street_records()[:40]]
    first = [{**rec, "session": "s1"} for rec in records[:20]]
    future = {**records[20], "session": "s1", "seq": 20, "capture_ts": repr(now + 10 * 365 * 86400)}
    second = [{**rec, "session": "s2", "seq": rec["seq"] - 21} for rec in records[21:]]
    feed(r, keys, [*first, future, *second])
    before = metric(metrics.ANALYTICS_REJECTED, reason="future")
    with caplog.at_level(logging.ERROR):
        counts = drive(service(r, keys), r, frames=39)
    assert counts["rejected_records"] == "1" and metric(metrics.ANALYTICS_REJECTED, reason="future") == before + 1
    assert "ahead of this host's clock" in caplog.text
    assert counts["seq"] == "18"  # the new session's last frame


def test_a_session_ahead_of_the_clock_does_not_freeze_the_next_one(r, keys, caplog):
    """Session s1 is dated 200 s ahead (within the tolerance), then the edge restarts with a right
    clock: s2 is analysed from its first frame, and a straggler of s1 is dropped as late, said once."""
    now = time.time()
    records = street_records()[:80]
    ahead = [{**rec, "session": "s1", "capture_ts": repr(now + 200 + rec["capture_ts"])} for rec in records[:40]]
    right = [{**rec, "session": "s2", "seq": rec["seq"] - 40, "capture_ts": repr(now + rec["capture_ts"])}
             for rec in records[40:]]
    feed(r, keys, ahead)
    svc = service(r, keys)
    drive(svc, r, frames=40)
    feed(r, keys, right[:20] + [ahead[30]] + right[20:])
    with caplog.at_level(logging.WARNING):
        counts = drive(svc, r, frames=80)
    assert counts["seq"] == "39" and counts["rejected_records"] == "0"
    assert "tracking restarts at its time" in caplog.text
    assert "dropping late frames of session 's1'" in caplog.text
    assert json.loads(counts["per_minute_history"])  # the rolling figures go on at s2's time
