"""The analytics service over a real Redis: end to end on the street detections, out-of-order
and redelivered records, malformed records, crashes and restarts without double counting, lease
takeover by a second instance, and the `split-infer analytics` command as a process."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import redis

from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.service import AnalyticsService, Settings
from split_infer.config import CameraConfig, CloudConfig
from split_infer.keys import Keys
from support.analytics import HAND, LINE, feed, street_records
from support.processes import Services
from support.redisdb import RedisServer
from support.wait import wait_for

pytestmark = pytest.mark.redis

ZONE = {"name": "lower", "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}


def config() -> CloudConfig:
    return CloudConfig(cameras=[CameraConfig(id="street", url="x", lines=[LINE], zones=[ZONE])])


def service(r: redis.Redis, keys: Keys, consumer: str = "a", **kw) -> AnalyticsService:
    s = Settings(consumer=consumer, reorder_wait_s=kw.pop("reorder_wait_s", 0.2), block_ms=20, discover=False, **kw)
    return AnalyticsService(r, config(), s, keys=keys)


def drive(svc: AnalyticsService, r: redis.Redis, last_seq: int, timeout: float = 60) -> None:
    """Step the service until the camera's counts show last_seq processed and nothing is pending."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        svc.step()
        seq = r.hget(svc.keys.counts("street"), "seq")
        if seq is not None and int(seq) == last_seq and not svc.owned["street"].buffer:
            return
    pytest.fail(f"the service did not reach seq {last_seq} in {timeout} s "
                f"(at {r.hget(svc.keys.counts('street'), 'seq')})")


def crossings(r: redis.Redis, keys: Keys) -> list[tuple[int, int, str]]:
    out = []
    for _, f in r.xrange(keys.events_stream("street")):
        f = {k.decode(): v.decode() for k, v in f.items()}
        if f["type"] == "line_cross":
            out.append((int(f["seq"]), int(f["track_id"]), f["direction"]))
    return out


def pending(r: redis.Redis, keys: Keys) -> int:
    return r.xpending(keys.detections_stream("street"), keys.ANALYTICS_GROUP)["pending"]


def test_end_to_end_on_the_street_detections(r, keys):
    records = street_records()
    sub = r.pubsub()
    sub.subscribe(keys.live_events)
    feed(r, keys, records)
    svc = service(r, keys)
    drive(svc, r, last_seq=len(records) - 1)
    got = crossings(r, keys)
    assert len(got) == 7 and sorted(d for *_, d in got) == ["in"] * 3 + ["out"] * 4
    assert all(any(d == hd and abs(s - hs) <= 8 for hs, hd in HAND) for s, _, d in got)
    counts = {k.decode(): v.decode() for k, v in r.hgetall(keys.counts("street")).items()}
    assert counts["line:road:in:car"] == "3" and counts["line:road:out:car"] == "4"
    assert counts["frames"] == str(len(records)) and counts["skipped_frames"] == "0"
    assert counts["congestion"] in ("empty", "free", "moderate", "heavy", "jammed")
    assert int(counts["zone:lower:entries:car"]) >= 3  # the cars of the lower lane pass the zone
    assert json.loads(counts["per_minute_history"])[0]["crossings"]["car"] >= 5
    assert pending(r, keys) == 0  # everything acked
    # The live channel carried every event, as JSON with the stream id.
    live = []
    end = time.monotonic() + 5
    while time.monotonic() < end and len(live) < r.xlen(keys.events_stream("street")):
        m = sub.get_message(timeout=0.5)
        if m and m["type"] == "message":
            live.append(json.loads(m["data"]))
    assert len(live) == r.xlen(keys.events_stream("street"))
    assert sum(e["type"] == "line_cross" for e in live) == 7 and all("id" in e for e in live)
    sub.close()


