"""Run the real pipeline for tests: ingest, workers and edge as subprocesses on loopback.

Each service runs in its own process group, so a test can kill one (SIGKILL, SIGTERM) and the
teardown leaves nothing behind. Redis is the real one at 127.0.0.1:6379, in a database number of
its own (flushed before and after), so tests of other modules are untouched.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import yaml

from media import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
IMGSZ = (320, 192)


def redis_db(db: int) -> redis.Redis:
    r = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        r.ping()
    except redis.exceptions.RedisError as e:
        pytest.fail(f"Redis is not reachable at 127.0.0.1:6379 ({e}); the pipeline tests need a real Redis 7")
    return r


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Pipeline:
    def __init__(self, tmp: Path, db: int, cameras: list[dict], *, overload: str = "late",
                 edge_extra: dict | None = None, cloud_extra: dict | None = None) -> None:
        self.tmp, self.db = tmp, db
        from split_infer.model.export import ensure_edge_ir

        ensure_edge_ir("yolov5s", 4, IMGSZ)  # the edge process loads the IR; export it once (torch, here)
        self.r = redis_db(db)
        self.r.flushdb()
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        model = {"name": "yolov5s", "cut": 4, "imgsz": list(IMGSZ)}
        cloud = {"redis_url": f"redis://127.0.0.1:6379/{db}", "listen": f"127.0.0.1:{self.port}", "model": model,
                 "head_runtime": "openvino", "latency_slo_ms": 5000,
                 "worker": {"overload": overload, "claim_idle_ms": 3000, "claim_interval_s": 1.0}}
        cloud.update(cloud_extra or {})
        edge = {"cloud": f"127.0.0.1:{self.port}", "model": model, "cameras": cameras, "buffer_frames": 256}
        edge.update(edge_extra or {})
        self.cloud_yaml, self.edge_yaml = tmp / "cloud.yaml", tmp / "edge.yaml"
        self.cloud_yaml.write_text(yaml.safe_dump(cloud))
        self.edge_yaml.write_text(yaml.safe_dump(edge))
        self.sent_log, self.stats_json = tmp / "sent.jsonl", tmp / "edge-stats.json"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        p = subprocess.Popen([PY, "-m", "split_infer", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_ingest(self) -> None:
        self._spawn("ingest", ["cloud", "ingest", "--config", str(self.cloud_yaml)])

    def wait_ingest(self, timeout: float = 90) -> None:
        wait_for(lambda: "ingest listening" in self.log("ingest") or self._dead("ingest"), timeout, "the ingest")
        assert not self._dead("ingest"), self.log("ingest")[-3000:]

    def start_worker(self, name: str) -> None:
        self._spawn(name, ["cloud", "worker", "--config", str(self.cloud_yaml), "--name", name])

    def wait_worker(self, name: str, timeout: float = 120) -> None:
        wait_for(lambda: " up: redis" in self.log(name) or self._dead(name), timeout, f"worker {name}")
        assert not self._dead(name), self.log(name)[-3000:]

    def start_edge(self, *extra: str) -> subprocess.Popen:
        return self._spawn("edge", ["edge", "--config", str(self.edge_yaml), "--sent-log", str(self.sent_log),
                                    "--stats-json", str(self.stats_json), *extra])

    def _dead(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is not None

    def signal(self, name: str, sig: int) -> None:
        p = self.procs[name]
        if p.poll() is None:
            os.killpg(p.pid, sig)

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout} s:\n{self.log(name)[-3000:]}") from None

    def edge_stats(self) -> dict:
        try:
            return json.loads(self.stats_json.read_text())
        except (OSError, ValueError):
            return {}

    def outcomes(self) -> list[dict]:
        if not self.sent_log.exists():
            return []
        return [json.loads(line) for line in self.sent_log.read_text().splitlines() if line.strip()]

    def records(self, camera: str) -> list[dict]:
        out = []
        for _, f in self.r.xrange(f"si:detections:{camera}"):
            d = {k.decode(): v.decode() for k, v in f.items()}
            d["seq"] = int(d["seq"])
            d["detections"] = json.loads(d["detections"])
            out.append(d)
        return out

    def cloud_drops(self) -> list[dict]:
        out = []
        for stream in ("si:dropped", "si:deadletter"):
            for _, f in self.r.xrange(stream):
                d = {k.decode(): v.decode() for k, v in f.items()}
                d["seq"] = int(d["seq"])
                d["stream"] = stream
                out.append(d)
        return out

    def settled(self, acked: set[tuple[str, str, int]]) -> bool:
        """Every acknowledged frame has a detection record or a counted cloud drop."""
        seen = {(d["camera"], d["session"], d["seq"]) for d in self.cloud_drops()}
        for cam in {a[0] for a in acked}:
            seen |= {(cam, d["session"], d["seq"]) for d in self.records(cam)}
        return acked <= seen

    def stop(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(10)
        self.r.flushdb()


def duplicates(items) -> list:
    return [k for k, n in Counter(items).items() if n > 1]
