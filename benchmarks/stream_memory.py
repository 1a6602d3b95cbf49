"""Redis memory of the detection stream per camera and day (docs/retention.md).

    .venv/bin/python benchmarks/stream_memory.py [--records 20000] [--fps 10] [--redis-url URL] [--json out.json]

Writes `--records` detection records into one fresh detections stream, exactly as a worker writes
them (records.DetectionResult.to_fields: done_ts, ingest_ts, batch, head_ms, worker and the edge's
timings included), the detections being the real YOLOv5s output on the street video
(tests/fixtures/street_detections.json, 6.3 objects per frame on average), cycled. Then asks Redis
`MEMORY USAGE key SAMPLES 0` (every node counted, not sampled) and divides by the records: bytes
per record, extrapolated to `--fps` frames a second for 86400 s. The same for an empty frame and a
busy one (the fixture's most crowded frame), for the range. Keys live under a fresh prefix,
removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import redis

from report import emit, machine
from split_infer.keys import Keys
from split_infer.records import DetectedObject, DetectionResult

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/street_detections.json"
DAY_S = 86400


def record(seq: int, detections: list[dict], t0: float) -> DetectionResult:
    capture = t0 + seq / 10
    return DetectionResult(
        camera="cam-street-01", session="3f2a9c1e", seq=seq, capture_ts=capture, width=1920, height=1080,
        detections=tuple(DetectedObject.from_json(d, i) for i, d in enumerate(detections)),
        done_ts=capture + 0.087, ingest_ts=capture + 0.031, batch=4, head_ms=12.481, worker="worker-7f9c-1234",
        timings={"capture": 1.2, "preprocess": 3.4, "extract": 21.7, "encode": 2.9})


def measure(r: redis.Redis, key: str, frames: list[list[dict]], n: int) -> float:
    """Bytes per record of `n` records cycling through `frames`."""
    r.delete(key)
    t0 = time.time()
    pipe = r.pipeline(transaction=False)
    for seq in range(n):
        pipe.xadd(key, record(seq, frames[seq % len(frames)], t0).to_fields())
        if seq % 1000 == 999:
            pipe.execute()
    pipe.execute()
    used = int(r.memory_usage(key, samples=0) or 0)
    r.delete(key)
    return used / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    frames = [f["detections"] for f in json.loads(FIXTURE.read_text())["frames"]]
    busiest = max(frames, key=len)
    r = redis.Redis.from_url(args.redis_url)
    key = Keys(f"bench-mem-{uuid.uuid4().hex[:8]}").detections_stream("cam-street-01")
    out = {"records": args.records, "fps": args.fps, "redis": r.info("server")["redis_version"],
           "stream_node_max_bytes": r.config_get("stream-node-max-bytes")["stream-node-max-bytes"],
           "mean_objects": sum(map(len, frames)) / len(frames), "busiest_objects": len(busiest), "cases": {}}
    for name, cycle in (("empty", [[]]), ("street", frames), ("busiest", [busiest])):
        per = measure(r, key, cycle, args.records)
        out["cases"][name] = {"bytes_per_record": round(per, 1),
                              "mib_per_camera_day": round(per * args.fps * DAY_S / 2**20, 1)}
    out["machine"] = machine()
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
