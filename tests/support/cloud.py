"""Helpers for the cloud tests: the shared Redis (namespaced per test), a private redis-server
that a test may stop and restart, an in-process ingest on a loopback port, and real frames.

A missing Redis or redis-server binary is a test failure with a clear message, never a skip.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from split_infer import keys
from split_infer.codec import make_encoder
from split_infer.config import CloudConfig
from split_infer.proto import pb

SHARED_REDIS = "redis://127.0.0.1:6379/0"
SHAPES = {"x4": (1, 16, 12, 20)}  # a small feature layout for ingest tests


def shared_redis() -> redis.Redis:
    r = redis.Redis.from_url(SHARED_REDIS)
    try:
        r.ping()
    except redis.exceptions.RedisError as e:
        pytest.fail(f"Redis is not reachable at {SHARED_REDIS} ({e}); the cloud tests need a real Redis 7")
    return r


def fresh_prefix() -> str:
    p = f"test-{uuid.uuid4().hex[:10]}"
    keys.set_prefix(p)
    return p


def drop_prefix(r: redis.Redis, prefix: str) -> None:
    for k in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server (append-only, so a restart keeps its data) on a free port."""

    def __init__(self, tmp: Path, appendonly: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server binary not found (apt-get install -y redis-server)")
        self.exe, self.dir, self.port, self.appendonly = exe, tmp, free_port(), appendonly
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                r.ping()
                return
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        pytest.fail(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class IngestThread:
    """The real grpc.aio ingest server, on its own event loop in a thread, on a loopback port."""

    def __init__(self, cfg: CloudConfig) -> None:
        from split_infer.cloud.ingest import serve

        self.cfg = cfg.model_copy(update={"listen": "127.0.0.1:0"})
        self.loop = asyncio.new_event_loop()
        self.bound: list[int] = []
        self._serve = serve
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_ev = asyncio.Event()
        ready = asyncio.Event()

        async def main() -> None:
            task = asyncio.create_task(self._serve(self.cfg, self.stop_ev, ready, self.bound))
            await ready.wait()
            self._ready.set()
            await task

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # surfaced by the test
            self.error = e
            self._ready.set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.bound[0]}"

    def __enter__(self) -> "IngestThread":
        self.thread.start()
        assert self._ready.wait(20), "ingest did not start"
        if self.error:
            raise self.error
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.stop_ev.set)
        self.thread.join(15)
        assert not self.thread.is_alive(), "ingest did not stop"


def features(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def frame(camera: str, seq: int, session: str = "s1", payload: bytes | None = None,
          codec: str = "q8-zstd", **kw) -> pb.FeatureFrame:
    if payload is None:
        payload = make_encoder(codec).encode(features(seq))
    return pb.FeatureFrame(camera_id=camera, seq=seq, session=session, capture_ts=time.time(),
                           sent_ts=time.time(), payload=payload, width=640, height=360, **kw)


def shared_data() -> Path:
    d = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    for f in ("street-640x360.mp4", "yolov5n.pt"):
        if not (d / f).exists():
            pytest.fail(f"test data missing: {d / f} (the shared data folder beside the project)")
    return d


REAL_IMGSZ = (320, 192)


def real_features(n: int, imgsz: tuple[int, int] = REAL_IMGSZ, cut: int = 4) -> list[tuple[bytes, int, int]]:
    """(q8-zstd payload, width, height) of the first n frames of the street video, from the core's
    edge part of yolov5n (torch), as an edge node would send them."""
    import cv2
    import torch

    from split_infer.model.loading import load_model
    from split_infer.model.partition import partition
    from split_infer.model.preprocess import letterbox

    d = shared_data()
    edge, _ = partition(load_model(str(d / "yolov5n.pt")), cut)
    cap = cv2.VideoCapture(str(d / "street-640x360.mp4"))
    enc, out = make_encoder("q8-zstd", cut=cut), []
    with torch.no_grad():
        while len(out) < n:
            ok, img = cap.read()
            assert ok, "street video ended early"
            x, _ = letterbox(img, imgsz)
            feats = {k: v.numpy() for k, v in edge(torch.from_numpy(x)[None]).items()}
            out.append((enc.encode(feats), img.shape[1], img.shape[0]))
    cap.release()
    return out
