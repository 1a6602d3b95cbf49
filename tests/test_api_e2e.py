"""End to end over real Redis: records written as the ingest, workers and analytics write them,
read back through `split-infer api` running as its own process (uvicorn), as a dashboard would."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from split_infer import __version__
from split_infer.api.app import main
from split_infer.keys import Keys
from support.api import api_server
from support.feeder import Feeder, thumbnail, video_frames
from support.redisdb import RedisServer, connect, isolated_prefix
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


@pytest.fixture
def api(prefix):
    with api_server(prefix) as base:
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client


def record(cam: str, seq: int, capture: float, done: float, dets: list[dict]) -> dict:
    """A detection record with the fields the worker writes (split_infer/cloud/worker.py)."""
    return {"camera": cam, "session": "s1", "seq": seq, "capture_ts": repr(capture), "ingest_ts": repr(capture),
            "done_ts": repr(done), "width": 640, "height": 360, "detections": json.dumps(dets), "batch": 1,
            "head_ms": 20.0, "worker": "w1", "timings": "{}"}


CAR = {"class_id": 2, "class_name": "car", "score": 0.9, "box": [10.0, 20.0, 110.0, 80.0]}


def test_cameras_show_state_and_a_dead_camera(r, keys, api):
    feeder = Feeder(r, keys, n_cameras=3, dead=("cam-3",))
    for _ in range(5):
        feeder.step()
    body = api.get("/api/cameras").json()
    cams = {c["id"]: c for c in body["cameras"]}
    assert sorted(cams) == ["cam-1", "cam-2", "cam-3"]
    for cid in ("cam-1", "cam-2"):
        c = cams[cid]
        assert c["online"] is True and 9 <= c["fps"] <= 11 and c["bytes_per_s"] > 100_000
        assert c["age_s"] < 5 and c["frames_total"] == 5 and 0.1 < c["latency_s"] < 0.2
    dead = cams["cam-3"]
    assert dead["online"] is False and dead["fps"] == 0 and dead["bytes_per_s"] == 0
    assert 299 < dead["age_s"] < 330 and dead["latency_s"] is None
    one = api.get("/api/cameras/cam-1").json()
    assert one["id"] == "cam-1" and one["online"] is True


def test_a_camera_whose_frames_stop_goes_offline_even_if_flagged_online(r, keys, prefix):
    # The ingest died without writing "offline": the API still sees the frames stop.
    with api_server(prefix, stale_after_s=1.0) as base:
        r.sadd(keys.cameras, "cam-x")
        r.hset(keys.camera_state("cam-x"), mapping={"online": 1, "fps": 10.0, "bytes_per_s": 1.5e5,
                                                     "last_seen_ts": repr(time.time())})
        assert httpx.get(base + "/api/cameras/cam-x").json()["online"] is True
        wait_for(lambda: httpx.get(base + "/api/cameras/cam-x").json()["online"] is False, 10,
                 "the API to see the frames stop")
        state = httpx.get(base + "/api/cameras/cam-x").json()
        assert state["online"] is False and state["fps"] == 0 and state["age_s"] > 1


def test_latest_and_history_by_time_range(r, keys, api):
    cam = "cam-1"
    r.sadd(keys.cameras, cam)
    base_ms = int(time.time() * 1000) - 60_000
    # Ten records written one second apart (explicit stream ids = write times).
    for i in range(10):
        ts = (base_ms + i * 1000) / 1000
        r.xadd(keys.detections_stream(cam), record(cam, i, ts - 0.1, ts, [CAR] * (i % 3)), id=f"{base_ms + i * 1000}-0")
    latest = api.get(f"/api/cameras/{cam}/detections/latest").json()
    assert latest["seq"] == 9 and len(latest["detections"]) == 0 and abs(latest["latency_s"] - 0.1) < 1e-6
    start, end = (base_ms + 2000) / 1000, (base_ms + 5000) / 1000
    h = api.get(f"/api/cameras/{cam}/detections", params={"start": start, "end": end}).json()
    assert [x["seq"] for x in h["records"]] == [2, 3, 4, 5] and not h["truncated"] and h["skipped"] == 0
    assert h["records"][2]["detections"] == [CAR] and h["records"][1]["detections"] == []
    page = api.get(f"/api/cameras/{cam}/detections", params={"start": start, "end": end, "limit": 3}).json()
    assert [x["seq"] for x in page["records"]] == [2, 3, 4] and page["truncated"]
    # Default range: the last 60 s.
    assert [x["seq"] for x in api.get(f"/api/cameras/{cam}/detections").json()["records"]][-1] == 9


def test_clear_errors_for_unknown_cameras_and_bad_ranges(r, keys, api):
    r.sadd(keys.cameras, "cam-1")
    resp = api.get("/api/cameras/nope/detections/latest")
    assert resp.status_code == 404 and "unknown camera 'nope'" in resp.json()["detail"]
    for path in ("/api/cameras/nope", "/api/cameras/nope/counts", "/api/cameras/nope/events",
                 "/api/cameras/nope/snapshot.jpg", "/api/cameras/nope/detections"):
        assert api.get(path).status_code == 404, path
    # Known camera, nothing recorded yet: 404 that says so.
    resp = api.get("/api/cameras/cam-1/detections/latest")
    assert resp.status_code == 404 and "no detection records yet" in resp.json()["detail"]
    resp = api.get("/api/cameras/cam-1/snapshot.jpg")
    assert resp.status_code == 404 and "no snapshot" in resp.json()["detail"]
    resp = api.get("/api/cameras/cam-1/detections", params={"start": 200, "end": 100})
    assert resp.status_code == 422 and resp.json()["detail"] == "start (200.0) is after end (100.0)"
    assert api.get("/api/cameras/cam-1/detections", params={"start": -5}).status_code == 422
    assert api.get("/api/cameras/cam-1/detections", params={"limit": 0}).status_code == 422
    assert api.get("/api/cameras/cam-1/events", params={"end": "yesterday"}).status_code == 422
    assert api.get("/api/cameras/bad id!").status_code == 422


def test_a_malformed_record_is_skipped_and_counted_not_a_500(r, keys, api):
    cam = "cam-1"
    r.sadd(keys.cameras, cam)
    now = time.time()
    r.xadd(keys.detections_stream(cam), record(cam, 1, now - 0.2, now - 0.1, [CAR]))
    r.xadd(keys.detections_stream(cam), {**record(cam, 2, now, now, []), "detections": "{not json"})
    r.xadd(keys.detections_stream(cam), {"camera": cam, "seq": "three"})
    assert api.get(f"/api/cameras/{cam}/detections/latest").json()["seq"] == 1
    h = api.get(f"/api/cameras/{cam}/detections").json()
    assert [x["seq"] for x in h["records"]] == [1] and h["skipped"] == 2
    r.xadd(keys.events_stream(cam), {"camera": cam, "ts": "x"})  # no type
    ev = api.get(f"/api/cameras/{cam}/events").json()
    assert ev == {"events": [], "skipped": 1, "next_cursor": None}
    # A counts hash with unreadable values and unknown fields: those are left out, the rest shown.
    r.hset(keys.counts(cam), mapping={"line:road:in:car": "3", "line:road:out:car": "many",
                                          "per_minute_history": "{broken", "future:field": "1",
                                          "congestion": "heavy"})
    counts = api.get(f"/api/cameras/{cam}/counts").json()
    assert counts["lines"] == [{"name": "road", "in": {"car": 3}, "out": {}}]
    assert counts["per_minute_history"] == [] and counts["congestion"] == "heavy"


def test_a_foreign_key_under_our_prefix_is_a_clear_error(r, keys, api):
    r.sadd(keys.cameras, "cam-1")
    r.set(keys.counts("cam-1"), "not a hash")  # some other program wrote here
    resp = api.get("/api/cameras/cam-1/counts")
    assert resp.status_code == 500 and resp.json()["detail"].startswith("Redis error: WRONGTYPE")
    assert api.get("/api/cameras/cam-1").status_code == 200  # the rest still answers


def test_counts_and_events_match_what_analytics_wrote(r, keys, api):
    feeder = Feeder(r, keys, n_cameras=2, dead=())
    t0 = time.time() - 30
    for i in range(300):  # 30 s of traffic replayed
        feeder.step(now=t0 + i * 0.1)
    for cam in feeder.cams:
        expected = cam.analytics.counts().to_fields()
        got = api.get(f"/api/cameras/{cam.id}/counts").json()
        (line,) = got["lines"]
        assert line["name"] == "road"
        for direction in ("in", "out"):
            for cls, n in line[direction].items():
                assert n == int(expected[f"line:road:{direction}:{cls}"])
        assert sum(line["in"].values()) + sum(line["out"].values()) > 0, "the replay should cross the line"
        (zone,) = got["zones"]
        assert zone["name"] == "kerb" and zone["entries"] == {c: int(expected[f"zone:kerb:entries:{c}"])
                                                              for c in zone["entries"]}
        assert got["congestion"] == expected["congestion"] and got["frames"] == 300
        assert got["per_minute_basis"] == "crossings" and got["per_minute_history"]
        # Events: everything in the stream, newest first; the type filter works.
        events = api.get(f"/api/cameras/{cam.id}/events", params={"limit": 1000}).json()["events"]
        assert len(events) == r.xlen(keys.events_stream(cam.id)) > 0
        assert [e["ts"] for e in events] == sorted((e["ts"] for e in events), reverse=True)
        crossings = api.get(f"/api/cameras/{cam.id}/events", params={"type": "line_cross", "limit": 1000}).json()
        assert len(crossings["events"]) == sum(line["in"].values()) + sum(line["out"].values())
        assert all(e["type"] == "line_cross" and e["line"] == "road" and e["direction"] in ("in", "out")
                   for e in crossings["events"])
    everything = api.get("/api/counts").json()
    assert [c["camera"] for c in everything["cameras"]] == ["cam-1", "cam-2"]
    total = sum(r.xlen(keys.events_stream(c.id)) for c in feeder.cams)
    merged = api.get("/api/events", params={"limit": 1000}).json()["events"]
    assert len(merged) == total and {e["camera"] for e in merged} == {"cam-1", "cam-2"}
    # Newest first by write time (stream id, then camera: the order its cursor pages through).
    order = [(tuple(map(int, e["id"].split("-"))), e["camera"]) for e in merged]
    assert order == sorted(order, reverse=True)
    assert len(api.get("/api/events", params={"limit": 3}).json()["events"]) == 3


def test_snapshot_is_the_latest_jpeg(r, keys, api):
    r.sadd(keys.cameras, "cam-1")
    jpeg = thumbnail(video_frames(1)[0])
    r.set(keys.snapshot("cam-1"), jpeg)
    resp = api.get("/api/cameras/cam-1/snapshot.jpg")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.content == jpeg and resp.headers["cache-control"] == "no-store"


class SSE:
    """Reads an open SSE response event by event; `until(want)` can be called again and again."""

    def __init__(self, resp: httpx.Response) -> None:
        self.lines = resp.iter_lines()

    def until(self, want, timeout: float) -> list[tuple[str, dict]]:
        """(event, data) pairs read until `want(events)` holds; fails after `timeout` seconds."""
        events: list[tuple[str, dict]] = []
        name, data = "message", []
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                events.append((name, json.loads("\n".join(data))))
                name, data = "message", []
                if want(events):
                    return events
            if time.monotonic() > deadline:
                break
        raise AssertionError(f"live feed did not deliver in {timeout} s; got {[e for e, _ in events]}")


def test_live_feed_streams_new_detections_events_state_and_counts(r, keys, api):
    feeder = Feeder(r, keys, n_cameras=2, dead=())
    feeder.step()
    stop = threading.Event()

    def feed():
        while not stop.is_set():
            feeder.step()
            time.sleep(0.1)  # deliberate: cameras at 10 fps

    with api.stream("GET", "/api/live", timeout=httpx.Timeout(10, read=5)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        t = threading.Thread(target=feed, daemon=True)
        t.start()
        try:
            got = SSE(resp).until(lambda ev: {"state", "counts", "detections", "event"} <= {e for e, _ in ev}
                           and sum(e == "state" for e, _ in ev) >= 2, timeout=30)
        finally:
            stop.set()
            t.join()
    dets = [d for e, d in got if e == "detections"]
    assert {d["camera"] for d in dets} == {"cam-1", "cam-2"}
    for cam in ("cam-1", "cam-2"):
        seqs = [d["seq"] for d in dets if d["camera"] == cam]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "in order, no duplicates"
        assert seqs[0] >= 2, "the feed starts with what comes after connecting"
    state = next(d for e, d in got if e == "state")
    assert {c["id"] for c in state} == {"cam-1", "cam-2"} and all(c["online"] for c in state)
    ev = next(d for e, d in got if e == "event")
    assert ev["type"] in ("line_cross", "zone_enter", "zone_exit")
    # A camera filter narrows the feed.
    with api.stream("GET", "/api/live", params={"camera": "cam-2"}, timeout=httpx.Timeout(10, read=5)) as resp:
        feeder.step()
        got = SSE(resp).until(lambda ev: any(e == "state" for e, _ in ev), timeout=10)
    assert [c["id"] for c in next(d for e, d in got if e == "state")] == ["cam-2"]


def test_healthz_metrics_and_dashboard(r, keys, api):
    feeder = Feeder(r, keys, n_cameras=2, dead=("cam-2",))
    feeder.step()
    r.xadd(keys.frames_stream("cam-1"), {"seq": 1})  # one frame waiting for a worker
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ok", "redis": "ok", "detail": None}
    assert api.get("/api/cameras/cam-1").status_code == 200
    assert api.get("/api/cameras/no-such-cam").status_code == 404
    text = api.get("/metrics").text
    assert 'splitinfer_redis_up{service="api"} 1.0' in text
    assert f'splitinfer_build_info{{codec="none",model="none",version="{__version__}"}} 1.0' in text
    # Requests are labelled by route template, never by the raw path (bounded series).
    route = 'method="GET",route="/api/cameras/{camera}"'
    for status in ("200", "404"):
        assert f'splitinfer_http_requests_total{{{route},status="{status}"}}' in text, status
    assert 'splitinfer_http_request_duration_seconds_count{method="GET",route="/api/cameras/{camera}"}' in text
    assert "no-such-cam" not in text and 'route="/api/cameras/cam-1"' not in text
    # Camera and queue series belong to the ingest and the workers (docs/metrics.md), not to the API.
    assert "splitinfer_camera_up{" not in text and "splitinfer_queue_depth_frames{" not in text
    page = api.get("/", follow_redirects=True)
    assert page.status_code == 200 and "<canvas" in page.text and "dashboard.js" in page.text
    assert "EventSource" in api.get("/static/dashboard.js").text
    assert api.get("/static/dashboard.css").status_code == 200


def test_redis_down_answers_503_and_recovers(tmp_path):
    """Our own redis-server, stopped and started under a running API: 503 with the reason, then back."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    url = server.url
    try:
        with isolated_prefix(connect(url)) as prefix, api_server(prefix, redis_url=url) as base, \
                httpx.Client(base_url=base, timeout=10) as api:
            Feeder(connect(url), Keys(prefix), n_cameras=1, dead=()).step()
            assert api.get("/api/cameras").status_code == 200
            with api.stream("GET", "/api/live", timeout=httpx.Timeout(15, read=10)) as resp:
                live = SSE(resp)
                live.until(lambda ev: any(e == "state" for e, _ in ev), timeout=10)
                server.stop()
                resp = api.get("/api/cameras")
                assert resp.status_code == 503 and "Redis unreachable" in resp.json()["detail"]
                assert resp.headers["retry-after"] == "1"
                for path in ("/api/cameras/cam-1/detections/latest", "/api/counts", "/api/cameras/cam-1/snapshot.jpg"):
                    assert api.get(path).status_code == 503, path
                health = api.get("/readyz")
                assert health.status_code == 503 and health.json()["redis"] == "down"
                assert api.get("/healthz").status_code == 200  # alive, only not ready: no restart
                assert api.get("/api/live").status_code == 503
                assert 'splitinfer_redis_up{service="api"} 0.0' in api.get("/metrics").text
                # The open feed says so, and resumes by itself once Redis is back.
                live.until(lambda ev: any(e == "error" for e, _ in ev), timeout=10)
                server.start()
                Feeder(connect(url), Keys(prefix), n_cameras=1, dead=()).step()
                got = live.until(lambda ev: any(e == "state" for e, _ in ev), timeout=10)
                assert next(d for e, d in got if e == "state")[0]["id"] == "cam-1"
            assert api.get("/api/cameras").status_code == 200
            assert api.get("/readyz").json()["redis"] == "ok"
            assert api.get("/api/cameras/cam-1/detections/latest").json()["seq"] == 1
    finally:
        server.stop()


def test_command_line_errors_are_clear(capsys):
    for argv, message in ((["--listen", "nohost"], "--listen must be host:port"),
                          (["--redis-url", "bogus://x"], "redis_url must start with redis://"),
                          (["--stale-after", "0"], "--stale-after must be > 0")):
        try:  # argparse exits; a config that fails validation returns the same code
            code = main(argv)
        except SystemExit as e:
            code = e.code
        assert code == 2 and message in capsys.readouterr().err
