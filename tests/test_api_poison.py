"""Poison records against `split-infer api` as a process (issue 11): bytes that are not UTF-8 and
JSON nested too deeply, in detection records, camera hashes, counts hashes and the cameras set.
Every endpoint answers 200 with the bad entry left out (and counted where the answer has a count)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from support.api import api_server

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

DEEP = "[" * 100_000 + "]" * 100_000


def record(cam: str, seq: int, ts: float, **over) -> dict:
    car = {"class_id": 2, "class_name": "car", "score": 0.9, "box": [10.0, 20.0, 110.0, 80.0]}
    return {"camera": cam, "session": "s1", "seq": seq, "capture_ts": repr(ts), "done_ts": repr(ts + 0.1),
            "width": 640, "height": 360, "detections": json.dumps([car]), **over}


def test_poison_records_leave_the_api_answering(r, keys, prefix):
    cam, now = "cam-1", time.time()
    r.sadd(keys.cameras, cam, b"\xff\xfe")  # a camera id that is not UTF-8
    stream = keys.detections_stream(cam)
    r.xadd(stream, record(cam, 1, now - 1))
    r.xadd(stream, record(cam, 2, now - 0.8, detections=b"[\xff]"))
    r.xadd(stream, record(cam, 3, now - 0.6, detections=DEEP))
    r.xadd(stream, {**record(cam, 4, now - 0.4), b"\xc3\x28": b"x"})
    r.xadd(stream, record(cam, 5, now - 0.2, timings='{"a":' * 50_000 + "1" + "}" * 50_000))  # newest: poison
    r.hset(keys.camera_state(cam), mapping={"online": "1", "last_seen_ts": repr(now), "session": b"\xff",
                                            "fps": DEEP, b"\xfe": b"1"})
    r.hset(keys.counts(cam), mapping={"line:road:in:car": "2", "per_minute_history": DEEP,
                                      "congestion": b"\xff", b"line:\xff:in:car": "1"})
    with api_server(prefix) as base, httpx.Client(base_url=base, timeout=10) as api:
        resp = api.get("/api/cameras")
        assert resp.status_code == 200, resp.text
        one = next(c for c in resp.json()["cameras"] if c["id"] == cam)
        assert one["online"] is True and one["fps"] is None and one["session"] is None
        assert api.get(f"/api/cameras/{cam}").status_code == 200
        latest = api.get(f"/api/cameras/{cam}/detections/latest")
        assert latest.status_code == 200 and latest.json()["seq"] == 1
        hist = api.get(f"/api/cameras/{cam}/detections", params={"start": now - 60})
        assert hist.status_code == 200, hist.text
        assert [x["seq"] for x in hist.json()["records"]] == [1] and hist.json()["skipped"] == 4
        counts = api.get(f"/api/cameras/{cam}/counts")
        assert counts.status_code == 200, counts.text
        assert counts.json()["lines"] == [{"name": "road", "in": {"car": 2}, "out": {}}]
        assert counts.json()["per_minute_history"] == [] and counts.json()["congestion"] is None
