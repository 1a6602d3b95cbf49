"""Capacity model (issue 12): what one frame costs each cloud role and Redis, measured here with
the real components, and what 1,000 cameras at 10 fps therefore need (docs/scaling.md).

    .venv/bin/python benchmarks/capacity.py --json benchmarks/results/capacity.json [--frames 60]

Real footage (the street clip) through the real edge IR (OpenVINO), each codec setting encoding
it as an edge does, `--cameras` cameras each sending the whole sequence. Then, in this process,
against an embedded redis-server (so its counters are ours alone):
- ingest: `admission.Ingest.handle` per frame, the protobuf parse included (checks, decode, the
  re-encode to `ingest.queue_codec`, the Redis pipeline, the camera state): process CPU time;
- worker: `cloud.worker.Worker` draining those queues with the real head on OpenVINO, one thread
  (every timer is process CPU time, with one BLAS/OpenMP thread: the work, not idle threads);
- analytics: `AnalyticsService` over the real detections of the street clip (the fixture);
- API: the live feed (`LiveHub`) reading those records, and SSE framing per connected client;
- Redis: per role, INFO commandstats (commands), cpu (the main thread) and stats (network bytes)
  before and after, per frame; MEMORY USAGE per queued frame; benchmarks/stream_memory.py's
  instrument per detection record.
Each codec runs twice where it matters: with today's queue form (`q8-zstd`, what the ingest
re-encodes stateful frames to) and with a compact one (an intra-only video frame, `--compact-crf`),
with the detection agreement of each against the head on the uncompressed features.
The GPU is NOT measured here: its figures come from the recorded curve benchmarks/cost_gpu.json
(benchmarks/gpu_head_cost.py on an H200) plus the host CPU measured here.
The breaking points "as shipped" use the sizes of deploy/k8s/base read from its rendered manifests
(benchmarks/shipped.py): replicas, CPU limits, Redis maxmemory, retention and max_queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

# One thread per frame, set before numpy loads its BLAS: CPU time per frame then counts the work,
# not idle BLAS threads spinning; the model scales out by frames, processes and cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import redis  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import shipped  # noqa: E402  (benchmarks/: the sizes deploy/k8s/base ships)
import stream_memory  # noqa: E402  (benchmarks/: bytes per detection record)
from analytics_throughput import FIXTURE, LINE, ZONE  # noqa: E402
from capacity_model import (  # noqa: E402
    Fleet,
    PerFrame,
    bill_of_materials,
    breaking_points,
    cameras_per_core,
    gpu_worker_fps,
    gpu_worker_served,
)
from report import emit, machine  # noqa: E402
from split_infer.apps.processes import Children, start_redis  # noqa: E402
from split_infer.codec import DEFAULT_CODEC, make_decoder, make_encoder  # noqa: E402
from split_infer.config import CloudConfig  # noqa: E402
from split_infer.keys import Keys  # noqa: E402
from split_infer.proto import pb  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"
GPU_CURVE = ROOT / "benchmarks" / "cost_gpu.json"
CPU_CURVE = ROOT / "benchmarks" / "cost_cpu.json"
IMGSZ = (640, 384)  # the model's default (ModelConfig.imgsz)
REFERENCE_FPS = 120.0  # the reference design's GPU worker "at peak"
SIMULATED_CAMERAS = (8, 64, 256)


# -- small helpers ----------------------------------------------------------------------------------

def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"mean": round(statistics.fmean(xs), 3), "median": round(statistics.median(xs), 3),
            "p90": round(xs[int(0.9 * (len(xs) - 1))], 3), "n": len(xs)}


class RedisMeter:
    """INFO deltas of one redis-server: commands by name, main-thread CPU, network bytes."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.start = self._read()

    def _read(self) -> dict[str, Any]:
        cmd = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in self.r.info("commandstats").items()}
        cpu = self.r.info("cpu")
        net = self.r.info("stats")
        return {"cmd": cmd, "cpu_s": float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"]),
                "in": int(net["total_net_input_bytes"]), "out": int(net["total_net_output_bytes"])}

    def per_frame(self, frames: int, exclude: dict[str, int] | None = None) -> dict[str, Any]:
        """What happened since this meter was made, per frame (this meter's own INFO calls, and
        `exclude`: the benchmark's own commands, left out)."""
        end = self._read()
        calls = {k: v - self.start["cmd"].get(k, 0) - (exclude or {}).get(k, 0) for k, v in end["cmd"].items()}
        calls = {k: v for k, v in calls.items() if k != "info" and v > 0}
        return {"commands": {k: round(v / frames, 3) for k, v in sorted(calls.items())},
                "commands_total": round(sum(calls.values()) / frames, 3),
                "cpu_ms": round((end["cpu_s"] - self.start["cpu_s"]) * 1000 / frames, 4),
                "net_in_bytes": round((end["in"] - self.start["in"]) / frames, 1),
                "net_out_bytes": round((end["out"] - self.start["out"]) / frames, 1)}


