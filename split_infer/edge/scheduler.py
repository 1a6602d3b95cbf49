"""Which camera's frame runs next on the edge, and what becomes of it: extract, encode, queue.

Round-robin over the cameras with at most one frame per camera in flight (OpenVINO's async queue,
then the encoder), always the camera's newest frame (its capture slot keeps no other). OpenVINO's
callback only hands the features to a small encoder pool, so an infer request is free again as
soon as its inference ends rather than after the encode; the pool encodes (one encoder per camera:
one frame per camera in flight keeps each encoder's frames in order), adds a thumbnail every
`snapshot_interval_s`, and hands the message to the event loop, which puts it in the outbox for the
transport to send.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from split_infer import metrics
from split_infer.codec import Encoder, make_encoder
from split_infer.config import EdgeConfig
from split_infer.edge.anchor import X264Anchor
from split_infer.edge.capture import Capture, CapturedFrame
from split_infer.edge.extractor import EdgeExtractor
from split_infer.edge.ledger import Ledger
from split_infer.edge.outbox import Item, Outbox
from split_infer.edge.transport import IngestLink
from split_infer.model.preprocess import content, letterbox
from split_infer.proto import pb

if TYPE_CHECKING:
    from openvino import AsyncInferQueue

log = logging.getLogger(__name__)

SNAPSHOT_WIDTH = 320
SNAPSHOT_QUALITY = 70
IDLE_SLEEP_S = 0.003  # nothing could start: look again after this


@dataclass(frozen=True)
class Job:
    """A frame in OpenVINO's queue (its userdata)."""

    frame: CapturedFrame
    preprocess_ms: float
    started: float  # perf_counter when it entered the queue


