"""Run the real pipeline for tests: ingest, workers and edge as subprocesses on loopback.

Each service runs in its own process group, so a test can kill one (SIGKILL, SIGTERM) and the
teardown leaves nothing behind. Redis is the real one at 127.0.0.1:6379, in a database number of
its own (flushed before and after), so tests of other modules are untouched.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import yaml

from split_infer.apps.processes import free_port
from split_infer.keys import Keys
from split_infer.model.export import ensure_edge_ir
from support.processes import Services
from support.redisdb import connect, database_url
from support.tls import EDGE, cloud_tls, dev_certs, edge_tls
from support.wait import wait_for

IMGSZ = (320, 192)


class Pipeline:
    def __init__(self, tmp: Path, db: int, cameras: list[dict], *, overload: str = "late",
                 edge_extra: dict | None = None, cloud_extra: dict | None = None, tls: bool = True,
                 redis_url: str | None = None) -> None:
        """gRPC between the edge and the ingest is mutual TLS with development certificates; `tls=False`:
        plaintext, with `insecure: true` on both sides. `redis_url`: another Redis instead of database
        `db` of the shared one (a Redis Cluster: tests/support/rediscluster.py)."""
        self.tmp, self.db = tmp, db
        self.camera_ids = [c["id"] for c in cameras]
        url = redis_url or database_url(db)
        self.keys = Keys.from_env()  # the services': they inherit this environment
        ensure_edge_ir("yolov5s", 4, IMGSZ)  # the edge process loads the IR; export it once (torch, here)
        self.r = connect(url)
        self.r.flushdb()
        self.port = free_port()
        self.services = Services(tmp)
        model = {"name": "yolov5s", "cut": 4, "imgsz": list(IMGSZ)}
        cloud = {"redis_url": url, "listen": f"127.0.0.1:{self.port}", "model": model,
                 "head_runtime": "openvino", "latency_slo_ms": 5000,
                 "worker": {"overload": overload, "claim_idle_ms": 3000, "claim_interval_s": 1.0},
                 "tls": cloud_tls(dev_certs()) if tls else {"insecure": True}}
        cloud.update(cloud_extra or {})
        edge = {"cloud": f"127.0.0.1:{self.port}", "model": model, "cameras": cameras, "buffer_frames": 256,
                "node_id": EDGE, "tls": edge_tls(dev_certs()) if tls else {"insecure": True}}
        edge.update(edge_extra or {})
        self.cloud_yaml, self.edge_yaml = tmp / "cloud.yaml", tmp / "edge.yaml"
        self.cloud_yaml.write_text(yaml.safe_dump(cloud))
        self.edge_yaml.write_text(yaml.safe_dump(edge))
        self.sent_log, self.stats_json = tmp / "sent.jsonl", tmp / "edge-stats.json"

    def log(self, name: str) -> str:
        return self.services.log(name)

    def start_ingest(self) -> None:
        self.services.start("ingest", "cloud", "ingest", "--config", str(self.cloud_yaml))

    def wait_ingest(self, timeout: float = 90) -> None:
        wait_for(lambda: "ingest listening" in self.log("ingest") or self.services.exited("ingest"), timeout,
                 "the ingest")
        assert not self.services.exited("ingest"), self.log("ingest")[-3000:]

    def start_worker(self, name: str) -> None:
        self.services.start(name, "cloud", "worker", "--config", str(self.cloud_yaml), "--name", name)

    def wait_worker(self, name: str, timeout: float = 120) -> None:
        wait_for(lambda: " up: redis" in self.log(name) or self.services.exited(name), timeout, f"worker {name}")
        assert not self.services.exited(name), self.log(name)[-3000:]

    def start_edge(self, *extra: str) -> subprocess.Popen:
        return self.services.start("edge", "edge", "--config", str(self.edge_yaml), "--sent-log", str(self.sent_log),
                                   "--stats-json", str(self.stats_json), *extra)

    def signal(self, name: str, sig: int) -> None:
        self.services.signal(name, sig)

    def wait_exit(self, name: str, timeout: float) -> int:
        return self.services.wait_exit(name, timeout)

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
        for _, f in self.r.xrange(self.keys.detections_stream(camera)):
            d = {k.decode(): v.decode() for k, v in f.items()}
            d["seq"] = int(d["seq"])
            d["detections"] = json.loads(d["detections"])
            out.append(d)
        return out

    def cloud_drops(self) -> list[dict]:
        out = []
        streams = [s for c in self.camera_ids for s in (self.keys.dropped_stream(c), self.keys.dead_letter_stream(c))]
        for stream in streams:
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
        self.services.kill_all()
        self.r.flushdb()


def duplicates(items) -> list:
    return [k for k, n in Counter(items).items() if n > 1]