def clear(r: redis.Redis, keys: Keys) -> None:
    for k in r.scan_iter(match=keys.scan_pattern, count=1000):
        r.delete(k)


# -- the edge's side ------------------------------------------------------------------------------

def edge_features(video: Path, n: int) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """`n` frames of `video` through the real edge IR: the crossing tensors, and the frames."""
    import cv2

    from split_infer.edge.extractor import EdgeExtractor
    from split_infer.model.export import ensure_edge_ir

    ext = EdgeExtractor(ensure_edge_ir("yolov5s", 4, IMGSZ), "CPU")
    cap = cv2.VideoCapture(str(video))
    feats: list[dict[str, np.ndarray]] = []
    images: list[np.ndarray] = []
    while len(feats) < n:
        ok, img = cap.read()
        if not ok:
            raise SystemExit(f"{video}: missing or shorter than {n} frames")
        feats.append(ext.infer(ext.preprocess(img)[0]))
        images.append(img)
    cap.release()
    return feats, images


def snapshot(img: np.ndarray) -> bytes:
    """The thumbnail the edge sends every snapshot_interval_s (its own size and quality)."""
    import cv2

    from split_infer.edge.scheduler import SNAPSHOT_QUALITY, SNAPSHOT_WIDTH

    h, w = img.shape[:2]
    small = cv2.resize(img, (SNAPSHOT_WIDTH, round(h * SNAPSHOT_WIDTH / w))) if w > SNAPSHOT_WIDTH else img
    return bytes(cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])[1])


def wire_frames(spec: str, feats: list[dict[str, np.ndarray]], images: list[np.ndarray], cameras: int,
                fps: float, snapshot_every: int) -> tuple[list[bytes], list[bool], list[pb.FeatureFrame]]:
    """The payloads of one encoder over the sequence, and the protobuf messages of `cameras`
    cameras sending it (interleaved, seq in order per camera), serialised as gRPC carries them."""
    enc = make_encoder(spec, cut=4)
    coded = [enc.encode_frame(f) for f in feats]
    payloads, keys = [c.payload for c in coded], [c.key for c in coded]
    snap = snapshot(images[0])
    now = time.time()
    msgs = []
    for seq, payload in enumerate(payloads):
        for c in range(cameras):
            capture = now - (len(payloads) - seq) / fps
            msgs.append(pb.FeatureFrame(
                camera_id=f"cam{c}", seq=seq, session="capacity", capture_ts=capture, sent_ts=capture + 0.03,
                payload=payload, width=images[0].shape[1], height=images[0].shape[0],
                snapshot_jpeg=snap if seq % snapshot_every == 0 else b"",
                timings_ms={"capture": 1.0, "preprocess": 3.0, "extract": 20.0, "encode": 3.0}))
    return payloads, keys, msgs


# -- the cloud's roles ----------------------------------------------------------------------------

