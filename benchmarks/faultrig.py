"""The fault matrix's rig: the real pipeline as child processes, a link the script can cut, and the
frames' ledger read back from the edge's sent log and Redis (benchmarks/faults.py, tests).

Services: an embedded redis-server with AOF on (`appendfsync always`), the ingest, workers,
analytics, the API and one edge node whose gRPC link goes through `LinkProxy` (loopback TCP, so
mutual TLS passes through untouched). Any service found dead that the fault did not kill is
restarted and reported.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from split_infer.apps.demo import middle_line  # noqa: E402
from split_infer.apps.processes import Children, StartError, free_port, wait_log  # noqa: E402
from split_infer.certs import make_dev_certs  # noqa: E402
from split_infer.keys import Keys  # noqa: E402

SERVICE_CMD = [sys.executable, "-m", "split_infer"]
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
READY = {"ingest": "ingest listening", "api": "dashboard at"}  # workers: " up: redis"


class LinkProxy:
    """A loopback TCP forwarder between the edge and the ingest; `cut()` closes every connection and
    refuses new ones until `restore()` (the edge sees the link drop, as on a real network outage)."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for s in socks:
            with self._lock:
                self._socks.discard(s)
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            socks = list(self._socks)
        self._close(*socks)

    def restore(self) -> None:
        self._cut.clear()

    def stop(self) -> None:
        self._closed = True
        self.cut()
        self.listener.close()


class StallingFeed:
    """A camera's HTTP stream (MPEG-TS, one ffmpeg per client, paced in real time, looped) that
    `stall()` freezes with its connections left open, as a camera whose stream hangs; `resume()`."""

    def __init__(self, video: Path, log: Path) -> None:
        self.video, self.log = video, log
        self.stalled = threading.Event()
        feed = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                cmd = [shutil.which("ffmpeg") or "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                       "-stream_loop", "-1", "-i", str(feed.video), "-c", "copy", "-f", "mpegts", "pipe:1"]
                with open(feed.log, "ab") as err:
                    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=err)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp2t")
                    self.end_headers()
                    assert proc.stdout is not None
                    while chunk := proc.stdout.read(4096):
                        while feed.stalled.is_set() and not feed.closed:
                            time.sleep(0.1)
                        self.wfile.write(chunk)
                except OSError:
                    pass
                finally:
                    proc.kill()
                    proc.wait()

            def log_message(self, *args: Any) -> None:
                pass

        self.closed = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/feed.ts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stall(self) -> None:
        self.stalled.set()

    def resume(self) -> None:
        self.stalled.clear()

    def stop(self) -> None:
        self.closed = True
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Settings:
    video: Path
    cameras: int = 8
    fps: float = 2.0
    workers: int = 1
    imgsz: tuple[int, int] = (320, 192)
    slo_ms: float = 5000.0
    profile_sizes: list[int] = field(default_factory=lambda: [1, 2, 4])
    with_api: bool = True
    with_analytics: bool = True
    stalling_camera: bool = False  # the last camera reads a StallingFeed over HTTP


