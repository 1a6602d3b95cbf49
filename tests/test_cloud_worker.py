"""Cloud workers on a real Redis: idempotent records, dead letters, a SIGKILLed worker, Redis restarts,
and the real YOLO head giving the same detections as the in-process head."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from prometheus_client import REGISTRY

from split_infer.batching.cost import CostModel
from split_infer.batching.policy import make_policy
from split_infer.cloud.head import yolo_head
from split_infer.cloud.worker import Worker
from split_infer.codec import make_decoder, make_encoder
from split_infer.config import CloudConfig
from split_infer.keys import Keys
from support.cloud import REAL_IMGSZ, features, real_features
from support.data import shared_file
from support.processes import Services
from support.redisdb import RedisServer
from support.wait import wait_for

pytestmark = pytest.mark.redis


def cfg(**worker) -> CloudConfig:
    w = {"claim_idle_ms": 300, "claim_interval_s": 0.1, "block_ms": 50, "streams_refresh_s": 0.1, **worker}
    return CloudConfig(redis_url="redis://127.0.0.1:6379/0", worker=w)


def enqueue(r: redis.Redis, keys: Keys, cam: str, seqs, session: str = "s1", payloads=None) -> None:
    """What the ingest writes (tests of the ingest itself are in test_cloud_ingest.py)."""
    try:
        r.xgroup_create(keys.frames_stream(cam), keys.FRAMES_GROUP, id="0", mkstream=True)
    except redis.ResponseError:
        pass
    r.sadd(keys.cameras, cam)
    for i, seq in enumerate(seqs):
        payload = payloads[i] if payloads else make_encoder("q8-zstd").encode(features(seq))
        w, h = (payload[1], payload[2]) if isinstance(payload, tuple) else (640, 360)
        payload = payload[0] if isinstance(payload, tuple) else payload
        r.xadd(keys.frames_stream(cam), {"camera": cam, "session": session, "seq": seq,
                                         "capture_ts": repr(time.time()), "ingest_ts": repr(time.time()),
                                         "width": w, "height": h, "payload": payload, "timings": "{}"})


def fake_head(feats, sizes):
    """Deterministic stand-in: one 'detection' per frame whose score is the frame's feature mean."""
    x = feats["x4"]
    return [[{"class_id": 2, "class_name": "car", "score": float(x[i].mean()), "box": [0, 0, w, h]}]
            for i, (w, h) in enumerate(sizes)]


def records(r: redis.Redis, keys: Keys, cam: str) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(keys.detections_stream(cam))]