def cloud_config(redis_url: str, queue_codec: str, shapes: dict[str, list[int]]) -> CloudConfig:
    return CloudConfig.model_validate({
        "redis_url": redis_url, "max_queue": 1_000_000, "latency_slo_ms": 600_000, "head_runtime": "openvino",
        "ingest": {"feature_shapes": shapes, "queue_codec": queue_codec},
        "worker": {"max_batch": 8, "head_threads": 1}, "tls": {"insecure": True}})


def run_ingest(cfg: CloudConfig, keys: Keys, msgs: list[pb.FeatureFrame]) -> list[float]:
    """admission.Ingest.handle on every message (parsed from its bytes first, as gRPC does):
    CPU ms per frame of this process (its decode thread included), each camera's first frame left out."""
    from split_infer.cloud.admission import Ingest
    from split_infer.redisconn import connect_async

    wire = [m.SerializeToString() for m in msgs]

    async def go() -> list[float]:
        r = connect_async(cfg.redis_url, socket_timeout=30)
        ingest = Ingest(cfg, r, keys)
        out, seen = [], set()
        for data in wire:
            c0 = time.process_time()
            f = pb.FeatureFrame.FromString(data)
            ack = await ingest.handle(f, "ipv4:127.0.0.1:1")
            ms = (time.process_time() - c0) * 1000
            if ack.status != pb.Ack.OK:
                raise SystemExit(f"ingest answered {ack} for {f.camera_id}/{f.seq}")
            if f.camera_id in seen:
                out.append(ms)
            seen.add(f.camera_id)
        await r.aclose()
        return out

    return asyncio.run(go())


def queued_payloads(r: redis.Redis, keys: Keys, camera: str) -> list[bytes]:
    from split_infer.records import QueuedFrame

    entries: Any = r.xrange(keys.frames_stream(camera))
    return [QueuedFrame.from_fields(f).payload for _, f in entries]


def bytes_per_queued_frame(r: redis.Redis, keys: Keys, cameras: int) -> float:
    streams = [keys.frames_stream(f"cam{c}") for c in range(cameras)]
    used = sum(int(r.memory_usage(s, samples=0) or 0) for s in streams)
    return used / sum(int(r.xlen(s)) for s in streams)


def run_worker(cfg: CloudConfig, r: redis.Redis, keys: Keys, head: Callable, frames: int) -> list[float]:
    """The real worker (adaptive policy on the recorded CPU curve: batches of one) until `frames`
    are written: CPU ms per frame of each step that wrote some."""
    from split_infer.batching import CostModel
    from split_infer.batching import make_policy as make_batching_policy
    from split_infer.cloud.worker import Worker

    policy = make_batching_policy("adaptive", slo_ms=cfg.latency_slo_ms, max_batch=cfg.worker.max_batch,
                                  cost=CostModel.load(CPU_CURVE))
    w = Worker(cfg, r, head, policy, name="capacity", keys=keys)
    out: list[float] = []
    deadline = time.monotonic() + 900
    while w.processed < frames and time.monotonic() < deadline:
        c0 = time.process_time()
        n = w.step()
        if n:
            out += [(time.process_time() - c0) * 1000 / n] * n
    return out


def decode_ms(payloads: list[bytes], repeats: int = 2) -> list[float]:
    """The worker's decode of queued payloads (a fresh decoder per frame, as it does): CPU ms."""
    out = []
    for _ in range(repeats):
        for p in payloads:
            t0 = time.process_time()
            make_decoder().decode(p)
            out.append((time.process_time() - t0) * 1000)
    return out


def ingest_parts(payloads: list[bytes], keys_: list[bool], queue_codec: str) -> dict[str, Any]:
    """The ingest's per-frame work split: decode of the wire payload (the camera's decoder), then
    the re-encode to the queue form (skipped for a payload queued as is): CPU ms."""
    dec = make_decoder()
    dec_ms, enc_ms = [], []
    for p in payloads:
        t0 = time.process_time()
        tensors = dec.decode(p)
        t1 = time.process_time()
        if not dec.last_frame_self_contained:
            make_encoder(queue_codec).encode(tensors)
        enc_ms.append((time.process_time() - t1) * 1000)
        dec_ms.append((t1 - t0) * 1000)
    return {"decode_ms": stats(dec_ms[1:]), "queue_encode_ms": stats(enc_ms[1:]),
            "key_frames": sum(keys_), "frames": len(keys_)}


