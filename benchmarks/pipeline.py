"""Eight-camera pipeline throughput against the in-process split on the same frames.

    .venv/bin/python benchmarks/pipeline.py --json benchmarks/results/pipeline.json

Baseline: `SplitDetector` (edge on OpenVINO -> codec -> head, one process) over the first N frames
of the video, once per camera, decoding included; run before and after the pipeline, averaged. Pipeline: an embedded redis-server (or
--redis-url), the ingest, `--workers` workers and one edge node with eight lossless file cameras
(every frame processed, none skipped) taking the same N frames each (the edge and the worker's head on 1 thread each by default: on one machine
they share the cores, and two processes that each spread over every core slow each other down).
Figures come from the
detection records (timestamps and the edge's stage timings that travel with every frame) and the
edge's own counters. Prints one JSON object; `ratio` = pipeline_fps / baseline_fps (target >= 0.9).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from split_infer.apps.demo import Children, DemoError, free_port, start_redis, wait_log  # noqa: E402
from split_infer.model.preprocess import parse_imgsz  # noqa: E402
from report import emit  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))], 3)


def summary(xs: list[float]) -> dict:
    return {"p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99), "mean_ms": round(statistics.fmean(xs), 3) if xs else None}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (a zombie keeps its figures until it is reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def baseline(video: Path, frames: int, cameras: int, imgsz, codec: str, head_runtime: str) -> dict:
    import cv2

    from split_infer.apps.detect import SplitDetector

    det = SplitDetector("yolov5s", 4, imgsz, codec=codec, head_runtime=head_runtime)
    cap = cv2.VideoCapture(str(video))  # warm-up outside the clock
    ok, frame = cap.read()
    det(frame)
    cap.release()
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    for _ in range(cameras):
        cap = cv2.VideoCapture(str(video))
        for _ in range(frames):
            ok, frame = cap.read()
            if not ok:
                break
            det(frame)
            n += 1
        cap.release()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"frames": n, "seconds": round(secs, 3), "fps": round(n / secs, 3), "cpu_ms_per_frame": round(cpu * 1000 / n, 2),
            "bytes_per_frame": round(statistics.fmean(det.bytes_sent[1:]), 1)}


def pipeline(video: Path, frames: int, cameras: int, imgsz, codec: str, head_runtime: str, workers: int,
             redis_url: str | None, workdir: Path, edge_threads: int | None = None,
             head_threads: int | None = None) -> dict:
    import redis

    children = Children(workdir)
    try:
        url = redis_url or start_redis(children, workdir)
        r = redis.Redis.from_url(url)
        if redis_url:
            for k in r.scan_iter(match="si:*", count=1000):
                r.delete(k)
        port = free_port()
        model = {"name": "yolov5s", "cut": 4, "imgsz": list(imgsz)}
        cams = [{"id": f"cam{i}", "url": str(video), "realtime": False} for i in range(cameras)]
        cloud = {"redis_url": url, "listen": f"127.0.0.1:{port}", "model": model, "head_runtime": head_runtime,
                 "latency_slo_ms": 600000, "worker": {"overload": "late", "head_threads": head_threads}}
        edge = {"cloud": f"127.0.0.1:{port}", "model": model, "codec": codec, "cameras": cams, "buffer_frames": 64,
                "threads": edge_threads}
        (workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
        (workdir / "edge.yaml").write_text(yaml.safe_dump(edge))
        py = [sys.executable, "-m", "split_infer"]
        env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        children.spawn("ingest", py + ["cloud", "ingest", "--config", str(workdir / "cloud.yaml")], env)
        for w in range(workers):
            children.spawn(f"worker{w}", py + ["cloud", "worker", "--config", str(workdir / "cloud.yaml"),
                                               "--name", f"bench-w{w}"], env)
        wait_log(children, "ingest", "ingest listening", 300)
        for w in range(workers):
            wait_log(children, f"worker{w}", " up: redis", 300)
        total = frames * cameras
        stats_path = workdir / "edge-stats.json"
        cpu0 = {name: cpu_seconds(p.pid) for name, p in children.procs.items()}
        children.spawn("edge", py + ["edge", "--config", str(workdir / "edge.yaml"), "--frames", str(total),
                                     "--stats-json", str(stats_path)], env)
        ids = [c["id"] for c in cams]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            done = sum(r.xlen(f"si:detections:{c}") for c in ids) + r.xlen("si:dropped") + r.xlen("si:deadletter")
            if done >= total:
                break
            if children.procs["edge"].poll() == 0:  # it stopped: wait for what it delivered, no more
                acked = sum(c["acked"] for c in json.loads(stats_path.read_text())["cameras"].values())
                if done >= acked:
                    break
            bad = children.dead()
            if bad and not (bad == ["edge"] and children.procs["edge"].returncode == 0):
                raise DemoError(f"{bad[0]} exited:\n{children.log_tail(bad[0])}")
            time.sleep(0.5)
        else:
            raise DemoError("the pipeline did not finish within 30 minutes")
        cpu = {name: round(cpu_seconds(p.pid) - cpu0[name], 2) for name, p in children.procs.items() if name != "edge"}
        children.terminate("edge", 60)
        es = json.loads(stats_path.read_text())
        cpu["edge"] = es["cpu_s"]  # its own process time since it started running (model load excluded)
        recs = []
        for c in ids:
            for _, f in r.xrange(f"si:detections:{c}"):
                recs.append({k.decode(): v.decode() for k, v in f.items()})
    finally:
        children.stop_all()
    cap_ts = [float(x["capture_ts"]) for x in recs]
    done_ts = [float(x["done_ts"]) for x in recs]
    span = max(done_ts) - min(cap_ts)
    st: dict[str, list[float]] = {k: [] for k in ("capture", "preprocess", "edge", "encode", "edge_total",
                                                   "transport", "queue", "head", "end_to_end")}
    batches = []
    for x in recs:
        t = json.loads(x["timings"])
        c, i, d = float(x["capture_ts"]), float(x["ingest_ts"]), float(x["done_ts"])
        head_s = float(x["head_ms"]) / 1000
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
        batches.append(int(x["batch"]))
    acked = sum(c["acked"] for c in es["cameras"].values())
    payload = sum(c["payload_bytes"] for c in es["cameras"].values())
    fps = len(recs) / span
    bpf = payload / max(1, acked)
    return {
        "frames": len(recs), "seconds": round(span, 3), "fps": round(fps, 3),
        "bytes_per_frame": round(bpf, 1), "bytes_per_camera_second": round(bpf * fps / cameras, 1),
        "stages": {k: summary(v) for k, v in st.items()},
        "mean_batch": round(statistics.fmean(batches), 2),
        "cpu_seconds": cpu,  # per process while the edge ran
        "cpu_ms_per_frame": {k: round(v * 1000 / len(recs), 2) for k, v in cpu.items() if v is not None},
        "edge": {k: sum(c[k] for c in es["cameras"].values())
                 for k in ("extracted", "acked", "rejected", "dropped_buffer", "dropped_superseded")},
    }


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
    ap.add_argument("--head-threads", type=int, default=1,
                    help="CPU threads of the worker's head (default 1, same reason; 0 = the runtime's default)")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args(argv)
    if not args.video.exists():
        print(f"benchmark video missing: {args.video}", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    imgsz = parse_imgsz(args.imgsz)
    from split_infer.model.export import ensure_edge_ir

    ensure_edge_ir("yolov5s", 4, imgsz)
    def run_baseline() -> dict | None:
        if args.skip_baseline:
            return None
        return baseline(args.video, args.frames, args.cameras, imgsz, args.codec, args.head_runtime)

    before = run_baseline()
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        pipe = pipeline(args.video, args.frames, args.cameras, imgsz, args.codec, args.head_runtime, args.workers,
                        args.redis_url, workdir, args.edge_threads or None, args.head_threads or None)
    except DemoError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # The baseline runs before and after the pipeline and the two are averaged: on a shared
    # machine the load drifts, and one baseline would compare the pipeline with another moment.
    after = run_baseline()
    base = None
    if before and after:
        base = {"fps": round((before["fps"] + after["fps"]) / 2, 3), "runs": [before, after],
                "bytes_per_frame": before["bytes_per_frame"]}
    out = {
        "benchmark": "pipeline", "cameras": args.cameras, "frames_per_camera": args.frames, "imgsz": list(imgsz),
        "codec": args.codec, "head_runtime": args.head_runtime, "workers": args.workers,
        "edge_threads": args.edge_threads, "head_threads": args.head_threads, "video": args.video.name,
        "pipeline_fps": pipe["fps"], "baseline_fps": base["fps"] if base else None,
        "ratio": round(pipe["fps"] / base["fps"], 3) if base else None,
        # CPU time per frame, all processes together vs the baseline's: robust to a busy machine,
        # where the wall-clock ratio depends on the share of the cores each run happened to get.
        "cpu_ms_per_frame": round(sum(pipe["cpu_ms_per_frame"].values()), 2),
        "baseline_cpu_ms_per_frame": round(statistics.fmean(r["cpu_ms_per_frame"] for r in base["runs"]), 2) if base else None,
        "cpu_ratio": round(statistics.fmean(r["cpu_ms_per_frame"] for r in base["runs"])
                           / sum(pipe["cpu_ms_per_frame"].values()), 3) if base else None,
        "stages": pipe["stages"], "bytes_per_frame": pipe["bytes_per_frame"],
        "bytes_per_camera_second": pipe["bytes_per_camera_second"], "pipeline": pipe, "baseline": base,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
    }
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