class FrameScheduler:
    def __init__(self, cfg: EdgeConfig, extractor: EdgeExtractor, outbox: Outbox, ledger: Ledger, link: IngestLink,
                 max_frames: int | None = None) -> None:
        cut = extractor.meta.get("cut")
        self.imgsz = extractor.imgsz
        self.cameras = {c.id: c for c in cfg.cameras}
        self.captures = {c.id: Capture(c, decode_threads=cfg.decode_threads) for c in cfg.cameras}
        self.encoders: dict[str, Encoder] = {c.id: make_encoder(cfg.codec, cut=cut) for c in cfg.cameras}
        self.anchors = ({c.id: X264Anchor(cfg.anchor_x264_crf, c.fps or 10.0) for c in cfg.cameras}
                        if cfg.anchor_x264_crf is not None else {})
        self.outbox, self.ledger, self.link = outbox, ledger, link
        self.max_frames = max_frames
        self.busy: set[str] = set()  # cameras with a frame in the infer queue or the encoder pool
        cores = os.cpu_count() or 1
        self._encoding = ThreadPoolExecutor(max(1, min(len(cfg.cameras), cores)), thread_name_prefix="encode")
        self.taken = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def request_key_frame(self, camera: str) -> None:
        self.encoders[camera].request_key_frame()

    def finish_encoding(self) -> None:
        """Blocking: wait for the frames in the encoder pool (after OpenVINO's queue is empty)."""
        self._encoding.shutdown(wait=True)

    def start_captures(self) -> None:
        for cap in self.captures.values():
            cap.start()

    def stop_captures(self) -> None:
        """Blocking (run it in a thread): every camera is asked first, so they stop together."""
        for cap in self.captures.values():
            cap.request_stop()
        for cap in self.captures.values():
            cap.stop(timeout=3.0)

    # -- the event loop's side -------------------------------------------------------------------
    async def run(self, queue: AsyncInferQueue) -> None:
        """Feed `queue` until `max_frames` were taken or every source ended; cancel to stop sooner."""
        self._loop = asyncio.get_running_loop()
        order = list(self.captures)
        turn = 0
        while not self._exhausted():
            started = None if self._backpressure() else self._start_next(queue, order, turn)
            if started is not None:
                turn = started
            await asyncio.sleep(0 if started is not None else IDLE_SLEEP_S)

    def _exhausted(self) -> bool:
        if self.max_frames is not None and self.taken >= self.max_frames:
            return True
        return all(cap.finished for cap in self.captures.values())

    def _backpressure(self) -> bool:
        """While the cloud is connected but slower than us, let the capture slots skip frames
        instead of extracting features that would be dropped from a full buffer."""
        return self.link.connected and len(self.outbox) + len(self.busy) >= self.outbox.capacity

    def _start_next(self, queue: AsyncInferQueue, order: list[str], turn: int) -> int | None:
        """Start the newest frame of the first idle camera from `turn` on; returns the next turn."""
        for k in range(len(order)):
            camera = order[(turn + k) % len(order)]
            if camera in self.busy:
                continue
            if not queue.is_ready():
                return None
            frame = self.captures[camera].take()
            if frame is None:
                continue
            t0 = time.perf_counter()
            x, _ = letterbox(frame.image, self.imgsz)
            self.busy.add(camera)
            self.taken += 1
            queue.start_async({0: x[None]}, Job(frame, (time.perf_counter() - t0) * 1000.0, time.perf_counter()))
            return (turn + k + 1) % len(order)
        return None

    def _queue_item(self, camera: str, item: Item | None) -> None:
        self.busy.discard(camera)
        if item is None:
            return
        for dropped in self.outbox.push(item):
            self.ledger.dropped(dropped, "dropped_buffer")
        metrics.EDGE_BUFFER.set(len(self.outbox))
        self.link.wake()

    # -- the OpenVINO callback thread's side -----------------------------------------------------
    def on_features(self, outputs: dict[str, np.ndarray], job: Job) -> None:
        """OpenVINO's callback: note the inference time and pass the features to the encoder pool."""
        extract_ms = (time.perf_counter() - job.started) * 1000.0
        self._encoding.submit(self._encode_and_queue, outputs, job, extract_ms)

    def _encode_and_queue(self, outputs: dict[str, np.ndarray], job: Job, extract_ms: float) -> None:
        """Encode, build the message, hand it to the event loop (None when encoding failed)."""
        camera = job.frame.camera_id
        item = None
        try:
            item = self._encode(outputs, job, extract_ms)
        except Exception as e:  # one bad frame costs one frame, never the node
            log.exception("camera %s: encoding frame %d failed", camera, job.frame.index)
            self.ledger.encode_failed(camera, e)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._queue_item, camera, item)

    def _encode(self, outputs: dict[str, np.ndarray], job: Job, extract_ms: float) -> Item:
        frame, camera = job.frame, job.frame.camera_id
        t0 = time.perf_counter()
        encoded = self.encoders[camera].encode_frame(outputs)
        encode_ms = (time.perf_counter() - t0) * 1000.0
        snapshot = self._snapshot(frame)
        if camera in self.anchors:
            self.anchors[camera].add(content(frame.image, self.imgsz))
        timings = {"capture": frame.capture_ms, "decode": frame.decode_ms, "preprocess": job.preprocess_ms,
                   "extract": extract_ms, "encode": encode_ms}
        seq = self.ledger.extracted(camera, timings)
        h, w = frame.image.shape[:2]
        msg = pb.FeatureFrame(camera_id=camera, seq=seq, capture_ts=frame.capture_ts, payload=encoded.payload,
                              width=w, height=h, snapshot_jpeg=snapshot, session=self.ledger.session,
                              timings_ms=timings)
        info: dict[str, Any] = {"index": frame.index, "connection": frame.connection, "key": encoded.key}
        return Item(camera, seq, msg, info)

    def _snapshot(self, frame: CapturedFrame) -> bytes:
        """A small JPEG for the dashboard, at most once per the camera's snapshot interval."""
        if not self.ledger.snapshot_due(frame.camera_id, self.cameras[frame.camera_id].snapshot_interval_s):
            return b""
        h, w = frame.image.shape[:2]
        small = (cv2.resize(frame.image, (SNAPSHOT_WIDTH, max(1, round(h * SNAPSHOT_WIDTH / w))))
                 if w > SNAPSHOT_WIDTH else frame.image)
        ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        return jpg.tobytes() if ok else b""