def head_costs(head: Any, feats: list[dict[str, np.ndarray]], repeats: int) -> dict[str, dict]:
    """The head on OpenVINO (one thread): the network per batch size, and NMS + records per frame."""
    from split_infer.model.postprocess import non_max_suppression, to_records
    from split_infer.model.preprocess import Letterbox

    out: dict[str, dict] = {}
    lb = Letterbox.fit(640, 360, *IMGSZ)
    for b in (1, 4):
        x = {k: np.concatenate([feats[i % len(feats)][k] for i in range(b)]) for k in feats[0]}
        head.raw(x)  # warm-up
        raw_ms, post_ms = [], []
        for _ in range(repeats):
            c0 = time.process_time()
            raw = head.raw(x)
            c1 = time.process_time()
            objectness = raw.shape[2] == len(head.names) + 5
            for row in raw:
                to_records(non_max_suppression(row, head.conf, head.iou, objectness), lb, head.names)
            c2 = time.process_time()
            raw_ms.append((c1 - c0) * 1000 / b)
            post_ms.append((c2 - c1) * 1000 / b)
        out[str(b)] = {"network_ms_per_frame": stats(raw_ms), "postprocess_ms_per_frame": stats(post_ms)}
    return out


def fidelity(head: Any, feats: list[dict[str, np.ndarray]], forms: dict[str, list[bytes]], every: int) -> dict:
    """Pooled agreement (split_infer.model.agreement) of the head on each form's decoded features
    against the head on the edge's uncompressed features, on every `every`-th frame."""
    from split_infer.model.agreement import detections, pooled_ap

    idx = range(0, len(feats), every)
    n_cls = len(head.names)
    ref = [detections(head.raw(feats[i]), n_cls)[0] for i in idx]
    out = {}
    for name, payloads in forms.items():
        if name == "wire":  # the edge's own stream: one stateful decoder over every frame
            dec = make_decoder()
            decoded = [dec.decode(p) for p in payloads]
        else:
            decoded = [make_decoder().decode(p) for p in payloads]
        pred = [detections(head.raw(decoded[i]), n_cls)[0] for i in idx]
        out[name] = round(pooled_ap(ref, pred), 4)
    return {"frames": len(ref), **out}


def run_analytics(r: redis.Redis, redis_url: str, keys: Keys, cameras: int, frames: int) -> tuple[dict, dict]:
    """AnalyticsService over `frames` real detection records per camera (written first, not
    counted): CPU ms per frame of this process, and the Redis work per frame."""
    from split_infer.analytics.service import AnalyticsService, Settings
    from split_infer.config import CameraConfig
    from split_infer.records import AnalyticsCounts, DetectionResult

    fixture = json.loads(FIXTURE.read_text())["frames"][:frames]
    records = [DetectionResult.from_fields({**f, "detections": json.dumps(f["detections"])}) for f in fixture]
    ids = [f"cam{i}" for i in range(cameras)]
    t0 = time.time() - 120  # as a worker writes them: recent, with the ingest and done times
    pipe = r.pipeline(transaction=False)
    pipe.sadd(keys.cameras, *ids)  # as the ingest does: the cameras the API knows
    for cid in ids:
        for rec in records:
            ts = t0 + rec.capture_ts
            pipe.xadd(keys.detections_stream(cid), replace(rec, camera=cid, capture_ts=ts, ingest_ts=ts + 0.03,
                                                           done_ts=ts + 0.09, batch=1, head_ms=90.0,
                                                           worker="capacity").to_fields())
    pipe.execute()
    cam = CameraConfig.model_validate({"id": "street", "url": "x", "lines": [LINE], "zones": [ZONE]})
    cfg = CloudConfig(redis_url=redis_url, cameras=[cam.model_copy(update={"id": cid}) for cid in ids])
    svc = AnalyticsService(r, cfg, Settings(consumer="capacity", reorder_wait_s=0.2, block_ms=20, discover=False),
                           keys=keys)
    meter = RedisMeter(r)
    c0, deadline, polls = time.process_time(), time.monotonic() + 600, 0

    def drained() -> bool:
        nonlocal polls
        polls += len(ids)
        seqs = [AnalyticsCounts.from_fields(r.hgetall(keys.counts(c))).seq for c in ids]
        return all(s == records[-1].seq for s in seqs)

    steps = 0
    while steps % 10 or not drained():  # look every 10 steps: the benchmark's HGETALLs are not analytics'
        svc.step()
        steps += 1
        if time.monotonic() > deadline:
            raise SystemExit("analytics did not drain its streams in 600 s")
    cpu_ms = (time.process_time() - c0) * 1000 / (frames * cameras)
    red = meter.per_frame(frames * cameras, exclude={"hgetall": polls})
    return {"cpu_ms_per_frame": round(cpu_ms, 3), "frames": frames * cameras}, red


