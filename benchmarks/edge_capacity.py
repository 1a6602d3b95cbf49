"""How many 1080p cameras at 10 fps one edge node carries (issue 14).

    .venv/bin/python benchmarks/edge_capacity.py --json benchmarks/results/edge_capacity.json
    .venv/bin/python benchmarks/edge_capacity.py --cameras-sweep --json OUT   # the most that sustain 10 fps

Cameras: the street clip and the demo's bikes clip, upscaled once to 1920x1080 H.264 at 10 fps
(libx264 veryfast, cached in `<cache>/edge-capacity/`), each served over HTTP MPEG-TS on loopback
by its own ffmpeg (`-re -stream_loop -1 ... -listen 1`: one client, as a camera gives each viewer
its own stream; a loop restarts it when a client leaves, as a camera serves the next viewer).
One real edge node (`split-infer edge`, 640x384, the default codec, precision auto) sends to a real
ingest with an embedded redis-server, over mutual TLS. The cloud side is not measured and has no
worker: the benchmark trims the frame streams so the ingest keeps acknowledging.

After `--warmup` seconds with frames flowing from every camera, the edge's /metrics is read, and
again `--duration` seconds later; every figure is the difference: frames sent (acknowledged) and
skipped (newest-frame policy) per camera, bytes per camera, per-stage time (the
splitinfer_edge_stage_seconds sums: capture = wall time in read(), waiting for the camera's next
frame included; decode = the reader thread's CPU time in read(); preprocess = letterbox, extract =
OpenVINO, encode), capture-to-send latency (its `sent_after_capture` stage, percentiles
interpolated in the histogram's buckets) and the edge process's CPU. A run sustains when every
camera sends >= 95 % of the camera rate and no frame is skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import cpu_seconds, emit, machine  # noqa: E402
from split_infer.apps.processes import Children, StartError, free_port, start_redis, wait_log  # noqa: E402
from split_infer.apps.samples import fetch_sample  # noqa: E402
from split_infer.certs import make_dev_certs  # noqa: E402
from split_infer.codec import DEFAULT_CODEC  # noqa: E402
from split_infer.keys import Keys  # noqa: E402
from split_infer.model.weights import cache_dir  # noqa: E402

STREET = ROOT.parent / "shared" / "data" / "street-640x360.mp4"
SERVICE_CMD = (sys.executable, "-m", "split_infer")
SERVICE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
WIDTH, HEIGHT = 1920, 1080
IMGSZ = (640, 384)
SUSTAIN_SHARE = 0.95  # a camera sustains the rate when it sends at least this share of it
STAGES = ("capture", "decode", "preprocess", "extract", "encode")
LATENCY_STAGE = "sent_after_capture"
TRIM_EVERY_S, TRIM_TO = 1.0, 50  # the stand-in for workers: keep each frame stream short


def prepare_clips(cache: Path, fps: float, seconds: float | None) -> list[Path]:
    """The two sources at 1920x1080, `fps`, H.264 (made once; filled to 16:9 by a centre crop)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise StartError("no ffmpeg binary on PATH: apt-get install -y ffmpeg")
    if not STREET.exists():
        raise StartError(f"missing {STREET} (the shared data folder beside the project)")
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for src in (STREET, fetch_sample()):
        tag = f"{src.stem}-{WIDTH}x{HEIGHT}-{fps:g}fps" + (f"-{seconds:g}s" if seconds else "")
        dst = cache / f"{tag}.mp4"
        if not dst.exists():
            tmp = dst.with_suffix(".tmp.mp4")
            vf = (f"scale={WIDTH}:{HEIGHT}:force_original_aspect_ratio=increase:flags=bicubic,"
                  f"crop={WIDTH}:{HEIGHT},fps={fps:g}")
            cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), *(["-t", f"{seconds:g}"]
                   if seconds else []), "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                   "-g", str(int(2 * fps)), "-pix_fmt", "yuv420p", "-an", str(tmp)]
            subprocess.run(cmd, check=True)
            tmp.rename(dst)
        out.append(dst)
    return out


