"""`split-infer demo`: the whole pipeline on one machine, with a live table per camera.

    split-infer demo --duration 60            # eight feeds of the sample footage, then stop
    split-infer demo --camera rtsp://... --camera 0 --redis-url redis://127.0.0.1:6379/5

Starts, as real processes: a Redis server (embedded: a local `redis-server` on a free port, no
persistence, in a temp dir; unless --redis-url), the cloud ingest, one worker and one edge node.
Defaults are sized for real time on 2 CPU cores: 320x192 input and 2 fps per camera (16 frames/s
for eight cameras). Ctrl-C or SIGTERM stops everything; each child runs in its own process group,
is terminated (then killed) on the way out, and dies with the demo even if the demo is killed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import cv2
import yaml
from rich.console import Console
from rich.live import Live

from split_infer.apps.board import Board, render
from split_infer.apps.processes import Children, Interrupted, StartError, free_port, port_or_free, start_redis, wait_log
from split_infer.apps.samples import demo_footage
from split_infer.certs import make_dev_certs
from split_infer.codec import DEFAULT_CODEC
from split_infer.config import ConfigError, EdgeConfig, load_config
from split_infer.keys import Keys
from split_infer.model.export import ensure_edge_ir
from split_infer.model.preprocess import parse_imgsz
from split_infer.redisconn import connect
from split_infer.service import EXIT_CODES_EPILOG, HelpFormatter, checked
from split_infer.streams import Client, total_length

# x264 veryfast at CRF 22 agrees with the reference about as the default codec (CRF 28) does on the
# demo's clip at 640x384 (0.93-0.97 against 0.945; docs/bandwidth.md). On the street clip the
# equal-agreement CRF is about 33: it depends on the footage, so the column is a guide, not a law.
ANCHOR_CRF = 22
CHILD_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
SERVICE = [sys.executable, "-m", "split_infer"]


@dataclass
class Stop:
    """The signals seen: the first ends the run, a second skips the wait for the worker."""

    signal: int | None = None
    count: int = 0

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum
        self.count += 1

    @property
    def requested(self) -> bool:
        return self.signal is not None


def build_cameras(args: argparse.Namespace) -> tuple[list[dict], str]:
    if args.camera:
        return [{"id": f"cam{i}", "url": u, "fps": args.fps} for i, u in enumerate(args.camera)], "--camera options"
    if args.config:
        cfg = load_config(args.config, EdgeConfig)
        return [c.model_dump(mode="json") for c in cfg.cameras], f"cameras of {args.config}"
    video, origin = demo_footage()
    line = middle_line(video)  # illustrative: a vertical counting line through the middle of the frame
    cams = [{"id": f"cam{i}", "url": str(video), "loop": True, "fps": args.fps, "lines": [line]}
            for i in range(args.feeds)]
    return cams, origin


def middle_line(video: Path) -> dict:
    cap = cv2.VideoCapture(str(video))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    if w <= 0 or h <= 0:
        raise StartError(f"cannot read the size of {video}")
    return {"name": "middle", "a": [w / 2, 0], "b": [w / 2, h]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="split-infer demo", description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=HelpFormatter, epilog=EXIT_CODES_EPILOG)
    ap.add_argument("--camera", action="append", help="camera URL (repeatable); default: eight sample feeds")
    ap.add_argument("--config", help="edge YAML whose cameras to use (default: the sample feeds)")
    ap.add_argument("--feeds", type=int, default=8, help="number of sample feeds")
    ap.add_argument("--fps", type=float, default=2.0, help="fps cap per camera (2: real time on 2 cores)")
    ap.add_argument("--imgsz", type=checked(parse_imgsz), default="320x192", help="model input WIDTHxHEIGHT")
    ap.add_argument("--model", default="yolov5s", help="model name or checkpoint")
    ap.add_argument("--cut", type=int, default=4, help="last layer run on the edge")
    ap.add_argument("--codec", default=DEFAULT_CODEC, help="feature codec spec (docs/codec.md)")
    ap.add_argument("--x264-crf", type=int, default=ANCHOR_CRF,
                    help="beside each camera's bytes, what x264 at this CRF spends on the same frames (the CRF at "
                         "which x264 agrees with the reference as the default codec does: docs/bandwidth.md)")
    ap.add_argument("--redis-url", help="use this Redis (default: an embedded redis-server)")
    ap.add_argument("--duration", type=float, help="stop after S seconds (default: run until Ctrl-C)")
    ap.add_argument("--frames", type=int, help="stop after the edge has taken N frames (default: no limit)")
    ap.add_argument("--slo-ms", type=float, default=1500.0, help="worker latency objective (older frames are shed)")
    ap.add_argument("--workdir", type=Path, help="keep configs and logs here (default: a temp dir, removed)")
    ap.add_argument("--no-live", action="store_true", help="print the table once at the end only")
    ap.add_argument("--api-port", type=int, default=8080, help="dashboard and read API port (a free one if busy)")
    return ap.parse_args(argv)


def write_configs(args: argparse.Namespace, cams: list[dict], workdir: Path, redis_url: str, port: int) -> None:
    imgsz = args.imgsz
    model_dir = ensure_edge_ir(args.model, args.cut, imgsz)  # torch, once; the edge process stays torch-free
    model = {"name": args.model, "cut": args.cut, "imgsz": list(imgsz)}
    # One thread each for the edge and the head: they share the machine, and two processes that
    # each spread OpenVINO over every core slow each other down (benchmarks/pipeline.py measures it).
    cloud = {"redis_url": redis_url, "listen": f"127.0.0.1:{port}", "model": model, "latency_slo_ms": args.slo_ms,
             "cameras": cams, "worker": {"head_threads": 1}}
    edge = {"cloud": f"127.0.0.1:{port}", "model": model, "model_dir": str(model_dir), "codec": args.codec,
            "cameras": cams, "threads": 1, "anchor_x264_crf": args.x264_crf}
    secure_link(workdir, cloud, edge)
    (workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
    (workdir / "edge.yaml").write_text(yaml.safe_dump(edge))


def secure_link(workdir: Path, cloud: dict, edge: dict) -> None:
    """gRPC over mutual TLS with fresh development certificates, and a random edge token that
    only files hold (the edge reads it from token_file, never from its command line)."""
    certs = make_dev_certs(workdir / "certs", ["edge-0"])
    cloud["tls"] = {"cert": str(certs.server_cert), "key": str(certs.server_key), "client_ca": str(certs.ca)}
    edge["tls"] = {"ca": str(certs.ca), "cert": str(certs.client_cert("edge-0")),
                   "key": str(certs.client_key("edge-0"))}
    token = secrets.token_urlsafe(24)
    token_file = workdir / "edge.token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    edge.update(node_id="edge-0", token_file=str(token_file))
    cloud["tokens"] = [{"name": "edge-0", "sha256": hashlib.sha256(token.encode()).hexdigest(), "cameras": ["*"]}]


def start_pipeline(args: argparse.Namespace, cams: list[dict], children: Children, workdir: Path, stop: Stop,
                   console: Console) -> tuple[str, int]:
    """Redis, ingest, worker, analytics, API and edge, each waited for; returns (Redis URL, API port)."""
    redis_url = args.redis_url or start_redis(children, workdir)
    port = free_port()
    write_configs(args, cams, workdir, redis_url, port)
    cloud_yaml = str(workdir / "cloud.yaml")
    children.spawn("ingest", SERVICE + ["cloud", "ingest", "--config", cloud_yaml], CHILD_ENV)
    children.spawn("worker", SERVICE + ["cloud", "worker", "--config", cloud_yaml, "--name", "demo-w1"], CHILD_ENV)
    with console.status("starting ingest and worker (model load, head profiling)..."):
        wait_log(children, "ingest", "ingest listening", 180, lambda: stop.requested)
        wait_log(children, "worker", " up: redis", 180, lambda: stop.requested)
    api_port = port_or_free(args.api_port)
    children.spawn("analytics", SERVICE + ["analytics", "--config", cloud_yaml, "--no-discover"], CHILD_ENV)
    children.spawn("api", SERVICE + ["api", "--redis-url", redis_url, "--listen", f"127.0.0.1:{api_port}"], CHILD_ENV)
    wait_log(children, "api", "dashboard at", 60, lambda: stop.requested)
    edge_cmd = SERVICE + ["edge", "--config", str(workdir / "edge.yaml"),
                          "--stats-json", str(workdir / "edge-stats.json")]
    if args.frames:
        edge_cmd += ["--frames", str(args.frames)]
    children.spawn("edge", edge_cmd, CHILD_ENV)
    return redis_url, api_port


def edge_stats(workdir: Path) -> dict:
    try:
        return dict(json.loads((workdir / "edge-stats.json").read_text()))
    except (OSError, ValueError):
        return {}


def watch(args: argparse.Namespace, children: Children, board: Board, workdir: Path, stop: Stop,
          console: Console, started: float) -> None:
    """Refresh the table until the duration is up, the edge ends, a signal arrives or a child dies."""
    def title() -> str:
        of = f" of {args.duration:g}" if args.duration else ""
        return f"split-infer demo: {time.monotonic() - started:.0f} s{of}  (Ctrl-C stops)"

    live = None
    if not args.no_live and console.is_terminal:
        live = Live(render(board.rows({}), title()), console=console, refresh_per_second=2, transient=False)
        live.start()
    try:
        while not stop.requested:
            if args.duration and time.monotonic() - started >= args.duration:
                return
            dead = [n for n in children.dead() if n != "edge"]
            if dead:
                raise StartError(f"{dead[0]} exited unexpectedly:\n{children.log_tail(dead[0])}")
            if "edge" in children.dead():
                code = children.procs["edge"].returncode
                if code != 0:
                    raise StartError(f"edge exited with {code}:\n{children.log_tail('edge')}")
                return  # --frames reached, or every source ended
            if live:
                board.poll()
                live.update(render(board.rows(edge_stats(workdir)), title()))
            time.sleep(0.5)
    finally:
        if live:
            live.stop()


def cloud_dropped(r: Client, keys: Keys, ids: list[str]) -> int:
    """Frames shed or dead-lettered in the cloud (each camera has its own two streams)."""
    return total_length(r, [s for c in ids for s in (keys.dropped_stream(c), keys.dead_letter_stream(c))])


def drain(r: Client, keys: Keys, ids: list[str], acked: int, stop: Stop) -> None:
    """Let the worker finish what was queued: what the edge delivered is not thrown away. After a
    signal the wait is shorter, and a second signal ends it."""
    deadline = time.monotonic() + (20 if not stop.requested else 10)
    while time.monotonic() < deadline and stop.count < 2:
        done = total_length(r, [keys.detections_stream(c) for c in ids]) + cloud_dropped(r, keys, ids)
        if done >= acked:
            return
        time.sleep(0.3)


def summarise(r: Client, keys: Keys, ids: list[str], stats: dict, elapsed: float,
              args: argparse.Namespace) -> dict[str, Any]:
    cams = stats.get("cameras", {}).values()
    acked = sum(c.get("acked", 0) for c in cams)
    recorded = sum(int(r.xlen(keys.detections_stream(c))) for c in ids)
    summary: dict[str, Any] = {
        "cameras": len(ids), "seconds": round(elapsed, 1), "frames_acked": acked, "detection_records": recorded,
        "cloud_dropped": cloud_dropped(r, keys, ids),
        "fps": round(recorded / elapsed, 2) if elapsed else 0.0,
        "bytes_per_frame": round(sum(c.get("payload_bytes", 0) for c in cams) / max(1, acked)),
        "codec": args.codec,
    }
    anchors = [c["x264_bytes_per_frame"]["bytes"] for c in cams if c.get("x264_bytes_per_frame")]
    if anchors:
        summary["x264"] = {"crf": args.x264_crf, "bytes_per_frame": round(statistics.mean(anchors))}
    return summary


def run(args: argparse.Namespace, children: Children, workdir: Path, stop: Stop, console: Console) -> dict:
    cams, origin = build_cameras(args)
    console.print(f"[bold]split-infer demo[/]: {len(cams)} camera(s) from {origin}")
    console.print(f"model {args.model} cut {args.cut} at {'x'.join(map(str, args.imgsz))}, codec {args.codec}, "
                  f"{args.fps:g} fps cap per camera (sized for real time on 2 cores); logs in {workdir}")
    redis_url, api_port = start_pipeline(args, cams, children, workdir, stop, console)
    console.print(f"dashboard: [bold]http://127.0.0.1:{api_port}/[/]  (read API: /api/cameras, /openapi.json)")
    r = connect(redis_url)  # one server or a cluster, as the URL says
    keys = Keys.from_env()  # the children's: they inherit this environment
    ids = [c["id"] for c in cams]
    board = Board(r, keys, ids)
    started = time.monotonic()
    watch(args, children, board, workdir, stop, console, started)
    children.terminate("edge", 30)  # drains its buffer
    stats = edge_stats(workdir)
    drain(r, keys, ids, sum(c.get("acked", 0) for c in stats.get("cameras", {}).values()), stop)
    board.poll()
    elapsed = time.monotonic() - started
    console.print(render(board.rows(stats), f"split-infer demo: final ({elapsed:.0f} s)"))
    summary = summarise(r, keys, ids, stats, elapsed, args)
    return {"dashboard": f"http://127.0.0.1:{api_port}/", **summary, "source": origin}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=False)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="split-infer-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    stop = Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        console.print_json(json.dumps(run(args, children, workdir, stop, console)))
        return 0
    except Interrupted:
        console.print("split-infer demo: interrupted during start-up; stopping")
        return 130
    except StartError as e:
        console.print(f"[red]split-infer demo: {e}[/]")
        return 1
    except ConfigError as e:
        console.print(f"[red]split-infer demo: {e}[/]")
        return 2
    finally:
        children.stop_all()
        for s, h in old.items():
            signal.signal(s, h)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