def test_out_of_order_and_redelivered_records_give_the_same_counts(r, keys):
    records = street_records()
    rng = random.Random(6)
    shuffled = []
    for i in range(0, len(records), 6):  # several workers: each window of 6 frames lands in any order
        window = records[i:i + 6]
        rng.shuffle(window)
        shuffled += window
    dups = rng.sample(records, 40)  # and 40 frames written twice (a redelivered worker batch)
    feed(r, keys, shuffled[:400] + dups[:20] + shuffled[400:] + dups[20:])
    svc = service(r, keys, reorder_wait_s=5.0)  # generous: a gap must be filled, not skipped
    drive(svc, r, last_seq=len(records) - 1)
    got = crossings(r, keys)
    assert sorted((s, d) for s, _, d in got) == [(42, "out"), (121, "in"), (139, "out"), (250, "out"),
                                                 (291, "out"), (446, "in"), (621, "in")]
    counts = r.hgetall(keys.counts("street"))
    assert counts[b"frames"] == str(len(records)).encode() and counts[b"skipped_frames"] == b"0"
    assert pending(r, keys) == 0


def test_gap_is_skipped_after_the_reorder_wait(r, keys):
    records = street_records()[:30]
    feed(r, keys, records[:10] + records[11:])  # seq 10 never arrives
    svc = service(r, keys, reorder_wait_s=0.3)
    t0 = time.monotonic()
    drive(svc, r, last_seq=29)
    assert time.monotonic() - t0 >= 0.3
    assert r.hget(keys.counts("street"), "skipped_frames") == b"1"
    assert r.hget(keys.counts("street"), "frames") == b"29"


def test_malformed_record_is_rejected_acked_and_loses_nothing_else(r, keys, caplog):
    records = street_records()[:60]
    feed(r, keys, records[:20])
    r.xadd(keys.detections_stream("street"), {"camera": "street", "seq": "x", "detections": "[]"})
    r.xadd(keys.detections_stream("street"), {**records[20], "detections": "[{\"box\": 1}]"})
    feed(r, keys, records[21:])
    svc = service(r, keys, reorder_wait_s=0.2)
    drive(svc, r, last_seq=59)
    counts = r.hgetall(keys.counts("street"))
    assert counts[b"rejected_records"] == b"2" and counts[b"frames"] == b"59" and counts[b"skipped_frames"] == b"1"
    assert pending(r, keys) == 0
    assert "rejecting detection record" in caplog.text and "bad value" in caplog.text


class Crash(Exception):
    pass


def test_crash_after_commit_before_ack_does_not_count_twice(r, keys):
    records = street_records()
    feed(r, keys, records[:300])
    svc = service(r, keys)
    real_xack = svc.r.xack
    calls = {"n": 0}

    def flaky_xack(*a):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash("killed between EXEC and XACK")
        return real_xack(*a)

    svc.r = redis.Redis(connection_pool=r.connection_pool)
    svc.r.xack = flaky_xack
    with pytest.raises(Crash):
        for _ in range(200):
            svc.step()
    assert pending(r, keys) > 0  # the crashed batch is committed but still pending
    # A new process with the same consumer name: it owns its lease at once and replays its PEL.
    svc2 = service(r, keys)
    feed(r, keys, records[300:])
    drive(svc2, r, last_seq=len(records) - 1)
    got = crossings(r, keys)
    assert sorted((s, d) for s, _, d in got) == [(42, "out"), (121, "in"), (139, "out"), (250, "out"),
                                                 (291, "out"), (446, "in"), (621, "in")]
    assert r.hget(keys.counts("street"), "frames") == str(len(records)).encode()
    assert pending(r, keys) == 0


def test_crash_before_commit_replays_from_the_checkpoint(r, keys):
    records = street_records()
    feed(r, keys, records)
    svc = service(r, keys)
    end = time.monotonic() + 30
    while r.hget(keys.counts("street"), "seq") is None and time.monotonic() < end:
        svc.step()  # until a first batch is committed (a checkpoint exists)
    # The next commit dies inside the transaction: nothing of it lands.
    svc.r = redis.Redis(connection_pool=r.connection_pool)
    original = svc.r.pipeline

    def broken_pipeline(*a, **kw):
        p = original(*a, **kw)
        p.execute = lambda *a, **kw: (_ for _ in ()).throw(Crash("killed inside MULTI"))
        return p

    svc.r.pipeline = broken_pipeline
    with pytest.raises(Crash):
        for _ in range(200):
            svc.step()
    seq_before = int(r.hget(keys.counts("street"), "seq"))
    svc2 = service(r, keys)
    drive(svc2, r, last_seq=len(records) - 1)
    assert seq_before < len(records) - 1
    assert len(crossings(r, keys)) == 7
    assert r.hget(keys.counts("street"), "frames") == str(len(records)).encode()