def run_api(redis_url: str, keys: Keys, cameras: int, frames: int, clients: int) -> dict:
    """The API's live feed: one LiveHub reading every camera's detection records (one XREAD for
    them all, parsing, JSON), each record framed as SSE for `clients` connections: CPU ms per record."""
    from fastapi.sse import format_sse_event

    from split_infer.api.live import Client, LiveHub
    from split_infer.api.store import Store
    from split_infer.redisconn import connect_async

    async def go() -> dict:
        r = connect_async(redis_url, socket_timeout=30)
        store = Store(r, keys)
        hub = LiveHub(store, 10.0, max_clients=clients + 1, queue_size=cameras * frames + 10)
        streams = {keys.detections_stream(f"cam{i}"): ("detections", f"cam{i}") for i in range(cameras)}
        hub.kind, hub.positions = dict(streams), {k: "0-0" for k in streams}
        conns = [Client(None, cameras * frames + 10) for _ in range(clients)]
        for c in conns:
            hub.clients.add(c)
        meter = RedisMeter(redis.Redis.from_url(redis_url))
        c0, sent, idle = time.process_time(), 0, 0
        while sent < cameras * frames:
            before = sent
            await hub._read(50)
            for c in conns:
                while not c.queue.empty():
                    ev = c.queue.get_nowait()
                    assert ev is not None
                    format_sse_event(data_str=ev.raw_data, event=ev.event, id=ev.id)
                    if c is conns[0]:
                        sent += 1
            idle = idle + 1 if sent == before else 0
            if idle > 20:
                raise SystemExit(f"the live feed sent {sent} of {cameras * frames} records")
        cpu_ms = (time.process_time() - c0) * 1000 / sent
        red = meter.per_frame(sent)
        c1 = time.process_time()
        for i in range(200):
            await store.latest_detections(f"cam{i % cameras}")
        request_ms = (time.process_time() - c1) * 1000 / 200
        await r.aclose()
        return {"clients": clients, "cpu_ms_per_frame": round(cpu_ms, 3), "redis": red,
                "latest_request_cpu_ms": round(request_ms, 3)}

    return asyncio.run(go())


def redis_ceiling(r: redis.Redis, keys: Keys, payload_bytes: int, n: int) -> dict:
    """Pipelined XADD + XDEL of `payload_bytes` values: the shard's main-thread CPU per frame-sized
    write, and per small (record-sized) write: what one shard serves per second at 100%."""
    out = {}
    for name, size, count in (("record_860B", 860, 20 * n), ("frame", payload_bytes, n)):
        key = keys.frames_stream(f"ceiling-{name}")
        value = b"x" * size
        meter = RedisMeter(r)
        t0 = time.perf_counter()
        for i in range(0, count, 100):
            pipe = r.pipeline(transaction=False)
            for _ in range(min(100, count - i)):
                pipe.xadd(key, {"payload": value}, maxlen=1000, approximate=True)
            pipe.execute()
        wall = time.perf_counter() - t0
        m = meter.per_frame(count)
        out[name] = {"bytes": size, "writes": count, "server_cpu_us_per_write": round(m["cpu_ms"] * 1000, 2),
                     "writes_per_s_at_100pct": round(1000 / m["cpu_ms"]) if m["cpu_ms"] > 0 else None,
                     "client_bound_writes_per_s": round(count / wall)}
        r.delete(key)
    return out