def serve_camera(children: Children, name: str, clip: Path, port: int) -> str:
    """ffmpeg serving `clip` in a loop at its own rate, one client at a time, served again after."""
    url = f"http://127.0.0.1:{port}/{name}.ts"
    ffmpeg = f"ffmpeg -hide_banner -loglevel error -re -stream_loop -1 -i '{clip}' -c copy -f mpegts -listen 1 {url}"
    children.spawn(name, ["sh", "-c", f"while :; do {ffmpeg}; sleep 0.2; done"])
    deadline = time.monotonic() + 30
    while not _listening(port):  # a probe would take the camera's one client: read the socket table
        if time.monotonic() > deadline or name in children.dead():
            raise StartError(f"camera {name} is not serving on port {port}:\n{children.log_tail(name)}")
        time.sleep(0.1)
    return url


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(f":{port:04X}" == f.split()[1][-5:] and f.split()[3] == "0A" for f in lines):
            return True
    return False


def write_configs(workdir: Path, urls: list[str], redis_url: str, port: int, metrics_port: int,
                  args: argparse.Namespace) -> None:
    model = {"name": "yolov5s", "cut": 4, "imgsz": list(IMGSZ)}
    certs = make_dev_certs(workdir / "certs", ["edge-0"])
    cloud = {"redis_url": redis_url, "listen": f"127.0.0.1:{port}", "model": model,
             "tls": {"cert": str(certs.server_cert), "key": str(certs.server_key), "client_ca": str(certs.ca)}}
    edge = {"cloud": f"127.0.0.1:{port}", "model": model, "precision": args.precision, "threads": args.threads,
            "performance_hint": args.hint, "metrics_port": metrics_port,
            "cameras": [{"id": f"cam{i}", "url": u} for i, u in enumerate(urls)],
            "tls": {"ca": str(certs.ca), "cert": str(certs.client_cert("edge-0")),
                    "key": str(certs.client_key("edge-0"))}}
    (workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
    if args.decode_threads is not None:  # else the edge's default
        edge["decode_threads"] = args.decode_threads
    (workdir / "edge.yaml").write_text(yaml.safe_dump(edge))


def scrape(port: int) -> dict:
    """The edge's counters and stage histograms: {(name, labels...): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "splitinfer_edge_frames_total":
                out[("frames", s.labels["camera"], s.labels["outcome"])] = s.value
            elif s.name == "splitinfer_edge_sent_bytes_total":
                out[("bytes", s.labels["camera"], s.labels["kind"])] = s.value
            elif s.name in ("splitinfer_edge_stage_seconds_sum", "splitinfer_edge_stage_seconds_count"):
                out[(s.name.rsplit("_", 1)[1], s.labels["stage"])] = s.value
            elif s.name == "splitinfer_edge_stage_seconds_bucket":
                out[("bucket", s.labels["stage"], float(s.labels["le"]))] = s.value
    return out


def quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of cumulative (upper bound, count) buckets, linear within a bucket."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank, prev_le, prev_n = q * total, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if le == float("inf"):
                return prev_le  # beyond the last bound: that bound is all we know
            return prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-12)
        prev_le, prev_n = le, n
    return prev_le


def figures(a: dict, b: dict, cameras: list[str], seconds: float, fps: float, edge_cpu_s: float) -> dict:
    d = {k: v - a.get(k, 0.0) for k, v in b.items()}
    per_camera = {}
    for cam in cameras:
        sent = d.get(("frames", cam, "acked"), 0.0)
        per_camera[cam] = {"fps": round(sent / seconds, 2), "skipped": int(d.get(("frames", cam, "skipped"), 0)),
                           "capped": int(d.get(("frames", cam, "capped"), 0)),
                           "dropped_buffer": int(d.get(("frames", cam, "dropped_buffer"), 0)),
                           "payload_bytes_per_s": round(d.get(("bytes", cam, "payload"), 0.0) / seconds, 1),
                           "snapshot_bytes_per_s": round(d.get(("bytes", cam, "snapshot"), 0.0) / seconds, 1)}
    stages = {}
    for st in STAGES:
        n, s = d.get(("count", st), 0.0), d.get(("sum", st), 0.0)
        stages[st] = {"seconds_per_s": round(s / seconds, 4), "ms_per_frame": round(1000 * s / n, 2) if n else None,
                      "frames": int(n)}
    lat = sorted((le, n) for (kind, st, le), n in ((k, v) for k, v in d.items() if len(k) == 3)
                 if kind == "bucket" and st == LATENCY_STAGE)
    p50, p99 = quantile(lat, 0.5), quantile(lat, 0.99)
    total_fps = sum(c["fps"] for c in per_camera.values())
    skipped = sum(c["skipped"] for c in per_camera.values())
    return {
        "seconds": round(seconds, 2), "cameras": len(cameras),
        "fps_per_camera": {c: v["fps"] for c, v in per_camera.items()},
        "fps_total": round(total_fps, 2), "skipped_total": skipped,
        "sustained": skipped == 0 and all(c["fps"] >= SUSTAIN_SHARE * fps for c in per_camera.values()),
        "per_camera": per_camera,
        "stage_seconds": stages,
        "stage_note": "seconds in each stage for the frames the edge took: wall time, except decode (the "
                      "reader thread's CPU; capture's wall time includes the wait for the camera's next frame, "
                      "extract the wait in OpenVINO's queue); skipped frames were decoded too, so the decode "
                      "CPU is decode ms x frames read; edge_cpu is the whole process (send and gRPC included)",
        "edge_cpu": {"cores_busy": round(edge_cpu_s / seconds, 3),
                     "ms_per_frame": round(1000 * edge_cpu_s / (total_fps * seconds), 2) if total_fps else None},
        "capture_to_send_ms": {"p50": round(1000 * p50, 1) if p50 is not None else None,
                               "p99": round(1000 * p99, 1) if p99 is not None else None,
                               "frames": int(lat[-1][1]) if lat else 0,
                               "metric": f'splitinfer_edge_stage_seconds{{stage="{LATENCY_STAGE}"}}'},
    }


def run_once(args: argparse.Namespace, clips: list[Path], cameras: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"edge-capacity-{cameras}-", dir=args.workdir))
    children = Children(workdir)
    stop_trim = threading.Event()
    try:
        redis_url = start_redis(children, workdir)
        urls = [serve_camera(children, f"camera{i}", clips[i % len(clips)], free_port()) for i in range(cameras)]
        port, metrics_port = free_port(), free_port()
        write_configs(workdir, urls, redis_url, port, metrics_port, args)
        ingest = children.spawn("ingest", [*SERVICE_CMD, "cloud", "ingest", "--config", str(workdir / "cloud.yaml")],
                       SERVICE_ENV)
        wait_log(children, "ingest", "ingest listening", 300)
        ids = [f"cam{i}" for i in range(cameras)]
        trimmer = threading.Thread(target=_trim, args=(redis_url, ids, stop_trim), daemon=True)
        trimmer.start()
        edge = children.spawn("edge", [*SERVICE_CMD, "edge", "--config", str(workdir / "edge.yaml")], SERVICE_ENV)
        _wait_flowing(children, metrics_port, ids, timeout=300)
        time.sleep(args.warmup)
        a, c0, i0, t0 = scrape(metrics_port), cpu_seconds(edge.pid), cpu_seconds(ingest.pid), time.monotonic()
        time.sleep(args.duration)
        b, c1, i1, t1 = scrape(metrics_port), cpu_seconds(edge.pid), cpu_seconds(ingest.pid), time.monotonic()
        result = figures(a, b, ids, t1 - t0, args.fps, c1 - c0)
        # Not the edge's, but on the same cores here: what the cloud side took from the edge.
        result["ingest_cpu_cores_busy"] = round((i1 - i0) / (t1 - t0), 3)
        log = children.log_tail("edge", 200_000)
        m = re.search(r"edge precision (\w+) \((\w+)\)", log)
        result["precision"] = {"used": m.group(1), "source": m.group(2)} if m else None
        result["precision_figures"] = next((ln.split("): ", 1)[-1].split("; recorded in")[0]
                                            for ln in log.splitlines() if "edge precision" in ln and " ms " in ln),
                                           None)
        result["precision_excluded"] = [ln.split("edge precision ", 1)[1] for ln in log.splitlines()
                                        if "edge precision" in ln and " excluded " in ln]
        children.terminate("edge", 30)
        return result
    finally:
        stop_trim.set()
        children.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _trim(redis_url: str, cameras: list[str], stop: threading.Event) -> None:
    keys, r = Keys.from_env(), redis.Redis.from_url(redis_url)
    while not stop.wait(TRIM_EVERY_S):
        for cam in cameras:
            try:
                r.xtrim(keys.frames_stream(cam), maxlen=TRIM_TO, approximate=False)
            except redis.RedisError:
                pass  # Redis is going away at the end of the run


def _wait_flowing(children: Children, metrics_port: int, cameras: list[str], timeout: float) -> None:
    """Until every camera has had a frame acknowledged (the model loaded, precision chosen)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "edge" in children.dead():
            raise StartError(f"the edge exited during start-up:\n{children.log_tail('edge')}")
        try:
            m = scrape(metrics_port)
            if all(m.get(("frames", c, "acked"), 0) > 0 for c in cameras):
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.5)
    raise StartError(f"frames did not flow from every camera within {timeout:.0f} s:\n{children.log_tail('edge')}")