def test_second_instance_takes_over_when_the_lease_expires(r, keys):
    records = street_records()
    feed(r, keys, records[:200])
    a = service(r, keys, consumer="a", lease_ms=600, renew_s=0.1)
    b = service(r, keys, consumer="b", lease_ms=600, renew_s=0.1)
    for _ in range(5):
        a.step()
        b.step()
    assert "street" in a.owned and "street" not in b.owned
    # a reads a batch, then stalls before committing it: its records stay pending under "a".
    feed(r, keys, records[200:])
    stolen = a.r.xreadgroup(keys.ANALYTICS_GROUP, "a", {keys.detections_stream("street"): ">"}, count=50)
    assert len(stolen[0][1]) == 50
    time.sleep(0.7)  # deliberate: a's 600 ms lease must run out
    drive(b, r, last_seq=len(records) - 1)
    assert "street" in b.owned
    assert len(crossings(r, keys)) == 7 and pending(r, keys) == 0
    # a comes back: the commit fence keeps it from writing over b.
    a.step()
    assert "street" not in a.owned


@pytest.mark.e2e
def test_the_command_runs_as_a_process(r, keys, prefix, tmp_path):
    records = street_records()[:320]
    feed(r, keys, records)
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(json.dumps({"cameras": [{"id": "street", "url": "x", "lines": [LINE]}]}))
    services = Services(tmp_path)
    services.start("analytics", "analytics", "--config", str(cfg), "--consumer", "proc", "--reorder-wait", "0.2",
                   env={"SPLIT_INFER_PREFIX": prefix})
    try:
        wait_for(lambda: r.hget(keys.counts("street"), "seq") == b"319", 60, "the analytics to reach seq 319")
        assert r.hget(keys.counts("street"), "seq") == b"319"
        assert sorted((s, d) for s, _, d in crossings(r, keys)) == [(42, "out"), (121, "in"), (139, "out"),
                                                              (250, "out"), (291, "out")]
    finally:
        returncode = services.terminate("analytics", timeout=20)
    out = services.log("analytics")
    assert returncode == 0, out
    assert "analysing camera street" in out


@pytest.mark.e2e
def test_redis_restart_pauses_and_loses_nothing(prefix, tmp_path):
    """A private redis-server (append-only) is stopped and started under the running service."""
    server = RedisServer(tmp_path)
    server.start()
    rr = redis.Redis.from_url(server.url)
    keys = Keys(prefix)
    svc = service(redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1), keys)
    stop = threading.Event()
    worker = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    records = street_records()
    try:
        feed(rr, keys, records[:250])
        worker.start()
        wait_for(lambda: rr.hget(keys.counts("street"), "seq") == b"249", 30, "the service to reach seq 249")
        assert rr.hget(keys.counts("street"), "seq") == b"249"
        server.stop()
        time.sleep(1.5)  # deliberate: the service must see Redis down and retry a few times
        assert worker.is_alive()
        server.start()
        rr = redis.Redis.from_url(server.url)
        feed(rr, keys, records[250:])
        last = str(len(records) - 1).encode()
        wait_for(lambda: rr.hget(keys.counts("street"), "seq") == last, 60, "the service to reach the last seq")
        assert rr.hget(keys.counts("street"), "frames") == str(len(records)).encode()
        assert sorted((s, d) for s, _, d in crossings(rr, keys)) == [(42, "out"), (121, "in"), (139, "out"),
                                                                     (250, "out"), (291, "out"), (446, "in"),
                                                                     (621, "in")]
        assert pending(rr, keys) == 0
    finally:
        stop.set()
        worker.join(10)
        server.stop()