# -- one codec setting through ingest (and worker) -----------------------------------------------

def compact_codec(spec: str, crf: int) -> str | None:
    """The compact queue form for frames of `spec`: an intra-only video frame with the same
    reduction (a fresh encoder per frame starts with a key frame); None for self-contained codecs."""
    if not spec.startswith("video"):
        return None
    reduction = spec.split(":", 1)[1] if ":" in spec else None
    return f"video-crf{crf}" + (f":{reduction}" if reduction else "")


def run_setting(args: argparse.Namespace, r: redis.Redis, url: str, spec: str, queue_codec: str,
                shapes: dict[str, list[int]], payloads: list[bytes], keys_: list[bool],
                msgs: list[pb.FeatureFrame], head: Any | None) -> dict:
    keys = Keys(f"cap-{uuid.uuid4().hex[:8]}")
    cfg = cloud_config(url, queue_codec, shapes)
    try:
        meter = RedisMeter(r)
        ingest_ms = run_ingest(cfg, keys, msgs)
        ingest_redis = meter.per_frame(len(msgs))
        queued = queued_payloads(r, keys, "cam0")
        out: dict[str, Any] = {
            "codec": spec, "queue_codec": queue_codec,
            "wire_payload_bytes": round(statistics.fmean(len(p) for p in payloads), 1),
            "grpc_message_bytes": round(statistics.fmean(m.ByteSize() for m in msgs), 1),
            "queued_payload_bytes": round(statistics.fmean(len(p) for p in queued), 1),
            "redis_bytes_per_queued_frame": round(bytes_per_queued_frame(r, keys, args.cameras), 1),
            "ingest": {"cpu_ms_per_frame": stats(ingest_ms), "parts": ingest_parts(payloads, keys_, queue_codec),
                       "redis": ingest_redis},
            "worker_decode_ms": stats(decode_ms(queued)),
        }
        if head is not None:
            meter = RedisMeter(r)
            worker_ms = run_worker(cfg, r, keys, head, len(msgs))  # the whole queue: reads match writes
            out["worker"] = {"cpu_ms_per_frame": stats(worker_ms), "redis": meter.per_frame(len(worker_ms))}
        out["_queued"] = queued
        return out
    finally:
        clear(r, keys)