def sweep(args: argparse.Namespace, clips: list[Path]) -> tuple[list[dict], int]:
    """From --cameras down: after a miss, next try what the measured total rate would carry."""
    runs, n = [], args.cameras
    while n >= 1:
        r = run_once(args, clips, n)
        runs.append(r)
        print(f"{n} camera(s): {r['fps_total']} fps in all, {r['skipped_total']} skipped, "
              f"sustained {r['sustained']}", file=sys.stderr)
        if r["sustained"]:
            return runs, n
        n = min(n - 1, int(r["fps_total"] // args.fps))
    return runs, 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--cameras", type=int, default=8, help="camera streams (the sweep's first try)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    ap.add_argument("--warmup", type=float, default=15.0, help="seconds after frames flow, before measuring")
    ap.add_argument("--fps", type=float, default=10.0, help="camera frame rate")
    ap.add_argument("--cameras-sweep", action="store_true", help="find the most cameras that sustain --fps")
    ap.add_argument("--precision", default="auto", choices=("auto", "f32", "bf16", "int8"))
    ap.add_argument("--threads", type=int, help="the edge's OpenVINO threads (default: the edge's, all cores)")
    ap.add_argument("--hint", default="auto", choices=("auto", "latency", "throughput"),
                    help="the edge's OpenVINO performance hint (default: auto)")
    ap.add_argument("--decode-threads", type=int, help="FFmpeg decode threads per camera (default: the edge's)")
    ap.add_argument("--clip-seconds", type=float, help="prepare only this much of each clip (default: all)")
    ap.add_argument("--cache", type=Path, help="where the 1080p clips are kept (default: <cache>/edge-capacity)")
    ap.add_argument("--workdir", type=Path, help="parent of each run's configs and logs (default: the temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep each run's configs and logs")
    args = ap.parse_args(argv)
    for name in ("cameras", "duration", "fps"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        ap.error("--warmup must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        clips = prepare_clips(args.cache or cache_dir() / "edge-capacity", args.fps, args.clip_seconds)
        if args.cameras_sweep:
            runs, best = sweep(args, clips)
            result = {"max_cameras_sustained": best, "runs": runs}
        else:
            result = run_once(args, clips, args.cameras)
    except StartError as e:
        print(f"edge_capacity: {e}", file=sys.stderr)
        return 1
    emit({"benchmark": "edge_capacity", "machine": machine(),
          "setup": {"camera": f"{WIDTH}x{HEIGHT} H.264 {args.fps:g} fps over HTTP MPEG-TS (ffmpeg, loopback)",
                    "clips": [c.name for c in clips], "model_input": f"{IMGSZ[0]}x{IMGSZ[1]}",
                    "codec": DEFAULT_CODEC, "precision_setting": args.precision,
                    "threads": args.threads or f"default (all {os.cpu_count()} cores)", "hint": args.hint,
                    "decode_threads": args.decode_threads or "default (1 per camera)",
                    "warmup_s": args.warmup, "duration_s": args.duration},
          **result}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
