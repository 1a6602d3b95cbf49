"""Eight-camera pipeline throughput against the in-process split on the same frames.

    .venv/bin/python benchmarks/pipeline.py --json benchmarks/results/pipeline.json

Baseline: `SplitDetector` (edge on OpenVINO -> codec -> head, one process) over the first N frames
of the video, once per camera, decoding included; run before and after the pipeline, averaged.
Pipeline: an embedded redis-server (or --redis-url), the ingest, `--workers` workers and one edge
node with eight lossless file cameras (every frame processed, none skipped) taking the same N frames
each. On one machine the two share the cores, so the edge gets 1 OpenVINO thread and the head
the runtime's default (every core): the head is 70% of the arithmetic (3.4 of the model's 4.9 GMAC
per 640x384 frame), and with one thread it was the pipeline's bottleneck (frames waited seconds in
Redis while the edge idled). Figures come from
the detection records (timestamps and the edge's stage timings that travel with every frame) and
the edge's own counters. Prints one JSON object; `ratio` = pipeline_fps / baseline_fps (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import cpu_seconds, emit, machine  # noqa: E402
from split_infer.apps.detect import SplitDetector  # noqa: E402
from split_infer.apps.processes import Children, StartError, free_port, start_redis, wait_log  # noqa: E402
from split_infer.certs import make_dev_certs  # noqa: E402
from split_infer.edge.precision import Choice, sample_frames, select_precision  # noqa: E402
from split_infer.keys import Keys  # noqa: E402
from split_infer.model.export import ensure_edge_ir  # noqa: E402
from split_infer.model.preprocess import parse_imgsz  # noqa: E402
from split_infer.records import DetectionResult  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"
SERVICE_CMD = (sys.executable, "-m", "split_infer")
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))], 3)


def summary(xs: list[float]) -> dict:
    return {"p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99), "mean_ms": round(statistics.fmean(xs), 3) if xs else None}


@dataclass(frozen=True)
class Setup:
    """What the baseline and the pipeline both process, and how (the command line's choices)."""

    video: Path
    frames: int  # per camera
    cameras: int
    imgsz: tuple[int, int]
    codec: str
    head_runtime: str
    workers: int = 1
    edge_threads: int | None = None  # None: the runtime's default (every core)
    head_threads: int | None = None
    # The edge's precision, chosen once by the edge's own measurement and used by both sides, so
    # the ratio compares the pipeline with the in-process split and not one precision with another.
    edge_precision: Choice | None = None


def edge_precision(ir: Path, video: Path, threads: int | None) -> Choice:
    """What the edge node would pick on this machine (split_infer/edge/precision.py, cached)."""
    props: dict = {"PERFORMANCE_HINT": "LATENCY", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
    return select_precision(ir, "AUTO", "auto", frames=lambda: sample_frames(ir, [str(video)])[0], props=props,
                            threads=threads)


def baseline(setup: Setup) -> dict:
    choice = setup.edge_precision
    det = SplitDetector("yolov5s", 4, setup.imgsz, codec=setup.codec, head_runtime=setup.head_runtime,
                        model_dir=choice.model_dir if choice else None, edge_precision=choice.hint if choice else None)
    cap = cv2.VideoCapture(str(setup.video))  # warm-up outside the clock
    ok, frame = cap.read()
    det(frame)
    cap.release()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for _ in range(setup.cameras):
        cap = cv2.VideoCapture(str(setup.video))
        for _ in range(setup.frames):
            ok, frame = cap.read()
            if not ok:
                break
            det(frame)
            n += 1
        cap.release()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"frames": n, "seconds": round(secs, 3), "fps": round(n / secs, 3),
            "cpu_ms_per_frame": round(cpu * 1000 / n, 2),
            "bytes_per_frame": round(statistics.fmean(det.bytes_sent[1:]), 1)}


def write_configs(setup: Setup, redis_url: str, port: int, workdir: Path) -> list[str]:
    """The cloud's and the edge node's config files (cloud.yaml, edge.yaml); returns the camera ids."""
    model = {"name": "yolov5s", "cut": 4, "imgsz": list(setup.imgsz)}
    cams = [{"id": f"cam{i}", "url": str(setup.video), "realtime": False} for i in range(setup.cameras)]
    cloud = {"redis_url": redis_url, "listen": f"127.0.0.1:{port}", "model": model,
             "head_runtime": setup.head_runtime, "latency_slo_ms": 600000,
             "worker": {"overload": "late", "head_threads": setup.head_threads}}
    edge = {"cloud": f"127.0.0.1:{port}", "model": model, "codec": setup.codec, "cameras": cams,
            "buffer_frames": 64, "threads": setup.edge_threads,
            "precision": setup.edge_precision.precision if setup.edge_precision else "auto"}
    # Measured as deployed: gRPC over mutual TLS with development certificates.
    certs = make_dev_certs(workdir / "certs", ["edge-0"])
    cloud["tls"] = {"cert": str(certs.server_cert), "key": str(certs.server_key), "client_ca": str(certs.ca)}
    edge["tls"] = {"ca": str(certs.ca), "cert": str(certs.client_cert("edge-0")),
                   "key": str(certs.client_key("edge-0"))}
    (workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
    (workdir / "edge.yaml").write_text(yaml.safe_dump(edge))
    return [c["id"] for c in cams]


def start_cloud(children: Children, workdir: Path, workers: int) -> None:
    """The ingest and `workers` workers, each waited for until it is up."""
    config = ["--config", str(workdir / "cloud.yaml")]
    children.spawn("ingest", [*SERVICE_CMD, "cloud", "ingest", *config], SERVICE_ENV)
    for w in range(workers):
        children.spawn(f"worker{w}", [*SERVICE_CMD, "cloud", "worker", *config, "--name", f"bench-w{w}"], SERVICE_ENV)
    wait_log(children, "ingest", "ingest listening", 300)
    for w in range(workers):
        wait_log(children, f"worker{w}", " up: redis", 300)


def wait_until_done(children: Children, r: redis.Redis, keys: Keys, camera_ids: list[str], total: int,
                    stats_path: Path) -> None:
    """Until `total` frames have a record (or were dropped or dead-lettered), or the edge node has
    stopped and everything it delivered has one; a service that dies ends the run."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        done = (sum(r.xlen(keys.detections_stream(c)) for c in camera_ids)
                + sum(r.xlen(keys.dropped_stream(c)) + r.xlen(keys.dead_letter_stream(c)) for c in camera_ids))
        if done >= total:
            return
        if children.procs["edge"].poll() == 0:  # it stopped: wait for what it delivered, no more
            acked = sum(c["acked"] for c in json.loads(stats_path.read_text())["cameras"].values())
            if done >= acked:
                return
        bad = children.dead()
        if bad and not (bad == ["edge"] and children.procs["edge"].returncode == 0):
            raise StartError(f"{bad[0]} exited:\n{children.log_tail(bad[0])}")
        time.sleep(0.5)
    raise StartError("the pipeline did not finish within 30 minutes")


def stage_samples(recs: list[DetectionResult]) -> dict[str, list[float]]:
    """Per stage, the ms each frame spent there: the edge's own timings and the records' timestamps."""
    st: dict[str, list[float]] = {k: [] for k in ("capture", "preprocess", "edge", "encode", "edge_total",
                                                   "transport", "queue", "head", "end_to_end")}
    for x in recs:
        t = x.timings
        c, i, d = x.capture_ts, x.ingest_ts, x.done_ts
        head_s = x.head_ms / 1000
        sent = t.get("sent_after_capture", 0.0) / 1000
        st["capture"].append(t["capture"])
        st["preprocess"].append(t.get("preprocess", 0.0))
        st["edge"].append(t["extract"])
        st["encode"].append(t["encode"])
        st["edge_total"].append(sent * 1000)
        st["transport"].append((i - c - sent) * 1000)
        st["queue"].append((d - i - head_s) * 1000)
        st["head"].append(head_s * 1000)
        st["end_to_end"].append((d - c) * 1000)
    return st


def pipeline_result(recs: list[DetectionResult], edge_stats: dict, cpu: dict, cameras: int) -> dict:
    """The pipeline's figures from its detection records, the edge node's counters and CPU times."""
    span = max(x.done_ts for x in recs) - min(x.capture_ts for x in recs)
    edge_cams = edge_stats["cameras"].values()
    acked = sum(c["acked"] for c in edge_cams)
    payload = sum(c["payload_bytes"] for c in edge_cams)
    fps = len(recs) / span
    bpf = payload / max(1, acked)
    return {
        "frames": len(recs), "seconds": round(span, 3), "fps": round(fps, 3),
        "bytes_per_frame": round(bpf, 1), "bytes_per_camera_second": round(bpf * fps / cameras, 1),
        "stages": {k: summary(v) for k, v in stage_samples(recs).items()},
        "mean_batch": round(statistics.fmean(x.batch for x in recs), 2),
        "cpu_seconds": cpu,  # per process while the edge ran
        "cpu_ms_per_frame": {k: round(v * 1000 / len(recs), 2) for k, v in cpu.items() if v is not None},
        "edge": {k: sum(c[k] for c in edge_cams)
                 for k in ("extracted", "acked", "rejected", "dropped_buffer", "dropped_superseded")},
    }


def pipeline(setup: Setup, redis_url: str | None, workdir: Path) -> dict:
    """Run the services on `setup` (against `redis_url`, or an embedded redis-server) and measure them."""
    keys = Keys.from_env()  # the services' too: they inherit this environment
    children = Children(workdir)
    try:
        url = redis_url or start_redis(children, workdir)
        r = redis.Redis.from_url(url)
        if redis_url:
            for k in r.scan_iter(match=keys.scan_pattern, count=1000):
                r.delete(k)
        port = free_port()
        camera_ids = write_configs(setup, url, port, workdir)
        start_cloud(children, workdir, setup.workers)
        total = setup.frames * setup.cameras
        stats_path = workdir / "edge-stats.json"
        cpu0 = {name: cpu_seconds(p.pid) for name, p in children.procs.items()}
        children.spawn("edge", [*SERVICE_CMD, "edge", "--config", str(workdir / "edge.yaml"), "--frames", str(total),
                                "--stats-json", str(stats_path)], SERVICE_ENV)
        wait_until_done(children, r, keys, camera_ids, total, stats_path)
        cpu = {name: round(cpu_seconds(p.pid) - cpu0[name], 2) for name, p in children.procs.items() if name != "edge"}
        children.terminate("edge", 60)
        edge_stats = json.loads(stats_path.read_text())
        cpu["edge"] = edge_stats["cpu_s"]  # its own process time since it started running (model load excluded)
        recs = [DetectionResult.from_fields(f) for c in camera_ids for _, f in r.xrange(keys.detections_stream(c))]
    finally:
        children.stop_all()
    return pipeline_result(recs, edge_stats, cpu, setup.cameras)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--frames", type=int, default=40, help="frames per camera")
    ap.add_argument("--imgsz", default="320x192")
    ap.add_argument("--codec", default="q8-zstd")
    ap.add_argument("--head-runtime", default="openvino", choices=["auto", "torch", "openvino"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis-url", help="default: an embedded redis-server")
    ap.add_argument("--edge-threads", type=int, default=1,
                    help="OpenVINO threads of the edge node (default 1: it shares the machine with the worker; "
                         "0 = OpenVINO's default, all cores)")
    ap.add_argument("--head-threads", type=int, default=0,
                    help="CPU threads of the worker's head (default 0 = the runtime's default, all cores: the head "
                         "carries most of the arithmetic)")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args(argv)
    if not args.video.exists():
        print(f"benchmark video missing: {args.video}", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    imgsz = parse_imgsz(args.imgsz)
    ir = ensure_edge_ir("yolov5s", 4, imgsz)
    edge_threads = args.edge_threads or None
    choice = edge_precision(ir, args.video, edge_threads)
    setup = Setup(args.video, args.frames, args.cameras, imgsz, args.codec, args.head_runtime, args.workers,
                  edge_threads, args.head_threads or None, choice)

    def run_baseline() -> dict | None:
        return None if args.skip_baseline else baseline(setup)

    before = run_baseline()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        pipe = pipeline(setup, args.redis_url, workdir)
    except StartError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # The baseline runs before and after the pipeline and the two are averaged: on a shared
    # machine the load drifts, and one baseline would compare the pipeline with another moment.
    after = run_baseline()
    base = base_cpu_ms = None
    if before and after:
        base = {"fps": round((before["fps"] + after["fps"]) / 2, 3), "runs": [before, after],
                "bytes_per_frame": before["bytes_per_frame"]}
        base_cpu_ms = statistics.fmean(r["cpu_ms_per_frame"] for r in base["runs"])
    pipe_cpu_ms = sum(pipe["cpu_ms_per_frame"].values())
    out = {
        "benchmark": "pipeline", "cameras": args.cameras, "frames_per_camera": args.frames, "imgsz": list(imgsz),
        "codec": args.codec, "head_runtime": args.head_runtime, "workers": args.workers,
        "edge_threads": args.edge_threads, "head_threads": args.head_threads, "video": args.video.name,
        "edge_precision": {"used": choice.precision, "source": choice.source, "figures": choice.summary()},
        "head_precision": "OpenVINO's default for the device (both sides)",
        "pipeline_fps": pipe["fps"], "baseline_fps": base["fps"] if base else None,
        "ratio": round(pipe["fps"] / base["fps"], 3) if base else None,
        # CPU time per frame, all processes together vs the baseline's: robust to a busy machine,
        # where the wall-clock ratio depends on the share of the cores each run happened to get.
        "cpu_ms_per_frame": round(pipe_cpu_ms, 2),
        "baseline_cpu_ms_per_frame": round(base_cpu_ms, 2) if base_cpu_ms is not None else None,
        "cpu_ratio": round(base_cpu_ms / pipe_cpu_ms, 3) if base_cpu_ms is not None else None,
        "stages": pipe["stages"], "bytes_per_frame": pipe["bytes_per_frame"],
        "bytes_per_camera_second": pipe["bytes_per_camera_second"], "pipeline": pipe, "baseline": base,
        "machine": {**machine(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