class Rig:
    """The pipeline's processes; `kill`/`restart` one; `revive()` restarts what died uninvited."""

    def __init__(self, s: Settings, workdir: Path) -> None:
        self.s, self.workdir = s, workdir
        self.children = Children(workdir)
        self.keys = Keys.from_env()
        self.redis_port, self.ingest_port, self.api_port = free_port(), free_port(), free_port()
        self.redis_dir = workdir / "redis"
        self.redis_dir.mkdir(exist_ok=True)
        self.r = redis.Redis(port=self.redis_port, socket_timeout=5)
        self.proxy = LinkProxy(self.ingest_port)
        self.feed = StallingFeed(s.video, workdir / "feed.log") if s.stalling_camera else None
        self.sent_log, self.stats_path = workdir / "sent.jsonl", workdir / "edge-stats.json"
        self.camera_ids = [f"cam{i}" for i in range(s.cameras)]
        self.expected_down: set[str] = set()
        self.revived: list[str] = []
        self.generation: dict[str, int] = {}  # restarts per service (their log file names)
        self.line = middle_line(s.video)
        self._write_configs()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def _write_configs(self) -> None:
        s = self.s
        model = {"name": "yolov5s", "cut": 4, "imgsz": list(s.imgsz)}
        # every camera counts crossings of a vertical line through the middle of the frame (as the demo)
        cams = [{"id": c, "url": str(s.video), "loop": True, "fps": s.fps, "lines": [self.line]}
                for c in self.camera_ids]
        if self.feed is not None:
            cams[-1] = {"id": cams[-1]["id"], "url": self.feed.url, "fps": s.fps, "lines": [self.line]}
        certs = make_dev_certs(self.workdir / "certs", ["edge-0"])
        cloud = {"redis_url": self.redis_url, "listen": f"127.0.0.1:{self.ingest_port}", "model": model,
                 "head_runtime": "openvino", "latency_slo_ms": s.slo_ms, "cameras": cams,
                 "worker": {"head_threads": 1, "claim_idle_ms": 3000, "claim_interval_s": 1.0,
                            "profile_sizes": s.profile_sizes},
                 "tls": {"cert": str(certs.server_cert), "key": str(certs.server_key), "client_ca": str(certs.ca)}}
        edge = {"cloud": f"127.0.0.1:{self.proxy.port}", "model": model, "cameras": cams, "threads": 1,
                "buffer_frames": 512, "node_id": "edge-0",
                "tls": {"ca": str(certs.ca), "cert": str(certs.client_cert("edge-0")),
                        "key": str(certs.client_key("edge-0"))}}
        (self.workdir / "cloud.yaml").write_text(yaml.safe_dump(cloud))
        (self.workdir / "edge.yaml").write_text(yaml.safe_dump(edge))

    # -- processes -------------------------------------------------------------------------------
    def _cmd(self, name: str) -> list[str]:
        cfg = ["--config", str(self.workdir / "cloud.yaml")]
        if name == "redis":
            return [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port), "--bind",
                    "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                    "--dir", str(self.redis_dir), "--daemonize", "no"]
        if name == "ingest":
            return [*SERVICE_CMD, "cloud", "ingest", *cfg]
        if name.startswith("worker"):
            return [*SERVICE_CMD, "cloud", "worker", *cfg, "--name", name]
        if name == "analytics":
            return [*SERVICE_CMD, "analytics", *cfg, "--no-discover"]
        if name == "api":
            return [*SERVICE_CMD, "api", "--redis-url", self.redis_url, "--listen", f"127.0.0.1:{self.api_port}"]
        if name == "edge":
            return [*SERVICE_CMD, "edge", "--config", str(self.workdir / "edge.yaml"), "--sent-log",
                    str(self.sent_log), "--stats-json", str(self.stats_path)]
        raise ValueError(name)

    def spawn(self, name: str) -> None:
        if name == "redis" and shutil.which("redis-server") is None:
            raise StartError("no redis-server binary on PATH (apt-get install -y redis-server)")
        gen = self.generation.get(name, -1) + 1
        self.generation[name] = gen
        log = self.workdir / f"{name}.log"
        if log.exists():  # keep each run's log; the ready line is searched in the new one only
            log.rename(self.workdir / f"{name}.{gen - 1}.log")
        self.children.spawn(name, self._cmd(name), None if name == "redis" else SERVICE_ENV)

    def wait_ready(self, name: str, timeout: float = 240) -> None:
        if name == "redis":
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    self.r.ping()
                    return
                except redis.RedisError:
                    time.sleep(0.1)
            raise StartError("redis-server did not answer")
        if name == "edge" or name == "analytics":
            return
        wait_log(self.children, name, READY.get(name, " up: redis"), timeout)

    def services(self) -> list[str]:
        return (["redis", "ingest"] + [f"worker{i}" for i in range(self.s.workers)]
                + ["analytics"] * self.s.with_analytics + ["api"] * self.s.with_api)

    def start(self) -> None:
        for name in self.services():
            self.spawn(name)
            if name == "redis":
                self.wait_ready(name)
        for name in self.services():
            self.wait_ready(name)
        self.spawn("edge")

    def signal(self, name: str, sig: int) -> None:
        os.killpg(self.children.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL `name` and wait until it is gone."""
        self.expected_down.add(name)
        self.signal(name, signal.SIGKILL)
        self.children.procs[name].wait(10)

    def restart(self, name: str) -> None:
        self.spawn(name)
        self.expected_down.discard(name)

    def revive(self) -> None:
        """Restart any service that exited without being killed by the matrix (and say so)."""
        for name in self.children.dead():
            if name not in self.expected_down:
                self.revived.append(f"{name} (exit {self.children.procs[name].returncode})")
                self.spawn(name)

    def stop(self) -> None:
        self.proxy.stop()
        self.children.stop_all()
        if self.feed is not None:
            self.feed.stop()

    # -- what the pipeline shows ---------------------------------------------------------------------
    def edge_stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def entries(self, stream: str, last: bool = False) -> list[Any]:
        """The field dicts of a stream (only its newest entry with `last`)."""
        reply: Any = self.r.xrevrange(stream, count=1) if last else self.r.xrange(stream)
        return [f for _, f in reply or []]

    def entries_after(self, stream: str, last_id: str) -> list[Any]:
        reply: Any = self.r.xrange(stream, min=f"({last_id}", max="+")
        return list(reply or [])

    def api_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def analytics_backlog(self, timeout: float = 60) -> dict[str, int]:
        """Analytics' unread (lag) and unacknowledged (pending) detection records, once both reach 0
        or after `timeout` (then what remains)."""
        deadline = time.monotonic() + timeout
        while True:
            lag = pending = 0  # counted from the ids: XINFO's own `lag` can be unknown after an AOF reload
            for c in self.camera_ids:
                stream = self.keys.detections_stream(c)
                for g in self.r.xinfo_groups(stream):
                    if g["name"] in (Keys.ANALYTICS_GROUP, Keys.ANALYTICS_GROUP.encode()):
                        last = g["last-delivered-id"]
                        last = last.decode() if isinstance(last, bytes) else last
                        lag += len(self.entries_after(stream, last))
                        pending += g["pending"]
            if (lag == pending == 0) or time.monotonic() > deadline:
                return {"lag": lag, "pending": pending}
            time.sleep(0.5)

    def analytics_read_after(self, t: float) -> bool:
        """Analytics has read a detection record that was written after `t` (stream ids are ms)."""
        try:
            for c in self.camera_ids:
                for g in self.r.xinfo_groups(self.keys.detections_stream(c)):
                    if g["name"] in (Keys.ANALYTICS_GROUP, Keys.ANALYTICS_GROUP.encode()):
                        last = g["last-delivered-id"]
                        ms = int((last.decode() if isinstance(last, bytes) else last).split("-")[0])
                        if ms >= t * 1000:
                            return True
        except redis.RedisError:
            return False
        return False
