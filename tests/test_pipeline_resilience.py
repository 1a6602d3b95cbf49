"""The pipeline survives its parts going away: the ingest restarts, a camera URL dies and returns.

Both happen at once, mid-run, with live (real-time) sources: the edge buffers, reconnects and
resends; the camera reconnects on its own; nothing is lost without being counted.
"""

from __future__ import annotations

import signal
import urllib.request

import pytest

from split_infer.apps.processes import free_port
from support.data import street_video
from support.http import probe
from support.media import HttpFeed
from support.pipeline import Pipeline, duplicates
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def acked(pipe: Pipeline, cam: str) -> int:
    return pipe.edge_stats().get("cameras", {}).get(cam, {}).get("acked", 0)


def test_ingest_restart_and_camera_outage_recover_on_their_own(tmp_path):
    feed = HttpFeed(street_video(), loop=True).start()
    cams = [{"id": "live0", "url": str(street_video()), "loop": True},  # paced like a camera, 10 fps
            {"id": "http0", "url": feed.url}]
    metrics_port = free_port()
    pipe = Pipeline(tmp_path, db=12, cameras=cams, edge_extra={"buffer_frames": 16, "metrics_port": metrics_port})
    try:
        pipe.start_ingest()
        pipe.start_worker("w1")
        pipe.wait_ingest()
        pipe.wait_worker("w1")
        pipe.start_edge()
        wait_for(lambda: acked(pipe, "live0") >= 10 and acked(pipe, "http0") >= 10, 90, "both cameras flowing")

        # The ingest dies hard and the camera's server goes away, together.
        pipe.signal("ingest", signal.SIGKILL)
        pipe.wait_exit("ingest", 10)
        feed.stop()
        wait_for(lambda: not pipe.edge_stats().get("connected", True), 30, "the edge to notice the ingest is gone")
        edge_http = f"http://127.0.0.1:{metrics_port}"
        status, body = wait_for(lambda: (s := probe(f"{edge_http}/readyz"))[0] == 503 and s, 10, "the edge unready")
        assert "no stream to the ingest" in body["reason"], body
        assert probe(f"{edge_http}/healthz") == (200, {"status": "ok"})  # alive: buffering, not dead
        wait_for(lambda: pipe.edge_stats()["cameras"]["http0"]["capture"]["state"] == "reconnecting", 30,
                 "the camera to notice its URL is gone")
        # Frames pile up in the bounded buffer; the oldest are dropped and counted.
        wait_for(lambda: pipe.edge_stats()["cameras"]["live0"]["dropped_buffer"] > 0, 30,
                 "the edge's buffer to overflow")
        before = {c: acked(pipe, c) for c in ("live0", "http0")}

        pipe.start_ingest()  # same port
        feed = HttpFeed(street_video(), port=feed.port, loop=True).start()  # same URL
        pipe.wait_ingest()
        wait_for(lambda: all(acked(pipe, c) >= before[c] + 10 for c in before), 120, "both cameras to resume")
        s = pipe.edge_stats()
        assert s["connected"] and s["reconnects"] >= 1, s
        wait_for(lambda: probe(f"{edge_http}/readyz") == (200, {"status": "ok"}), 10, "the edge ready again")
        cap = s["cameras"]["http0"]["capture"]
        assert cap["state"] == "online" and cap["reconnects"] >= 1, cap
        assert s["cameras"]["live0"]["dropped_buffer"] > 0, "frames produced during the outage were dropped uncounted"
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'splitinfer_edge_frames_total{camera="live0",outcome="acked"}' in text
        assert 'splitinfer_edge_frames_total{camera="live0",outcome="dropped_buffer"}' in text
        assert ("splitinfer_edge_cloud_reconnects_total 1.0" in text
                or "splitinfer_edge_cloud_reconnects_total 2.0" in text), text[-2000:]

        pipe.signal("edge", signal.SIGTERM)
        assert pipe.wait_exit("edge", 60) == 0, pipe.log("edge")[-3000:]
        outcomes = pipe.outcomes()
        ids = [(o["camera"], o["seq"]) for o in outcomes]
        assert not duplicates(ids)
        final = pipe.edge_stats()
        for cam, c in final["cameras"].items():
            assert sum(1 for o in outcomes if o["camera"] == cam) == c["extracted"], cam
            assert c["extracted"] == c["acked"] + c["rejected"] + c["dropped_buffer"] + c["dropped_superseded"]
        got = {(o["camera"], o["session"], o["seq"]) for o in outcomes if o["outcome"] == "acked"}
        wait_for(lambda: pipe.settled(got), 120, "every acked frame to be recorded or counted by the cloud")
        recs = [(cam, d["seq"]) for cam in ("live0", "http0") for d in pipe.records(cam)]
        assert not duplicates(recs), "a frame resent after the restart was recorded twice"
    finally:
        pipe.stop()
        feed.stop()
