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
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from split_infer.codec import DEFAULT_CODEC
from split_infer.config import ConfigError, EdgeConfig, load_config
from split_infer.keys import Keys
from split_infer.records import DetectionResult, RecordError

VEHICLES = {"car", "truck", "bus", "motorcycle", "bicycle"}
# x264 veryfast at CRF 22 agrees with the reference about as the default codec (CRF 28) does on the
# demo's clip at 640x384 (0.93-0.97 against 0.945; docs/bandwidth.md). On the street clip the
# equal-agreement CRF is about 33: it depends on the footage, so the column is a guide, not a law.
ANCHOR_CRF = 22
WINDOW_S = 5.0


class DemoError(RuntimeError):
    pass


class Interrupted(Exception):
    """Ctrl-C or SIGTERM before the pipeline was running."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Child pre-exec: own process group, and SIGTERM when the demo process dies (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Children:
    """The demo's child processes, each in its own process group, logs in the work dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)
        self.procs[name] = p
        return p

    def log_tail(self, name: str, n: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def terminate(self, name: str, timeout: float = 15.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):  # edge first, Redis last
            self.terminate(name)


def start_redis(children: Children, workdir: Path) -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise DemoError("no redis-server binary on PATH: install it (apt-get install -y redis-server) "
                        "or point the demo at a running Redis with --redis-url redis://HOST:PORT/DB")
    port = free_port()
    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    children.spawn("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(data), "--daemonize", "no"])
    import redis

    r = redis.Redis(port=port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            r.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            if "redis" in children.dead():
                raise DemoError(f"redis-server exited:\n{children.log_tail('redis')}") from None
            time.sleep(0.1)
    raise DemoError("redis-server did not answer within 15 s")


def wait_log(children: Children, name: str, text: str, timeout: float, stopped=lambda: False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopped():
            raise Interrupted
        if text in children.log_tail(name, 20000):
            return
        if name in children.dead():
            raise DemoError(f"{name} exited during start-up:\n{children.log_tail(name)}")
        time.sleep(0.2)
    raise DemoError(f"{name} did not start within {timeout:.0f} s:\n{children.log_tail(name)}")


def build_cameras(args: argparse.Namespace) -> tuple[list[dict], str]:
    if args.camera:
        return [{"id": f"cam{i}", "url": u, "fps": args.fps} for i, u in enumerate(args.camera)], "--camera options"
    if args.config:
        cfg = load_config(args.config, EdgeConfig)
        return [c.model_dump(mode="json") for c in cfg.cameras], f"cameras of {args.config}"
    from split_infer.apps.samples import demo_footage

    video, origin = demo_footage()
    line = middle_line(video)  # illustrative: a vertical counting line through the middle of the frame
    cams = [{"id": f"cam{i}", "url": str(video), "loop": True, "fps": args.fps, "lines": [line]}
            for i in range(args.feeds)]
    return cams, origin


def middle_line(video: Path) -> dict:
    import cv2

    cap = cv2.VideoCapture(str(video))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    if w <= 0 or h <= 0:
        raise DemoError(f"cannot read the size of {video}")
    return {"name": "middle", "a": [w / 2, 0], "b": [w / 2, h]}


def port_or_free(port: int) -> int:
    """`port` if nothing listens there, else a free one (the demo must not fail on a busy 8080)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


# -- the live table ------------------------------------------------------------------------------
class Board:
    """Per-camera figures from the detection streams, read incrementally (XRANGE after the last id)."""

    def __init__(self, r, keys: Keys, cams: list[str]) -> None:
        self.r, self.keys, self.cams = r, keys, cams
        self.last = {c: "0-0" for c in cams}
        self.frames = {c: 0 for c in cams}
        self.vehicles_now: dict[str, int | None] = {c: None for c in cams}
        self.vehicles_max = {c: 0 for c in cams}
        self.recent: dict[str, list[tuple[float, float]]] = {c: [] for c in cams}  # (done_ts, latency)

    def poll(self) -> None:
        now = time.time()
        for cam in self.cams:
            while True:
                entries = self.r.xrange(self.keys.detections_stream(cam), f"({self.last[cam]}", "+", count=500)
                if not entries:
                    break
                for eid, f in entries:
                    self.last[cam] = eid.decode()
                    try:
                        rec = DetectionResult.from_fields(f)
                    except RecordError:
                        continue  # not a worker's record: nothing to show
                    done = rec.done_ts or now
                    self.recent[cam].append((done, done - rec.capture_ts))
                    n = sum(1 for d in rec.detections if d.class_name in VEHICLES)
                    self.vehicles_now[cam] = n
                    self.vehicles_max[cam] = max(self.vehicles_max[cam], n)
                    self.frames[cam] += 1
            self.recent[cam] = [x for x in self.recent[cam] if now - x[0] <= WINDOW_S]

    def rows(self, edge: dict) -> list[dict[str, Any]]:
        rows = []
        for cam in self.cams:
            e = edge.get("cameras", {}).get(cam, {})
            lat = [x[1] for x in self.recent[cam]]
            now = self.vehicles_now[cam]
            rows.append({
                "camera": cam,
                "state": e.get("capture", {}).get("state", "?"),
                "fps": len(lat) / WINDOW_S,
                "bytes_per_frame": e.get("bytes_per_frame"),
                "x264_bytes_per_frame": (e.get("x264_bytes_per_frame") or {}).get("bytes"),
                "latency_ms": statistics.median(lat) * 1000 if lat else None,
                "vehicles": None if now is None else f"{now} / {self.vehicles_max[cam]}",
                "frames": self.frames[cam],
                "dropped": (e.get("dropped_buffer", 0) + e.get("dropped_superseded", 0)
                            + e.get("capture", {}).get("skipped", 0)),
            })
        return rows


def render(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col, just in (("camera", "left"), ("state", "left"), ("fps", "right"), ("bytes/frame", "right"),
                      ("x264 same agreement", "right"),
                      ("latency p50", "right"), ("vehicles now/max", "right"), ("frames", "right"),
                      ("skipped", "right")):
        t.add_column(col, justify=just)
    for row in rows:
        t.add_row(row["camera"], row["state"], f"{row['fps']:.1f}",
                  f"{row['bytes_per_frame']:,.0f}" if row["bytes_per_frame"] else "-",
                  f"{row['x264_bytes_per_frame']:,.0f}" if row.get("x264_bytes_per_frame") else "-",
                  f"{row['latency_ms']:.0f} ms" if row["latency_ms"] is not None else "-",
                  row["vehicles"] or "-", str(row["frames"]), str(row["dropped"]))
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="split-infer demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--camera", action="append", help="camera URL (repeatable); default: eight sample feeds")
    ap.add_argument("--config", help="edge YAML whose cameras to use")
    ap.add_argument("--feeds", type=int, default=8, help="number of sample feeds (default 8)")
    ap.add_argument("--fps", type=float, default=2.0, help="fps cap per camera (default 2: real time on 2 cores)")
    ap.add_argument("--imgsz", default="320x192", help="model input WIDTHxHEIGHT (default 320x192)")
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--codec", default=DEFAULT_CODEC, help="feature codec spec (docs/codec.md)")
    ap.add_argument("--x264-crf", type=int, default=ANCHOR_CRF,
                    help="beside each camera's bytes, what x264 at this CRF spends on the same frames (the CRF at "
                         "which x264 agrees with the reference as the default codec does: docs/bandwidth.md)")
    ap.add_argument("--redis-url", help="use this Redis instead of an embedded redis-server")
    ap.add_argument("--duration", type=float, help="stop after S seconds")
    ap.add_argument("--frames", type=int, help="stop after the edge has taken N frames")
    ap.add_argument("--slo-ms", type=float, default=1500.0, help="worker latency objective (older frames are shed)")
    ap.add_argument("--workdir", type=Path, help="keep configs and logs here (default: a temp dir, removed)")
    ap.add_argument("--no-live", action="store_true", help="print the table once at the end only")
    ap.add_argument("--api-port", type=int, default=8080, help="dashboard and read API port (a free one if busy)")
    args = ap.parse_args(argv)

    from rich.console import Console

    from split_infer.model.preprocess import parse_imgsz

    console = Console(stderr=False)
    imgsz = parse_imgsz(args.imgsz)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="split-infer-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    children = Children(workdir)
    stop = {"signal": None, "count": 0}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        stop["count"] += 1  # a second Ctrl-C skips the wait for the worker

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    summary: dict[str, Any] = {}
    try:
        cams, origin = build_cameras(args)
        console.print(f"[bold]split-infer demo[/]: {len(cams)} camera(s) from {origin}")
        console.print(f"model {args.model} cut {args.cut} at {imgsz[0]}x{imgsz[1]}, codec {args.codec}, "
                      f"{args.fps:g} fps cap per camera (sized for real time on 2 cores); logs in {workdir}")
        from split_infer.model.export import ensure_edge_ir

        model_dir = ensure_edge_ir(args.model, args.cut, imgsz)  # torch, once; the edge process stays torch-free
        redis_url = args.redis_url or start_redis(children, workdir)
        port = free_port()
        model = {"name": args.model, "cut": args.cut, "imgsz": list(imgsz)}
        # One thread each for the edge and the head: they share the machine, and two processes that
        # each spread OpenVINO over every core slow each other down (benchmarks/pipeline.py measures it).
        cloud = {"redis_url": redis_url, "listen": f"127.0.0.1:{port}", "model": model, "latency_slo_ms": args.slo_ms,
                 "cameras": cams, "worker": {"head_threads": 1}}
        edge = {"cloud": f"127.0.0.1:{port}", "model": model, "model_dir": str(model_dir), "codec": args.codec,
                "cameras": cams, "threads": 1, "anchor_x264_crf": args.x264_crf}
        (workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
        (workdir / "edge.yaml").write_text(yaml.safe_dump(edge))
        py = [sys.executable, "-m", "split_infer"]
        env = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        children.spawn("ingest", py + ["cloud", "ingest", "--config", str(workdir / "cloud.yaml")], env)
        children.spawn("worker", py + ["cloud", "worker", "--config", str(workdir / "cloud.yaml"), "--name", "demo-w1"], env)
        with console.status("starting ingest and worker (model load, head profiling)..."):
            wait_log(children, "ingest", "ingest listening", 180, lambda: stop["signal"] is not None)
            wait_log(children, "worker", " up: redis", 180, lambda: stop["signal"] is not None)
        api_port = port_or_free(args.api_port)
        children.spawn("analytics", py + ["analytics", "--config", str(workdir / "cloud.yaml"), "--no-discover"], env)
        children.spawn("api", py + ["api", "--redis-url", redis_url, "--listen", f"127.0.0.1:{api_port}"], env)
        wait_log(children, "api", "dashboard at", 60, lambda: stop["signal"] is not None)
        console.print(f"dashboard: [bold]http://127.0.0.1:{api_port}/[/]  (read API: /api/cameras, /openapi.json)")
        summary["dashboard"] = f"http://127.0.0.1:{api_port}/"
        edge_cmd = py + ["edge", "--config", str(workdir / "edge.yaml"), "--stats-json", str(workdir / "edge-stats.json")]
        if args.frames:
            edge_cmd += ["--frames", str(args.frames)]
        children.spawn("edge", edge_cmd, env)

        import redis
        from rich.live import Live

        r = redis.Redis.from_url(redis_url)
        keys = Keys.from_env()  # the children's: they inherit this environment
        ids = [c["id"] for c in cams]
        started = time.monotonic()

        def edge_stats() -> dict:
            try:
                return json.loads((workdir / "edge-stats.json").read_text())
            except (OSError, ValueError):
                return {}

        def title() -> str:
            return f"split-infer demo: {time.monotonic() - started:.0f} s" + \
                (f" of {args.duration:g}" if args.duration else "") + "  (Ctrl-C stops)"

        board = Board(r, keys, ids)
        live = Live(render(board.rows({}), title()), console=console, refresh_per_second=2,
                    transient=False) if not args.no_live and console.is_terminal else None
        if live:
            live.start()
        try:
            while stop["signal"] is None:
                if args.duration and time.monotonic() - started >= args.duration:
                    break
                dead = [n for n in children.dead() if n != "edge"]
                if dead:
                    raise DemoError(f"{dead[0]} exited unexpectedly:\n{children.log_tail(dead[0])}")
                if "edge" in children.dead():
                    if children.procs["edge"].returncode != 0:
                        raise DemoError(f"edge exited with {children.procs['edge'].returncode}:\n{children.log_tail('edge')}")
                    break  # --frames reached, or every source ended
                if live:
                    board.poll()
                    live.update(render(board.rows(edge_stats()), title()))
                time.sleep(0.5)
        finally:
            if live:
                live.stop()
        children.terminate("edge", 30)  # drains its buffer
        es = edge_stats()
        acked = sum(c.get("acked", 0) for c in es.get("cameras", {}).values())
        # Let the worker finish what was queued: what the edge delivered is not thrown away. After
        # a signal the wait is shorter, and a second signal ends it.
        deadline = time.monotonic() + (20 if stop["signal"] is None else 10)
        while time.monotonic() < deadline and stop["count"] < 2:
            done = sum(r.xlen(keys.detections_stream(c)) for c in ids) + r.xlen(keys.dropped) + r.xlen(keys.dead_letter)
            if done >= acked:
                break
            time.sleep(0.3)
        board.poll()
        rows = board.rows(es)
        elapsed = time.monotonic() - started
        console.print(render(rows, f"split-infer demo: final ({elapsed:.0f} s)"))
        recorded = sum(int(r.xlen(keys.detections_stream(c))) for c in ids)
        summary.update({"cameras": len(ids), "seconds": round(elapsed, 1), "frames_acked": acked, "detection_records": recorded,
                   "cloud_dropped": int(r.xlen(keys.dropped)) + int(r.xlen(keys.dead_letter)),
                   "fps": round(recorded / elapsed, 2) if elapsed else 0.0,
                   "bytes_per_frame": round(sum(c.get("payload_bytes", 0) for c in es.get("cameras", {}).values())
                                            / max(1, acked)), "source": origin, "codec": args.codec})
        anchors = [c["x264_bytes_per_frame"]["bytes"] for c in es.get("cameras", {}).values() if c.get("x264_bytes_per_frame")]
        if anchors:
            summary["x264"] = {"crf": args.x264_crf, "bytes_per_frame": round(statistics.mean(anchors))}
        console.print_json(json.dumps(summary))
        return 0
    except Interrupted:
        console.print("split-infer demo: interrupted during start-up; stopping")
        return 130
    except DemoError as e:
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