def test_discovered_cameras_are_analysed_and_bad_ids_ignored(r, keys, caplog):
    r.sadd(keys.cameras, "street", "bad id with spaces/")
    feed(r, keys, street_records()[:50])
    svc = AnalyticsService(r, CloudConfig(), Settings(consumer="d", reorder_wait_s=0.1, block_ms=20), keys=keys)
    drive(svc, r, last_seq=49)
    assert set(svc.owned) == {"street"}
    assert r.hget(keys.counts("street"), "per_minute_basis") == b"tracks"  # no lines configured
    assert "not a valid camera id" in caplog.text


def test_long_steps_keep_their_leases(r, keys, caplog, monkeypatch):
    """Three busy cameras and slow frames: the leases are renewed between cameras within a step,
    so no camera is dropped (and re-processed from its checkpoint) in the middle of the work."""
    real = CameraAnalytics.process

    def slow(self, frame):
        time.sleep(0.003)  # deliberate: a slow frame
        return real(self, frame)

    monkeypatch.setattr(CameraAnalytics, "process", slow)
    records = street_records()[:200]
    ids = ["c0", "c1", "c2"]
    for cid in ids:
        feed(r, keys, [{**rec, "camera": cid} for rec in records])
    cfg = CloudConfig(cameras=[CameraConfig(id=c, url="x", lines=[LINE]) for c in ids])
    svc = AnalyticsService(r, cfg, Settings(consumer="slow", reorder_wait_s=0.1, block_ms=20, discover=False,
                                            lease_ms=800, renew_s=0.2), keys=keys)
    end = time.monotonic() + 60
    while time.monotonic() < end and any(r.hget(keys.counts(c), "seq") != b"199" for c in ids):
        svc.step()
    assert all(r.hget(keys.counts(c), "frames") == b"200" for c in ids)
    assert "lease" not in caplog.text


def test_edge_restart_new_session_restarts_seq_without_losing_frames(r, keys):
    """The edge restarts: a new session whose seq starts again at 0 is analysed, not taken for
    redeliveries; a straggler of the old session arriving afterwards is dropped as late."""
    records = street_records()[:200]
    first = [{**rec, "session": "s1"} for rec in records[:100]]
    second = [{**rec, "session": "s2", "seq": rec["seq"] - 100} for rec in records[100:]]  # capture_ts goes on
    feed(r, keys, first + second[:50])
    feed(r, keys, [first[60]])  # a late duplicate of the old session
    feed(r, keys, second[50:])
    svc = service(r, keys, reorder_wait_s=0.2)
    drive(svc, r, last_seq=99)
    counts = r.hgetall(keys.counts("street"))
    assert counts[b"frames"] == b"200" and counts[b"skipped_frames"] == b"0"
    assert sorted((s, d) for s, _, d in crossings(r, keys)) == sorted([(42, "out"), (121 - 100, "in"),
                                                                       (139 - 100, "out")])
    assert pending(r, keys) == 0


def test_a_deleted_stream_is_taken_again(r, keys):
    """Someone deletes a camera's detection stream (and so the group) under the running service:
    it recreates the group and goes on with the records that come next."""
    records = street_records()[:120]
    feed(r, keys, records[:60])
    svc = service(r, keys)
    stop = threading.Event()
    worker = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    worker.start()
    try:
        wait_for(lambda: r.hget(keys.counts("street"), "seq") == b"59", 30, "the service to reach seq 59")
        r.delete(keys.detections_stream("street"))
        # Only the service recreates the stream (with its group, mkstream) once it sees it gone.
        wait_for(lambda: r.exists(keys.detections_stream("street")), 30, "the service to take the stream again")
        feed(r, keys, records[60:])
        wait_for(lambda: r.hget(keys.counts("street"), "seq") == b"119", 30, "the service to reach seq 119")
        assert worker.is_alive()
        assert r.hget(keys.counts("street"), "frames") == b"120"
    finally:
        stop.set()
        worker.join(10)