def run_until(worker: Worker, cond, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "worker did not finish in time"
        worker.step()


def settled(r: redis.Redis, keys: Keys, cams) -> bool:
    return all(r.xlen(keys.frames_stream(c)) == 0 for c in cams)


def redis_up() -> float | None:
    """The worker's `redis_up` gauge as its /metrics would show it (the Worker runs in this process)."""
    return REGISTRY.get_sample_value("splitinfer_redis_up", {"service": "worker"})


def test_each_frame_gives_exactly_one_record_even_when_redelivered(r, keys):
    enqueue(r, keys, "cam-a", range(10))
    enqueue(r, keys, "cam-b", range(5))
    w = Worker(cfg(max_batch=4), r, fake_head, name="w1", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a", "cam-b"]))
    recs = records(r, keys, "cam-a")
    assert [int(x["seq"]) for x in recs] == list(range(10))
    assert len(records(r, keys, "cam-b")) == 5
    want = make_decoder().decode(make_encoder("q8-zstd").encode(features(3)))["x4"].mean()
    assert abs(json.loads(recs[3]["detections"])[0]["score"] - want) < 1e-6
    assert all(float(x["done_ts"]) >= float(x["capture_ts"]) for x in recs)

    # The same frames again (an ingest that re-queued them after losing an ack): no second record.
    enqueue(r, keys, "cam-a", range(10))
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    assert len(records(r, keys, "cam-a")) == 10 and w.duplicates == 10
    # A new edge session restarts seq at 0: those are new frames.
    enqueue(r, keys, "cam-a", range(3), session="s2")
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    assert [(x["session"], int(x["seq"])) for x in records(r, keys, "cam-a")][-3:] == [("s2", 0), ("s2", 1),
                                                                                       ("s2", 2)]
    assert r.xpending(keys.frames_stream("cam-a"), keys.FRAMES_GROUP)["pending"] == 0


def test_a_camera_that_appears_is_read_at_once_not_at_the_next_full_refresh(r, keys):
    # A full refresh only every 60 s: the worker must still see a new camera within a step or two,
    # or a tight latency objective sheds that camera's first frames.
    w = Worker(cfg(streams_refresh_s=60.0), r, fake_head, name="w1", keys=keys)
    w.step()  # the first, full refresh: no camera yet
    assert w.frames.cameras == {}
    enqueue(r, keys, "cam-new", range(3))
    t0 = time.monotonic()
    run_until(w, lambda: settled(r, keys, ["cam-new"]), timeout=5.0)
    assert time.monotonic() - t0 < 2.0
    assert [int(x["seq"]) for x in records(r, keys, "cam-new")] == [0, 1, 2]


def test_live_subscribers_get_each_record(r, keys):
    sub = r.pubsub()
    sub.subscribe(keys.live_detections)
    sub.get_message(timeout=1)
    enqueue(r, keys, "cam-a", range(3))
    w = Worker(cfg(), r, fake_head, name="w1", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    got = []
    deadline = time.time() + 5
    while len(got) < 3 and time.time() < deadline:
        m = sub.get_message(timeout=0.5)
        if m and m["type"] == "message":
            got.append(json.loads(m["data"]))
    assert [g["seq"] for g in got] == [0, 1, 2] and got[0]["detections"][0]["class_name"] == "car"
    sub.close()


def test_corrupt_payloads_go_to_the_dead_letter_stream_and_the_worker_carries_on(r, keys):
    good = make_encoder("q8-zstd").encode(features(0))
    bad = bytearray(good)
    bad[30] ^= 0x55
    enqueue(r, keys, "cam-a", [0, 1, 2, 3], payloads=[good, bytes(bad), b"garbage", good])
    r.xadd(keys.frames_stream("cam-a"), {"camera": "cam-a", "payload": good})  # lacks seq/size fields
    w = Worker(cfg(), r, fake_head, name="w1", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    assert [int(x["seq"]) for x in records(r, keys, "cam-a")] == [0, 3]
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(keys.dead_letter_stream("cam-a"))]
    reasons = {d["seq"]: d["reason"] for d in dead}
    assert set(reasons) == {"1", "2", ""} and len(dead) == 3
    assert "checksum" in reasons["1"] and "truncated" in reasons["2"] and "lacks field 'seq'" in reasons[""]
    assert r.xpending(keys.frames_stream("cam-a"), keys.FRAMES_GROUP)["pending"] == 0


def test_a_frame_that_keeps_failing_is_retried_then_dead_lettered(r, keys):
    enqueue(r, keys, "cam-a", range(4))
    poison = make_decoder().decode(make_encoder("q8-zstd").encode(features(2)))["x4"].mean()

    def flaky_head(feats, sizes):
        if any(abs(feats["x4"][i].mean() - poison) < 1e-9 for i in range(len(sizes))):
            raise RuntimeError("head crashed on this frame")
        return fake_head(feats, sizes)

    w = Worker(cfg(max_batch=1, max_deliveries=3), r, flaky_head, name="w1", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a"]), timeout=30)
    assert [int(x["seq"]) for x in records(r, keys, "cam-a")] == [0, 1, 3]
    dead = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(keys.dead_letter_stream("cam-a"))]
    assert [d["seq"] for d in dead] == ["2"] and "delivered 4 times" in dead[0]["reason"]


def test_pending_frames_of_a_dead_consumer_are_claimed(r, keys):
    enqueue(r, keys, "cam-a", range(6))
    # A worker read 4 frames and died before writing anything.
    r.xreadgroup(keys.FRAMES_GROUP, "dead-worker", {keys.frames_stream("cam-a"): ">"}, count=4)
    w = Worker(cfg(), r, fake_head, name="w2", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    assert sorted(int(x["seq"]) for x in records(r, keys, "cam-a")) == list(range(6))
    assert r.xpending(keys.frames_stream("cam-a"), keys.FRAMES_GROUP)["pending"] == 0


@pytest.mark.e2e
@pytest.mark.parametrize("persistent", [True, False])
def test_worker_survives_a_redis_restart(keys, tmp_path, persistent):
    srv = RedisServer(tmp_path, appendonly=persistent)
    srv.start()
    stop = threading.Event()
    try:
        rr = redis.Redis.from_url(srv.url, socket_connect_timeout=1, socket_timeout=2)
        c = cfg().model_copy(update={"redis_url": srv.url})
        w = Worker(c, rr, fake_head, name="w1", keys=keys)
        t = threading.Thread(target=w.run, args=(stop,), daemon=True)
        t.start()
        enqueue(rr, keys, "cam-a", range(3))
        wait_for(lambda: len(records(rr, keys, "cam-a")) >= 3, 10, "the first 3 records")
        srv.stop()
        wait_for(lambda: redis_up() == 0, 10, "the worker to see the outage")
        assert t.is_alive() and redis_up() == 0
        srv.start()
        if persistent:
            enqueue(rr, keys, "cam-a", range(3, 6))
        else:  # Redis came back empty: frames arrive before anyone recreated the consumer group
            rr.sadd(keys.cameras, "cam-a")
            for seq in range(3, 6):
                rr.xadd(keys.frames_stream("cam-a"), {"camera": "cam-a", "session": "s1", "seq": seq,
                                                      "capture_ts": repr(time.time()), "width": 640,
                                                      "height": 360, "payload": make_encoder("q8-zstd").encode(
                                                          features(seq))})
        want = list(range(6)) if persistent else [3, 4, 5]
        wait_for(lambda: len(records(rr, keys, "cam-a")) >= len(want), 15, "the worker to resume after Redis came back")
        assert [int(x["seq"]) for x in records(rr, keys, "cam-a")] == want
        wait_for(lambda: redis_up() == 1, 5, "the worker to report Redis reachable again")
        assert t.is_alive() and redis_up() == 1
    finally:
        stop.set()
        srv.stop()


def start_worker(services: Services, cfg_path: Path, name: str, prefix: str) -> None:
    services.start(name, "cloud", "worker", "--config", str(cfg_path), "--name", name, "--log-level", "WARNING",
                   env={"SPLIT_INFER_PREFIX": prefix})


@pytest.mark.e2e
def test_sigkill_mid_run_loses_and_doubles_nothing_with_the_real_head(r, keys, prefix, tmp_path):
    n = 48
    frames = real_features(n)
    model = {"name": str(shared_file("yolov5n.pt")), "cut": 4, "imgsz": list(REAL_IMGSZ)}
    # Frames are queued before the workers start: a generous objective keeps the adaptive policy
    # from shedding them (shedding is tested above); this test is about claiming.
    conf = {"redis_url": "redis://127.0.0.1:6379/0", "model": model, "head_runtime": "openvino",
            "latency_slo_ms": 600_000,
            "worker": {"max_batch": 4, "claim_idle_ms": 1500, "claim_interval_s": 0.3, "block_ms": 100,
                       "streams_refresh_s": 0.2}}
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(conf))
    cams = ["cam-a", "cam-b"]
    for i, cam in enumerate(cams):
        enqueue(r, keys, cam, range(n // 2), payloads=frames[i * n // 2:(i + 1) * n // 2])
    services = Services(tmp_path)

    def a_mid_run() -> bool:
        """A has written some records and holds a batch in flight: the moment to kill it."""
        assert not services.exited("worker-a"), services.log("worker-a")[-3000:]
        done = sum(r.xlen(keys.detections_stream(c)) for c in cams)
        held = sum(p["pending"] for c in cams
                   for p in r.xinfo_consumers(keys.frames_stream(c), keys.FRAMES_GROUP)
                   if p["name"] == b"worker-a")
        return done >= 6 and held > 0

    def b_done() -> bool:
        assert not services.exited("worker-b"), services.log("worker-b")[-3000:]
        return settled(r, keys, cams) and not r.xpending(keys.frames_stream(cams[0]), keys.FRAMES_GROUP)["pending"]

    try:
        start_worker(services, path, "worker-a", prefix)
        wait_for(a_mid_run, 120, "worker A to get going", every=0.01)
        services.kill("worker-a")
        orphaned = set()  # frames A had taken but not finished when it died
        for c in cams:
            for p in r.xpending_range(keys.frames_stream(c), keys.FRAMES_GROUP, "-", "+", 100, "worker-a"):
                for _, f in r.xrange(keys.frames_stream(c), p["message_id"], p["message_id"]):
                    orphaned.add((c, int(f[b"seq"])))
        start_worker(services, path, "worker-b", prefix)
        wait_for(b_done, 180, "worker B to finish the queue")
    finally:
        services.stop_all()
    workers = set()
    got = {}
    for cam in cams:
        recs = records(r, keys, cam)
        seqs = [int(x["seq"]) for x in recs]
        assert sorted(seqs) == list(range(n // 2)), f"{cam}: lost or doubled frames: {sorted(seqs)}"
        workers |= {x["worker"] for x in recs}
        got.update({(cam, int(x["seq"])): json.loads(x["detections"]) for x in recs})
    assert workers == {"worker-a", "worker-b"}
    by = {(c, int(x["seq"])): x["worker"] for c in cams for x in records(r, keys, c)}
    assert orphaned and all(by[k] == "worker-b" for k in orphaned), orphaned  # B claimed A's frames
    assert all(r.xlen(keys.dead_letter_stream(c)) == 0 for c in cams)

    # Same detections as the head in this process on the same frames, one at a time.
    head = yolo_head(CloudConfig.model_validate({"model": model, "head_runtime": "openvino"}))
    cars = 0
    for i, cam in enumerate(cams):
        for seq in range(n // 2):
            payload, w, h = frames[i * n // 2 + seq]
            want = head(make_decoder().decode(payload), [(w, h)])[0]
            have = got[(cam, seq)]
            assert [d["class_id"] for d in have] == [d["class_id"] for d in want], (cam, seq)
            for a_, b_ in zip(have, want, strict=True):
                assert abs(a_["score"] - b_["score"]) < 1e-3
                assert np.allclose(a_["box"], b_["box"], atol=0.5)
            cars += sum(d["class_name"] == "car" for d in have)
    assert cars > 0  # real traffic footage: the head does see cars


def test_adaptive_policy_sheds_late_frames_once_and_runs_fresh_ones(r, keys):
    policy = make_policy("adaptive", slo_ms=200, max_batch=4, cost=CostModel({1: 5.0, 2: 10.0, 4: 20.0}))
    enqueue(r, keys, "cam-a", range(4))
    stale = time.time() - 5  # captured 5 s ago: cannot meet a 200 ms objective any more
    for seq in range(4, 7):
        r.xadd(keys.frames_stream("cam-a"), {"camera": "cam-a", "session": "s1", "seq": seq,
                                             "capture_ts": repr(stale), "ingest_ts": repr(stale + 0.01),
                                             "width": 640, "height": 360, "timings": "{}",
                                             "payload": make_encoder("q8-zstd").encode(features(seq))})
    w = Worker(cfg(max_batch=4), r, fake_head, policy=policy, name="w1", keys=keys)
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    done = sorted(int(x["seq"]) for x in records(r, keys, "cam-a"))
    dropped = [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange(keys.dropped_stream("cam-a"))]
    assert done == [0, 1, 2, 3]
    assert sorted(int(d["seq"]) for d in dropped) == [4, 5, 6] and {d["reason"] for d in dropped} == {"deadline"}
    # Redelivered shed frames stay shed once: no record, no second drop.
    r.xadd(keys.frames_stream("cam-a"), {"camera": "cam-a", "session": "s1", "seq": 5, "capture_ts": repr(stale),
                                         "ingest_ts": repr(stale), "width": 640, "height": 360,
                                         "payload": make_encoder("q8-zstd").encode(features(5))})
    run_until(w, lambda: settled(r, keys, ["cam-a"]))
    assert r.xlen(keys.dropped_stream("cam-a")) == 3 and len(records(r, keys, "cam-a")) == 4