def per_frame_inputs(setting: dict, worker_ms: float, head_network_ms: float, analytics: dict, api: dict,
                     record_bytes: float, worker_redis: dict) -> PerFrame:
    """The model's inputs for one codec setting and queue form (worker figures shared by codecs
    whose queue form is the same: they differ only in the decode, measured per form)."""
    decode = setting["worker_decode_ms"]["mean"]
    worker = worker_ms - worker_redis["decode_ms"] + decode
    ingest_red = setting["ingest"]["redis"]
    redis_ms = ingest_red["cpu_ms"] + worker_redis["cpu_ms"] + analytics["redis"]["cpu_ms"] + api["redis"]["cpu_ms"]
    return PerFrame(
        ingest_cpu_ms=setting["ingest"]["cpu_ms_per_frame"]["mean"], worker_cpu_ms=worker,
        worker_host_ms_gpu=worker - head_network_ms, analytics_cpu_ms=analytics["cpu_ms_per_frame"],
        api_cpu_ms=api["cpu_ms_per_frame"], redis_cpu_ms=redis_ms, wire_bytes=setting["grpc_message_bytes"],
        queued_bytes=setting["redis_bytes_per_queued_frame"],
        redis_net_bytes=sum(x["net_in_bytes"] + x["net_out_bytes"]
                            for x in (ingest_red, worker_redis, analytics["redis"], api["redis"])),
        record_bytes=record_bytes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=60, help="frames of the clip each camera sends")
    ap.add_argument("--cameras", type=int, default=4, help="cameras sending the clip into the ingest")
    ap.add_argument("--codecs", nargs="+", default=[DEFAULT_CODEC, "video-crf22:yolov5s-cut4-street", "q8-zstd"])
    ap.add_argument("--compact-crf", type=int, default=18, help="CRF of the compact (intra video) queue form")
    ap.add_argument("--fidelity-every", type=int, default=2, help="score detections on every N-th frame")
    ap.add_argument("--analytics-frames", type=int, default=300, help="detection records per camera (<= 734)")
    ap.add_argument("--fps", type=float, default=10.0)
    ap.add_argument("--fleet-cameras", type=int, default=1000)
    args = ap.parse_args(argv)
    if not args.video.exists():
        print(f"benchmark video missing: {args.video}", file=sys.stderr)
        return 1
    base = shipped.read()  # first: a base that does not render fails before the measurements
    t_start = time.perf_counter()
    snapshot_every = max(1, round(2.0 * args.fps))  # EdgeConfig snapshot_interval_s 2 s

    from split_infer.cloud.head import yolo_head

    feats, images = edge_features(args.video, args.frames)
    shapes = {k: list(v.shape[1:]) for k, v in feats[0].items()}
    workdir = Path(tempfile.mkdtemp(prefix="capacity-"))
    children = Children(workdir)
    try:
        url = start_redis(children, workdir)
        r = redis.Redis.from_url(url)
        head_fn = yolo_head(cloud_config(url, "q8-zstd", shapes))
        head = head_fn.head  # type: ignore[attr-defined]
        heads = head_costs(head, feats, repeats=8)

        settings: dict[str, dict] = {}
        for spec in args.codecs:
            payloads, keys_, msgs = wire_frames(spec, feats, images, args.cameras, args.fps, snapshot_every)
            forms = {"today": "q8-zstd"}
            compact = compact_codec(spec, args.compact_crf)
            if compact:
                forms["compact"] = compact
            per_form = {}
            for form, queue_codec in forms.items():
                run_head = head_fn if spec == args.codecs[0] else None  # the worker once per queue form
                per_form[form] = run_setting(args, r, url, spec, queue_codec, shapes, payloads, keys_, msgs, run_head)
                print(f"{spec} [{form}]: done at {time.perf_counter() - t_start:.0f} s", file=sys.stderr)
            if compact:
                per_form["fidelity"] = fidelity(head, feats, {"wire": payloads,
                                                              "today": per_form["today"]["_queued"],
                                                              "compact": per_form["compact"]["_queued"]},
                                                args.fidelity_every)
            for form in forms:
                per_form[form].pop("_queued")
            settings[spec] = per_form

        record = {"street": stream_memory.measure(r, Keys("cap-mem").detections_stream("cam"),
                                                  [f["detections"] for f in json.loads(FIXTURE.read_text())["frames"]],
                                                  5000)}
        keys = Keys(f"cap-{uuid.uuid4().hex[:8]}")
        try:
            analytics, analytics_redis = run_analytics(r, url, keys, args.cameras, min(734, args.analytics_frames))
            analytics["redis"] = analytics_redis
            api = {str(n): run_api(url, keys, args.cameras, min(734, args.analytics_frames), n) for n in (1, 8)}
        finally:
            clear(r, keys)
        ceiling = redis_ceiling(r, Keys(f"cap-{uuid.uuid4().hex[:8]}"),
                                int(settings[args.codecs[0]]["today"]["redis_bytes_per_queued_frame"]), 300)
    finally:
        children.stop_all()

    gpu_file = json.loads(GPU_CURVE.read_text())
    curve = {int(b): float(ms) for b, ms in gpu_file["batch_ms"].items()}
    fleet = Fleet(cameras=args.fleet_cameras, fps=args.fps)
    # As shipped: the base's retention, and every camera's queue full (max_queue frames: workers
    # stopped or behind), the worst case Redis must hold without refusing the workers' writes.
    base_units = base.units(fleet.ingest_cores_per_replica)
    base_fleet = replace(fleet, retention_s=base.retention_detections_s, queue_delay_s=base.max_queue / args.fps)
    head1 = heads["1"]["network_ms_per_frame"]["mean"]
    api1 = api["1"]
    api_per_client = max(0.0, (api["8"]["cpu_ms_per_frame"] - api1["cpu_ms_per_frame"]) / 7)
    models: dict[str, dict] = {}
    first = settings[args.codecs[0]]
    for spec, per_form in settings.items():
        for form in ("today", "compact"):
            if form not in per_form:
                continue
            worker_src = first[form] if form in first else first["today"]
            worker_redis = {**worker_src["worker"]["redis"], "decode_ms": worker_src["worker_decode_ms"]["mean"]}
            pf = per_frame_inputs(per_form[form], worker_src["worker"]["cpu_ms_per_frame"]["mean"], head1,
                                  analytics, api1, record["street"], worker_redis)
            sim = {str(n): gpu_worker_served(curve, n, args.fps, pf.worker_host_ms_gpu, fleet.gpu_max_batch)
                   for n in SIMULATED_CAMERAS}
            models[f"{spec} [{form}]"] = {
                "per_frame": {k: round(v, 4) for k, v in asdict(pf).items()},
                "cameras_per_core": {
                    role: round(cameras_per_core(ms, args.fps, fleet.utilisation), 2)
                    for role, ms in (("ingest", pf.ingest_cpu_ms), ("worker_cpu_head", pf.worker_cpu_ms),
                                     ("worker_host_with_gpu_head", pf.worker_host_ms_gpu),
                                     ("analytics", pf.analytics_cpu_ms), ("api_live_feed", pf.api_cpu_ms),
                                     ("redis_main_thread", pf.redis_cpu_ms))},
                "redis_bytes_vs_wire": round(pf.queued_bytes / per_form[form]["wire_payload_bytes"], 1),
                "bill_of_materials": bill_of_materials(fleet, pf, curve),
                "cameras_per_unit": breaking_points(fleet, pf, {}),
                "breaks_first_shipped_manifests": breaking_points(base_fleet, pf, base_units),
                "gpu_worker_one_process": {
                    "source": "model: recorded GPU curve + host CPU measured here, NOT measured end to end",
                    "fps_by_batch": {str(b): round(gpu_worker_fps(curve, b, pf.worker_host_ms_gpu), 1)
                                     for b in (1, 8, 64)},
                    "simulated_cameras": sim,
                    "reference_fps_at_peak": REFERENCE_FPS},
            }

    out = {
        "benchmark": "capacity", "video": args.video.name, "frames": args.frames, "cameras": args.cameras,
        "imgsz": list(IMGSZ), "feature_shapes": shapes, "fps": args.fps, "snapshot_every_frames": snapshot_every,
        "head_cpu_openvino_1_thread": heads,
        "settings": settings,
        "analytics": analytics, "api": api, "api_per_extra_client_ms": round(api_per_client, 4),
        "redis_record_bytes": record, "redis_ceiling": ceiling,
        "gpu": {"measured_here": False, "curve_file": str(GPU_CURVE.relative_to(ROOT)),
                "device": gpu_file.get("device"), "source": gpu_file.get("source"), "when": gpu_file.get("when"),
                "batch_ms": gpu_file["batch_ms"],
                "note": "No GPU in this session: the head's GPU cost is the recorded curve (gpu_head_cost.py on an "
                        "H200); batches above its largest size are extrapolated along its last slope; the "
                        "host's per-frame CPU (decode, NMS, Redis) is measured here on the CPU."},
        "fleet": asdict(fleet),
        "shipped_manifests": {"source": "kubectl kustomize deploy/k8s/base", **asdict(base),
                              "units": base_units, "retention_s": base_fleet.retention_s,
                              "queue": f"full: max_queue frames per camera ({base_fleet.queue_delay_s:g} s at fps)"},
        "models": models,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": machine(),
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
