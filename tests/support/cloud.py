"""Helpers for the cloud tests: an in-process ingest on a loopback port, and frames as an edge
node sends them (random features, or the real edge part of yolov5n on the street footage)."""

from __future__ import annotations

import asyncio
import threading
import time

import cv2
import numpy as np

from split_infer.cloud.ingest import serve
from split_infer.codec import make_encoder
from split_infer.config import CloudConfig
from split_infer.keys import Keys
from split_infer.model.loading import load_model
from split_infer.model.preprocess import letterbox
from split_infer.proto import pb
from support.data import shared_file, street_video

SHAPES = {"x4": (1, 16, 12, 20)}  # a small feature layout for ingest tests


class IngestThread:
    """The real grpc.aio ingest server, on its own event loop in a thread, on a loopback port."""

    def __init__(self, cfg: CloudConfig, keys: Keys) -> None:
        """`cfg` with TLS set up serves TLS; without a certificate, plaintext (`tls.insecure`), as the
        in-process tests' own insecure channels expect (tests/test_transport_security.py covers TLS)."""
        update: dict = {"listen": "127.0.0.1:0"}
        if cfg.tls.cert is None:
            update["tls"] = cfg.tls.model_copy(update={"insecure": True})
        self.cfg = cfg.model_copy(update=update)
        self.keys = keys
        self.loop = asyncio.new_event_loop()
        self.bound: list[int] = []
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.stop_ev = asyncio.Event()
        ready = asyncio.Event()

        async def main() -> None:
            task = asyncio.create_task(serve(self.cfg, self.stop_ev, ready, self.bound, self.keys))
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

    def __enter__(self) -> IngestThread:
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


REAL_IMGSZ = (320, 192)


def real_features(n: int, imgsz: tuple[int, int] = REAL_IMGSZ, cut: int = 4) -> list[tuple[bytes, int, int]]:
    """(q8-zstd payload, width, height) of the first n frames of the street video, from the core's
    edge part of yolov5n (torch), as an edge node would send them."""
    import torch  # optional heavy dependency, as is the partition (torch): only these tests pay for it

    from split_infer.model.partition import partition

    edge, _ = partition(load_model(str(shared_file("yolov5n.pt"))), cut)
    cap = cv2.VideoCapture(str(street_video()))
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
