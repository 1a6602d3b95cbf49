"""The pipeline on a real Redis Cluster (six local redis-server processes, three primaries).

The key layout gives each camera one hash slot; the worker ends frames, sheds and dead-letters
per camera; reads over many cameras' streams work across slots; the whole pipeline (edge, ingest,
two workers, analytics, API) accounts for every frame; and a SIGKILLed worker loses and doubles
nothing. Cameras are picked so that their slots lie on every primary.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
import yaml
from redis.cluster import RedisCluster
from redis.crc import key_slot

from split_infer.apps.processes import free_port
from split_infer.batching.cost import CostModel
from split_infer.batching.policy import make_policy
from split_infer.cloud.worker import Worker
from split_infer.codec import make_encoder
from split_infer.config import CloudConfig
from split_infer.keys import Keys
from split_infer.records import AnalyticsCounts, QueuedFrame
from split_infer.redisconn import RedisUrlError, connect, connect_async, parse_redis_url
from split_infer.streams import create_group, read_group, read_streams_async
from support.api import api_server
from support.cloud import REAL_IMGSZ, features, real_features
from support.data import shared_file
from support.media import clip
from support.pipeline import Pipeline, duplicates
from support.processes import Services
from support.rediscluster import LocalCluster
from support.wait import wait_for

# -- the layout and the URL (no server) ------------------------------------------------------------


def per_camera_keys(keys: Keys, camera: str) -> dict[str, str]:
    """Every Keys method that takes a camera, called with it (new keys are covered without a change here)."""
    out = {}
    for name, fn in inspect.getmembers(Keys, inspect.isfunction):
        params = list(inspect.signature(fn).parameters)[1:]
        if params[:1] == ["camera"]:
            extra = {"session": "s1", "seq": 7, "day": "20260101"}
            out[name] = fn(keys, camera, *(extra[p] for p in params[1:]))
    return out


@pytest.mark.unit
def test_each_cameras_keys_share_one_slot_and_cameras_spread_over_slots():
    keys = Keys("si")
    by_camera = {c: per_camera_keys(keys, c) for c in ("cam-1", "street.north", "a")}
    assert {"frames_stream", "done_key", "dropped_stream", "dead_letter_stream", "analytics_owner"} <= set(
        by_camera["a"])
    for cam, named in by_camera.items():
        slots = {key_slot(k.encode()) for k in named.values()}
        assert len(slots) == 1, f"{cam}: keys in several slots: {named}"
        assert all(Keys.camera_of(k) == cam for k in named.values())
    # Different cameras land on many slots (a cluster spreads them); the global set is on its own.
    assert len({key_slot(keys.frames_stream(f"cam-{i}").encode()) for i in range(64)}) == 64
    with pytest.raises(ValueError, match="hold no"):
        Keys("si{x}")


@pytest.mark.unit
def test_cluster_urls_are_parsed_and_bad_ones_refused():
    t = parse_redis_url("redis+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001")
    assert t.cluster and t.url == "redis://user:p%40ss@10.0.0.1:7000" and t.seeds == (("10.0.0.1", 7000),
                                                                                        ("10.0.0.2", 7001))
    assert parse_redis_url("rediss+cluster://h:7000/0").url == "rediss://h:7000"
    assert not parse_redis_url("redis://127.0.0.1:6379/3").cluster
    for bad, why in [("redis+cluster://h:7000/2", "only database 0"), ("redis+cluster://h", "not host:port"),
                     ("http://h:1", "must start with"), ("redis+cluster://h:7000,h2:x", "not host:port")]:
        with pytest.raises(RedisUrlError, match=why):
            parse_redis_url(bad)
    with pytest.raises(ValueError, match="only database 0"):
        CloudConfig(redis_url="redis+cluster://127.0.0.1:7000/1")


@pytest.mark.unit
def test_an_unreachable_cluster_is_a_connection_error_as_for_one_server():
    """So the services' outage handling (the ingest's RETRY, the API's 503, backoff) applies unchanged."""
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with pytest.raises(redis.ConnectionError, match="cannot be connected"):
        connect(url, socket_connect_timeout=1)

    async def ping() -> None:
        client = connect_async(url, socket_connect_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()

    with pytest.raises(redis.ConnectionError, match="cannot be connected"):
        asyncio.run(ping())


# -- a real cluster ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def rc(cluster) -> RedisCluster:
    cluster.flush()
    return cluster.client()


def one_camera_per_primary(rc: RedisCluster, keys: Keys, stem: str = "cam") -> list[str]:
    """Camera ids whose slots lie on different primaries, one per primary."""
    chosen: dict[str, str] = {}
    for i in range(200):
        cam = f"{stem}-{i}"
        chosen.setdefault(rc.get_node_from_key(keys.frames_stream(cam)).name, cam)
    assert len(chosen) == len(rc.get_primaries()) == 3, chosen
    return sorted(chosen.values())


def enqueue(r, keys: Keys, cam: str, seqs, payloads=None, capture_ts: float | None = None) -> None:
    """What the ingest writes: the group, the camera in the set, then the frames."""
    create_group(r, keys.frames_stream(cam), keys.FRAMES_GROUP)
    r.sadd(keys.cameras, cam)
    for i, seq in enumerate(seqs):
        payload, w, h = payloads[i] if payloads else (make_encoder("q8-zstd").encode(features(seq)), 640, 360)
        ts = time.time() if capture_ts is None else capture_ts
        r.xadd(keys.frames_stream(cam), QueuedFrame(camera=cam, session="s1", seq=seq, capture_ts=ts, width=w,
                                                    height=h, payload=payload, ingest_ts=ts).to_fields())


def fake_head(feats, sizes):
    return [[{"class_id": 2, "class_name": "car", "score": 0.5, "box": [0, 0, w, h]}] for w, h in sizes]


def entries(r, stream: str) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items() if k != b"payload"} for _, f in r.xrange(stream)]


