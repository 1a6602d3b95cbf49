"""Cloud-side throughput: the ingest (a real `split-infer cloud ingest` process, real gRPC on
loopback, real Redis) and one worker with the real YOLO head, on real features of the street video.

    .venv/bin/python benchmarks/cloud.py --json out.json [--frames 400] [--worker-frames 96]

Prints JSON: ingest fps and per-frame ack latency (send -> Ack, p50/p99) over one gRPC stream
carrying 8 cameras; payload bytes per frame; the worker's head cost per batch size (profiled)
and its throughput draining the queue; Redis memory per queued frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import emit, machine  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def real_payloads(n: int, model: str, cut: int, imgsz: tuple[int, int]) -> tuple[list[bytes], dict]:
    import cv2
    import torch

    from split_infer.codec import make_encoder
    from split_infer.model.loading import load_model
    from split_infer.model.partition import partition
    from split_infer.model.preprocess import letterbox

    torch.set_num_threads(1)
    edge, _ = partition(load_model(model), cut)
    cap = cv2.VideoCapture(str(DATA / "street-640x360.mp4"))
    enc, out, shapes = make_encoder("q8-zstd", cut=cut), [], {}
    with torch.no_grad():
        while len(out) < n:
            ok, img = cap.read()
            if not ok:
                raise SystemExit(f"{DATA / 'street-640x360.mp4'} missing or too short")
            x, _ = letterbox(img, imgsz)
            feats = {k: v.numpy() for k, v in edge(torch.from_numpy(x)[None]).items()}
            shapes = {k: list(v.shape[1:]) for k, v in feats.items()}
            out.append(enc.encode(feats))
    return out, shapes


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--frames", type=int, default=400, help="frames through the ingest (8 cameras)")
    ap.add_argument("--distinct", type=int, default=40, help="distinct video frames (cycled)")
    ap.add_argument("--worker-frames", type=int, default=96)
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--imgsz", default="640x384")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = ap.parse_args(argv)
    imgsz = tuple(int(v) for v in args.imgsz.split("x"))

    import grpc
    import redis
    import yaml

    from split_infer.cloud.head import yolo_head
    from split_infer.cloud.worker import Worker, make_policy
    from split_infer.config import CloudConfig
    from split_infer.keys import PREFIX_ENV, Keys
    from split_infer.proto import pb, pb_grpc

    keys = Keys(f"bench-{uuid.uuid4().hex[:8]}")
    payloads, shapes = real_payloads(args.distinct, args.model, 4, imgsz)
    cams = [f"cam{i}" for i in range(8)]
    conf = {"redis_url": args.redis_url, "max_queue": 100_000, "model": {"name": args.model, "cut": 4,
            "imgsz": list(imgsz)}, "latency_slo_ms": 600_000, "ingest": {"feature_shapes": shapes},
            "worker": {"max_batch": 8}, "tls": {"insecure": True}}  # the ingest's own cost, on loopback
    r = redis.Redis.from_url(args.redis_url)
    port = 50000 + (os.getpid() % 10000)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "cloud.yaml"
        cfg_path.write_text(yaml.safe_dump(conf))
        proc = subprocess.Popen([sys.executable, "-m", "split_infer", "cloud", "ingest", "--config", str(cfg_path),
                                 "--listen", f"127.0.0.1:{port}", "--log-level", "WARNING"], cwd=ROOT,
                                env={**os.environ, PREFIX_ENV: keys.prefix})
        try:
            ch = grpc.insecure_channel(f"127.0.0.1:{port}")
            grpc.channel_ready_future(ch).result(timeout=30)
            stub = pb_grpc.FeatureIngestStub(ch)
            sent: dict[tuple[str, int], float] = {}
            window = threading.Semaphore(64)  # frames in flight, as the edge's window

            def frames():
                for i in range(args.frames):
                    cam, seq = cams[i % 8], i // 8
                    window.acquire()
                    now = time.time()
                    sent[(cam, seq)] = time.perf_counter()
                    yield pb.FeatureFrame(camera_id=cam, seq=seq, session="bench", capture_ts=now, sent_ts=now,
                                          payload=payloads[i % len(payloads)], width=640, height=360)

            lat, statuses = [], []
            t0 = time.perf_counter()
            for ack in stub.Stream(frames()):
                lat.append(time.perf_counter() - sent[(ack.camera_id, ack.seq)])
                statuses.append(ack.status)
                window.release()
            ingest_s = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(20)
    ok = sum(s == pb.Ack.OK for s in statuses)
    mem = r.memory_usage(keys.frames_stream(cams[0])) or 0
    queued = r.xlen(keys.frames_stream(cams[0]))

    cfg = CloudConfig.model_validate(conf)
    head = yolo_head(cfg)
    policy = make_policy(cfg, head)
    w = Worker(cfg, r, head, policy, name="bench", keys=keys)
    t0 = time.perf_counter()
    while w.processed < args.worker_frames:
        w.step()
    worker_s = time.perf_counter() - t0
    batches = policy.metrics.batches
    for k in r.scan_iter(match=keys.scan_pattern, count=1000):
        r.delete(k)

    result = {
        "model": args.model, "imgsz": list(imgsz), "cut": 4, "feature_shapes": shapes,
        "bytes_per_frame": statistics.mean(len(p) for p in payloads),
        "ingest": {"frames": args.frames, "accepted": ok, "seconds": round(ingest_s, 3),
                   "fps": round(ok / ingest_s, 1), "ack_ms_p50": round(pct(lat, 50) * 1000, 2),
                   "ack_ms_p99": round(pct(lat, 99) * 1000, 2), "cameras": 8, "window": 64,
                   "redis_bytes_per_queued_frame": round(mem / max(1, queued))},
        "worker": {"head_runtime": head.head.runtime, "head_cost_ms": {b: round(policy.cost.ms(b), 2)
                                                                        for b in policy.cost.sizes},
                   "frames": w.processed, "batches": batches, "seconds": round(worker_s, 3),
                   "fps": round(w.processed / worker_s, 2), "policy": policy.name},
        "machine": {**machine(), "threads": "the runtime's default (every core)"},
    }
    emit(result, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
