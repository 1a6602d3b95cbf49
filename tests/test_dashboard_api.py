"""The API routes the dashboard draws from, over HTTP (`split-infer api` as its own process, real
Redis): a snapshot names its frame only when that is certain, that frame's record is found by
(session, seq), the scene and the per-minute history come back as analytics wrote them."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from split_infer.analytics.aggregates import Aggregates
from split_infer.analytics.history import write_minutes
from split_infer.analytics.scene import scene_json
from split_infer.config import CameraConfig
from split_infer.records.snapshot import SnapshotFrame, jpeg_digest
from support.api import api_server
from support.feeder import thumbnail, video_frames

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def record(seq: int, session: str = "s1") -> dict:
    now = time.time()
    car = {"class_id": 2, "class_name": "car", "score": 0.9, "box": [seq, 20.0, seq + 50.0, 80.0]}
    return {"camera": "cam-1", "session": session, "seq": seq, "capture_ts": repr(now - 0.1), "done_ts": repr(now),
            "width": 640, "height": 360, "detections": json.dumps([car]), "timings": "{}"}


def test_snapshot_frame_record_scene_and_history(r, keys, prefix):
    r.sadd(keys.cameras, "cam-1")
    first, second = (thumbnail(f) for f in video_frames(2))
    r.set(keys.snapshot("cam-1"), first)
    r.hset(keys.snapshot_frame("cam-1"), mapping=SnapshotFrame("cam-1", "s2", 7, 12.5, jpeg_digest(first),
                                                                "video").to_fields())
    for seq in range(5, 10):
        r.xadd(keys.detections_stream("cam-1"), record(seq, "s1"))  # a former session: same seqs
    for seq in range(5, 9):
        r.xadd(keys.detections_stream("cam-1"), record(seq, "s2"))
    cam = CameraConfig(id="cam-1", url="x", units="normalized",
                       lines=[{"name": "gate", "a": [0.1, 0.5], "b": [0.9, 0.5]}])
    r.set(keys.scene("cam-1"), scene_json(cam))
    agg = Aggregates()
    t = time.time() - 3600
    agg.crossing(t, "car", "gate", "in")
    agg.crossing(t + 1, "bus", "gate", "out")
    pipe = r.pipeline()
    write_minutes(pipe, keys, "cam-1", agg.take_changed(), 7)
    pipe.execute()

    with api_server(prefix) as base, httpx.Client(base_url=base, timeout=10) as api:
        snap = api.get("/api/v1/cameras/cam-1/snapshot.jpg")
        assert snap.content == first
        assert (snap.headers["x-frame-session"], snap.headers["x-frame-seq"]) == ("s2", "7")
        assert snap.headers["x-frame-codec"] == "video" and float(snap.headers["x-frame-capture-ts"]) == 12.5

        rec = api.get("/api/v1/cameras/cam-1/detections/frame", params={"session": "s2", "seq": 7}).json()
        assert (rec["session"], rec["seq"], rec["detections"][0]["box"][0]) == ("s2", 7, 7.0)
        missing = api.get("/api/v1/cameras/cam-1/detections/frame", params={"session": "s2", "seq": 9})
        assert missing.status_code == 404 and "not written yet" in missing.json()["detail"]
        bad = api.get("/api/v1/cameras/cam-1/detections/frame", params={"session": "s:2", "seq": 1})
        assert bad.status_code == 422

        # A torn pair (a newer JPEG, the hash not yet rewritten): no frame is claimed for it.
        r.set(keys.snapshot("cam-1"), second)
        torn = api.get("/api/v1/cameras/cam-1/snapshot.jpg")
        assert torn.content == second and "x-frame-seq" not in torn.headers

        scene = api.get("/api/v1/cameras/cam-1/scene").json()
        assert scene["lines"] == [{"name": "gate", "units": "normalized", "a": [0.1, 0.5], "b": [0.9, 0.5]}]

        hist = api.get("/api/v1/cameras/cam-1/history", params={"start": t - 120, "end": t + 120}).json()
        assert len(hist["minutes"]) == 1 and hist["skipped"] == 0
        assert hist["minutes"][0]["lines"] == {"gate": {"in": {"car": 1}, "out": {"bus": 1}}}
        later = api.get("/api/v1/cameras/cam-1/history", params={"start": t + 600, "end": t + 700}).json()
        assert later["minutes"] == []
        too_long = api.get("/api/v1/cameras/cam-1/history", params={"start": 0, "end": t}).json()
        assert too_long["start"] == t - 31 * 86_400, "at most 31 days at once, and the answer says so"
        reversed_range = api.get("/api/v1/cameras/cam-1/history", params={"start": t, "end": t - 1})
        assert reversed_range.status_code == 422 and "is after end" in reversed_range.json()["detail"]
        assert api.get("/api/v1/cameras/nope/scene").status_code == 404