def cfg(**worker) -> CloudConfig:
    w = {"claim_idle_ms": 300, "claim_interval_s": 0.1, "block_ms": 50, "streams_refresh_s": 0.1, **worker}
    return CloudConfig(redis_url="redis+cluster://127.0.0.1:1", worker=w)  # the Worker gets its client


def run_until(worker: Worker, cond, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "the worker did not finish in time"
        worker.step()


@pytest.mark.unit
@pytest.mark.e2e
def test_worker_on_a_cluster_ends_each_frame_once_in_its_cameras_slot(rc):
    keys = Keys("w")
    cams = one_camera_per_primary(rc, keys)
    live = rc.pubsub()
    live.subscribe(keys.live_detections)
    for cam in cams:
        enqueue(rc, keys, cam, range(6))
    rc.xadd(keys.frames_stream(cams[0]), {"camera": cams[0], "payload": b"junk"})  # no seq: a dead letter
    rc.xreadgroup(keys.FRAMES_GROUP, "dead-worker", {keys.frames_stream(cams[1]): ">"}, count=2)  # then died
    w = Worker(cfg(max_batch=4), rc, fake_head, name="w1", keys=keys)

    def settled() -> bool:
        return all(rc.xlen(keys.frames_stream(c)) == 0 for c in cams)

    run_until(w, settled)
    for cam in cams:
        assert sorted(int(x["seq"]) for x in entries(rc, keys.detections_stream(cam))) == list(range(6)), cam
    dead = entries(rc, keys.dead_letter_stream(cams[0]))
    assert len(dead) == 1 and "lacks field 'seq'" in dead[0]["reason"]
    assert w.processed == 18
    # Redelivered frames (an ingest that lost its acks) add nothing.
    enqueue(rc, keys, cams[2], range(6))
    run_until(w, settled)
    assert len(entries(rc, keys.detections_stream(cams[2]))) == 6 and w.duplicates == 6
    got = []
    deadline = time.time() + 5
    while len(got) < 18 and time.time() < deadline:
        m = live.get_message(timeout=0.5)
        if m and m["type"] == "message":
            got.append(json.loads(m["data"]))
    assert sorted((g["camera"], g["seq"]) for g in got) == sorted((c, s) for c in cams for s in range(6))
    live.close()

    # Shed frames go to their camera's dropped stream, once.
    policy = make_policy("adaptive", slo_ms=200, max_batch=4, cost=CostModel({1: 5.0, 2: 10.0, 4: 20.0}))
    enqueue(rc, keys, cams[1], range(10, 13), capture_ts=time.time() - 5)  # too late for a 200 ms objective
    shedder = Worker(cfg(max_batch=4), rc, fake_head, policy=policy, name="w2", keys=keys)
    run_until(shedder, settled)
    dropped = entries(rc, keys.dropped_stream(cams[1]))
    assert sorted(int(d["seq"]) for d in dropped) == [10, 11, 12] and {d["reason"] for d in dropped} == {"deadline"}


@pytest.mark.unit
@pytest.mark.e2e
def test_reads_over_streams_in_different_slots_wait_and_wake(cluster, rc):
    keys = Keys("r")
    cams = one_camera_per_primary(rc, keys)
    streams = [keys.frames_stream(c) for c in cams]
    for s in streams:
        create_group(rc, s, "g")

    def getkeys_calls() -> int:
        return sum(cluster.node(p).info("commandstats").get("cmdstat_command|getkeys", {}).get("calls", 0)
                   for p in cluster.ports)

    before = getkeys_calls()
    t0 = time.monotonic()
    assert read_group(rc, "g", "c1", {s: ">" for s in streams}, 10, 300) == []
    assert 0.25 <= time.monotonic() - t0 < 2.0  # it waited about block_ms, then gave up
    assert getkeys_calls() == before, "each read names its node: no COMMAND GETKEYS round trip per stream"
    threading.Timer(0.3, lambda: rc.xadd(streams[2], {"n": 1})).start()
    t0 = time.monotonic()
    got = read_group(rc, "g", "c1", {s: ">" for s in streams}, 10, 5000)
    assert [s.decode() for s, _ in got] == [streams[2]] and time.monotonic() - t0 < 2.0  # woke on arrival
    for s in streams:
        rc.xadd(s, {"n": 2})

    async def read_all():
        client = connect_async(f"redis+cluster://127.0.0.1:{rc.get_default_node().port}")
        try:
            return await read_streams_async(client, {s: "0-0" for s in streams}, 10, 100)
        finally:
            await client.aclose()

    got = asyncio.run(read_all())
    assert sorted((s.decode(), len(e)) for s, e in got) == sorted([(streams[0], 1), (streams[1], 1), (streams[2], 2)])
    # SCAN walks every primary.
    assert {k.decode() for k in rc.scan_iter(match=keys.scan_pattern)} == set(streams)


# -- the whole pipeline on the cluster -------------------------------------------------------------

FRAMES = 12  # per camera: few, the machine has 2 cores


def sse_events(lines: Iterator[str], want, timeout: float) -> list[tuple[str, dict]]:
    """(event, data) pairs from the lines of a Server-Sent Events response until `want(events)`."""
    events: list[tuple[str, dict]] = []
    name = ""
    deadline = time.monotonic() + timeout
    for line in lines:
        if line.startswith("event:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            events.append((name, json.loads(line.split(":", 1)[1])))
            if want(events):
                return events
        assert time.monotonic() < deadline, f"timed out; got {[e for e, _ in events]}"
    return events


@pytest.mark.unit
@pytest.mark.e2e
def test_pipeline_on_a_cluster_accounts_for_every_frame(cluster, rc, tmp_path):
    keys = Keys.from_env()  # the services inherit this environment
    cams = one_camera_per_primary(rc, keys, stem="file")
    video = clip(tmp_path, FRAMES)
    pipe = Pipeline(tmp_path, db=0, redis_url=cluster.url, edge_extra={"codec": "q8-zstd", "precision": "f32"},
                    cameras=[{"id": c, "url": str(video), "realtime": False} for c in cams])
    try:
        pipe.start_ingest()
        pipe.start_worker("w1")
        pipe.start_worker("w2")
        pipe.services.start("analytics", "analytics", "--config", str(pipe.cloud_yaml), "--consumer", "a1",
                            "--reorder-wait", "0.2")
        pipe.wait_ingest()
        pipe.wait_worker("w1")
        pipe.wait_worker("w2")
        pipe.start_edge()

        def files_done() -> bool:
            s = pipe.edge_stats().get("cameras", {})
            return len(s) == len(cams) and all(c["acked"] == FRAMES for c in s.values())

        wait_for(files_done, 180, "the file cameras to finish")
        assert pipe.wait_exit("edge", 60) == 0, pipe.log("edge")[-3000:]  # every source ended: it stops
        outcomes = pipe.outcomes()
        assert all(o["outcome"] == "acked" for o in outcomes) and len(outcomes) == len(cams) * FRAMES
        acked = {(o["camera"], o["session"], o["seq"]) for o in outcomes}
        wait_for(lambda: pipe.settled(acked), 120, "the workers to process every acked frame")
        records = {cam: pipe.records(cam) for cam in cams}
        rec_ids = [(cam, d["session"], d["seq"]) for cam, rs in records.items() for d in rs]
        assert not duplicates(rec_ids) and set(rec_ids) == acked and not pipe.cloud_drops()
        # Which worker wins each poll is a race under light load (docs/redis.md); sharing is the kill test's.
        assert {d["worker"] for rs in records.values() for d in rs} <= {"w1", "w2"}
        assert sum(len(d["detections"]) for rs in records.values() for d in rs) > 0

        # Analytics read and acknowledged every record, and committed its counts (a MULTI in the camera's
        # slot). Two workers may write a camera's records out of seq order: a frame that comes after a
        # later one was analysed is skipped (counted as such), as on a single Redis.
        def analysed() -> bool:
            assert not pipe.services.exited("analytics"), pipe.log("analytics")[-3000:]
            groups = [g for c in cams for g in pipe.r.xinfo_groups(keys.detections_stream(c))]
            counts = [AnalyticsCounts.from_fields(pipe.r.hgetall(keys.counts(c))) for c in cams]
            return (len(groups) == len(cams) and all(g["lag"] == 0 and g["pending"] == 0 for g in groups)
                    and all(c.seq == FRAMES - 1 and (c.frames or 0) + (c.skipped_frames or 0) == FRAMES
                            for c in counts))

        wait_for(analysed, 60, "analytics to read, count and acknowledge every record")
        frames = {c: AnalyticsCounts.from_fields(pipe.r.hgetall(keys.counts(c))).frames for c in cams}

        # The API reads the cluster, and its live feed follows streams in every slot.
        with api_server(keys.prefix, cluster.url, workdir=tmp_path) as base:
            api = httpx.Client(base_url=base, timeout=10)
            assert {c["id"] for c in api.get("/api/cameras").json()["cameras"]} == set(cams)
            for cam in cams:
                assert api.get(f"/api/cameras/{cam}/detections/latest").json()["seq"] == FRAMES - 1
                assert api.get(f"/api/cameras/{cam}/counts").json()["frames"] == frames[cam]
            with api.stream("GET", "/api/live", timeout=httpx.Timeout(10, read=10)) as resp:
                assert resp.status_code == 200
                lines = resp.iter_lines()
                sse_events(lines, lambda ev: any(e == "state" for e, _ in ev), 20)  # following every camera now
                for cam in cams:  # one more record per camera, as a worker writes it
                    last = pipe.r.xrevrange(keys.detections_stream(cam), count=1)[0][1]
                    pipe.r.xadd(keys.detections_stream(cam), {**last, b"seq": str(FRAMES).encode()})
                got = sse_events(lines, lambda ev: {d["camera"] for e, d in ev if e == "detections"} == set(cams), 20)
            assert all(d["seq"] == FRAMES for e, d in got if e == "detections")
    finally:
        pipe.stop()


@pytest.mark.unit
@pytest.mark.e2e
def test_sigkill_mid_run_on_a_cluster_loses_and_doubles_nothing(cluster, rc, tmp_path):
    keys = Keys("kill")
    cams = one_camera_per_primary(rc, keys)[:2]
    n = 24
    frames = real_features(n)
    model = {"name": str(shared_file("yolov5n.pt")), "cut": 4, "imgsz": list(REAL_IMGSZ)}
    conf = {"redis_url": cluster.url, "model": model, "head_runtime": "openvino", "latency_slo_ms": 600_000,
            "worker": {"max_batch": 4, "claim_idle_ms": 1500, "claim_interval_s": 0.3, "block_ms": 100,
                       "streams_refresh_s": 0.2}}
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(conf))
    half = n // 2
    for i, cam in enumerate(cams):
        enqueue(rc, keys, cam, range(half), payloads=frames[i * half:(i + 1) * half])
    services = Services(tmp_path)

    def start(name: str) -> None:
        services.start(name, "cloud", "worker", "--config", str(path), "--name", name, "--log-level", "WARNING",
                       env={"SPLIT_INFER_PREFIX": keys.prefix})

    def a_mid_run() -> bool:
        assert not services.exited("worker-a"), services.log("worker-a")[-3000:]
        done = sum(rc.xlen(keys.detections_stream(c)) for c in cams)
        held = sum(p["pending"] for c in cams for p in rc.xinfo_consumers(keys.frames_stream(c), keys.FRAMES_GROUP)
                   if p["name"] == b"worker-a")
        return done >= 4 and held > 0

    def b_done() -> bool:
        assert not services.exited("worker-b"), services.log("worker-b")[-3000:]
        return all(rc.xlen(keys.frames_stream(c)) == 0 for c in cams)

    try:
        start("worker-a")
        wait_for(a_mid_run, 120, "worker A to get going", every=0.01)
        services.kill("worker-a")
        orphaned = set()
        for c in cams:
            for p in rc.xpending_range(keys.frames_stream(c), keys.FRAMES_GROUP, "-", "+", 100, "worker-a"):
                for _, f in rc.xrange(keys.frames_stream(c), p["message_id"], p["message_id"]):
                    orphaned.add((c, int(f[b"seq"])))
        start("worker-b")
        wait_for(b_done, 180, "worker B to finish the queue")
    finally:
        services.stop_all()
    by = {}
    for cam in cams:
        recs = entries(rc, keys.detections_stream(cam))
        seqs = [int(x["seq"]) for x in recs]
        assert sorted(seqs) == list(range(half)), f"{cam}: lost or doubled frames: {sorted(seqs)}"
        by.update({(cam, int(x["seq"])): x["worker"] for x in recs})
        assert rc.xlen(keys.dead_letter_stream(cam)) == 0
        assert rc.xpending(keys.frames_stream(cam), keys.FRAMES_GROUP)["pending"] == 0
    assert set(by.values()) == {"worker-a", "worker-b"}
    assert orphaned and all(by[k] == "worker-b" for k in orphaned), orphaned  # B claimed A's frames
