"""Analytics throughput: the per-camera core alone, and the service end to end over Redis.

    .venv/bin/python benchmarks/analytics_throughput.py [--cameras 8] [--redis-url redis://127.0.0.1:6379/0]
        [--json out.json]

Input: the real detections of the street video (tests/fixtures/street_detections.json, 734
frames of YOLOv5s output), replayed as `--cameras` cameras, each with the test's counting line
and a zone. "core": CameraAnalytics.process per frame (ByteTrack + line + zone + aggregates).
"service": every camera's records XADDed first, then one AnalyticsService instance drains them
all (read, reorder, track, commit with checkpoint, ack, publish): frames per second and the
crossings found (7 per camera expected). Keys live under a fresh prefix, removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

from report import emit, machine

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/street_detections.json"
LINE = {"name": "road", "a": (330, 60), "b": (330, 250)}
ZONE = {"name": "lanes", "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import redis

    from split_infer.analytics.camera import CameraAnalytics
    from split_infer.analytics.frames import parse_record
    from split_infer.analytics.service import AnalyticsService, Settings
    from split_infer.config import CameraConfig, CloudConfig
    from split_infer.keys import Keys
    from split_infer.records import AnalyticsCounts, AnalyticsEvent, DetectionResult

    frames = [{**f, "detections": json.dumps(f["detections"])} for f in json.loads(FIXTURE.read_text())["frames"]]
    cam = CameraConfig(id="street", url="x", lines=[LINE], zones=[ZONE])

    records = [DetectionResult.from_fields(f) for f in frames]
    ca = CameraAnalytics(cam)
    t0 = time.perf_counter()
    for rec in frames:
        ca.process(parse_record(rec))
    core_ms = (time.perf_counter() - t0) * 1000 / len(frames)

    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    r = redis.Redis.from_url(args.redis_url)
    ids = [f"cam{i}" for i in range(args.cameras)]
    try:
        pipe = r.pipeline()
        for cid in ids:
            for rec in records:
                pipe.xadd(keys.detections_stream(cid), replace(rec, camera=cid).to_fields())
        pipe.execute()
        cfg = CloudConfig(cameras=[cam.model_copy(update={"id": cid}) for cid in ids])
        svc = AnalyticsService(r, cfg, Settings(consumer="bench", reorder_wait_s=0.2, block_ms=20, discover=False),
                               keys=keys)
        t0 = time.perf_counter()
        last = len(frames) - 1
        while any(AnalyticsCounts.from_fields(r.hgetall(keys.counts(c))).seq != last for c in ids):
            svc.step()
            if time.perf_counter() - t0 > 600:
                raise SystemExit("service did not drain the streams in 600 s")
        wall = time.perf_counter() - t0
        crossings = {c: sum(AnalyticsEvent.from_fields(f).type == "line_cross"
                            for _, f in r.xrange(keys.events_stream(c))) for c in ids}
    finally:
        for k in r.scan_iter(match=keys.scan_pattern, count=1000):
            r.delete(k)
    out = {
        "frames_per_camera": len(frames), "cameras": args.cameras,
        "core_ms_per_frame": round(core_ms, 3),
        "service_frames_per_s": round(len(frames) * args.cameras / wall, 1),
        "service_wall_s": round(wall, 2),
        "crossings_per_camera": sorted(set(crossings.values())),
        "note": "service time includes the 0.2 s reorder wait for each camera's first frame",
        "machine": {**machine(), "threads": "one process, one thread"},
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
