"""`split-infer edge --config edge.yaml`: cameras -> features (OpenVINO) -> codec -> one gRPC stream.

    capture threads (newest frame per camera)
      -> scheduler (round-robin, one frame per camera in flight, letterbox)
      -> OpenVINO AsyncInferQueue (across cameras)
      -> callback thread: codec encoder per camera, thumbnail every snapshot_interval_s
      -> Outbox (bounded; oldest dropped and counted while the cloud is unreachable)
      -> one bidirectional gRPC stream; Acks return per-camera credit, RETRY, key-frame requests

This module and everything it imports stay free of torch and ultralytics (a test checks it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np

from split_infer import metrics
from split_infer.codec import make_encoder
from split_infer.config import CameraConfig, EdgeConfig, load_yaml
from split_infer.edge.anchor import X264Anchor
from split_infer.edge.capture import Capture, CameraState, Frame
from split_infer.edge.outbox import Item, Outbox
from split_infer.model.preprocess import content, letterbox
from split_infer.proto import pb, pb_grpc

log = logging.getLogger("split_infer.edge")

SNAPSHOT_WIDTH = 320
SNAPSHOT_QUALITY = 70
MAX_MESSAGE = 64 << 20  # far above any feature frame; the ingest enforces its own payload limit


@dataclass
class CameraCounters:
    seq: int = 0  # next sequence number
    extracted: int = 0
    acked: int = 0
    rejected: int = 0
    dropped_buffer: int = 0
    dropped_superseded: int = 0
    errors: int = 0  # encode failures
    payload_bytes: int = 0  # bytes of acknowledged payloads
    snapshot_bytes: int = 0
    snapshots: int = 0
    pending_dropped: int = 0  # drops since the last sent frame (FeatureFrame.dropped_before)
    last_snapshot: float = 0.0
    last_error: str | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)  # moving averages
    ack_latency_ms: float = 0.0  # capture -> Ack, moving average

    def observe(self, name: str, ms: float) -> None:
        old = self.stage_ms.get(name)
        self.stage_ms[name] = ms if old is None else 0.9 * old + 0.1 * ms


def resolve_model_dir(cfg: EdgeConfig) -> Path:
    if cfg.model_dir is not None:
        return Path(cfg.model_dir)
    from split_infer.model.export import default_ir_dir  # numpy only

    return default_ir_dir(cfg.model.name, cfg.model.cut, tuple(cfg.model.imgsz))


def load_extractor(cfg: EdgeConfig):
    from split_infer.edge.extractor import EdgeExtractor

    model_dir = resolve_model_dir(cfg)
    if not (model_dir / "edge.json").exists():
        w, h = cfg.model.imgsz
        raise SystemExit(
            f"edge: no exported edge model in {model_dir}; create it (on a machine with the cloud extra) with\n"
            f"  split-infer export --model {cfg.model.name} --cut {cfg.model.cut} --imgsz {w}x{h} --out {model_dir}")
    config = {"INFERENCE_NUM_THREADS": cfg.threads} if cfg.threads else None
    return EdgeExtractor(model_dir, cfg.device, config=config)


class EdgeNode:
    def __init__(self, cfg: EdgeConfig, extractor=None, *, sent_log: Path | None = None,
                 stats_path: Path | None = None, max_frames: int | None = None,
                 drain_timeout_s: float = 10.0, connect_timeout_s: float = 5.0) -> None:
        if not cfg.cameras:
            raise SystemExit("edge: no cameras configured")
        self.cfg = cfg
        self.session = secrets.token_hex(8)  # new at every start: (camera, session, seq) is unique
        self.extractor = extractor if extractor is not None else load_extractor(cfg)
        self.imgsz = tuple(self.extractor.imgsz)
        cut = self.extractor.meta.get("cut")
        self.captures = {c.id: Capture(c) for c in cfg.cameras}
        self.cams = {c.id: CameraCounters() for c in cfg.cameras}
        self.camera_cfg: dict[str, CameraConfig] = {c.id: c for c in cfg.cameras}
        self.encoders = {c.id: make_encoder(cfg.codec, cut=cut) for c in cfg.cameras}
        self.anchors = ({c.id: X264Anchor(cfg.anchor_x264_crf, c.fps or 10.0) for c in cfg.cameras}
                        if cfg.anchor_x264_crf is not None else {})
        self.outbox = Outbox(cfg.buffer_frames, cfg.inflight_frames)
        self.max_frames = max_frames
        self.drain_timeout_s = drain_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.stats_path = stats_path
        self._sent_log = open(sent_log, "a", buffering=1) if sent_log else None
        self._lock = threading.Lock()  # counters touched by the OpenVINO callback thread
        self._busy: set[str] = set()  # cameras with a frame in the infer queue
        self._taken = 0
        self._connected = False
        self._reconnects = 0
        self._started = time.time()
        self._cpu0 = time.process_time()  # reset when run() starts: the figure excludes the model load
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._closing = False  # no new frames; drain what is buffered
        self._last_conn_error: str | None = None
        self._refused: str | None = None  # the ingest's refusal of our token, until a frame is acked

    # -- inference -------------------------------------------------------------------------------
    def _on_features(self, outputs: dict[str, np.ndarray], userdata: tuple[Frame, float, float]) -> None:
        """OpenVINO callback thread: encode, thumbnail, build the message, hand it to the loop."""
        frame, pre_ms, t_start = userdata
        cam = frame.camera_id
        item = None
        try:
            extract_ms = (time.perf_counter() - t_start) * 1000.0
            t0 = time.perf_counter()
            encoded = self.encoders[cam].encode_frame(outputs)
            payload = encoded.payload
            encode_ms = (time.perf_counter() - t0) * 1000.0
            snapshot = self._maybe_snapshot(cam, frame)
            if cam in self.anchors:
                self.anchors[cam].add(content(frame.image, self.imgsz))
            h, w = frame.image.shape[:2]
            with self._lock:
                c = self.cams[cam]
                seq = c.seq
                c.seq += 1
                c.extracted += 1
                for name, ms in (("capture", frame.capture_ms), ("preprocess", pre_ms),
                                 ("extract", extract_ms), ("encode", encode_ms)):
                    c.observe(name, ms)
                    metrics.EDGE_STAGE.labels(name).observe(ms / 1000.0)
            msg = pb.FeatureFrame(
                camera_id=cam, seq=seq, capture_ts=frame.capture_ts, payload=payload, width=w, height=h,
                snapshot_jpeg=snapshot, session=self.session,
                timings_ms={"capture": frame.capture_ms, "preprocess": pre_ms, "extract": extract_ms,
                            "encode": encode_ms})
            item = Item(cam, seq, msg, {"index": frame.index, "connection": frame.connection, "key": encoded.key})
        except Exception as e:  # one bad frame costs one frame, never the node
            log.exception("camera %s: encoding frame %d failed", cam, frame.index)
            with self._lock:
                self.cams[cam].errors += 1
                self.cams[cam].last_error = f"encode: {type(e).__name__}: {e}"
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._enqueue, cam, item)

    def _maybe_snapshot(self, cam: str, frame: Frame) -> bytes:
        interval = self.camera_cfg[cam].snapshot_interval_s
        now = time.monotonic()
        with self._lock:
            c = self.cams[cam]
            if now - c.last_snapshot < interval:
                return b""
            c.last_snapshot = now
        h, w = frame.image.shape[:2]
        small = cv2.resize(frame.image, (SNAPSHOT_WIDTH, max(1, round(h * SNAPSHOT_WIDTH / w)))) if w > SNAPSHOT_WIDTH else frame.image
        ok, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        return jpg.tobytes() if ok else b""

    def _enqueue(self, cam: str, item: Item | None) -> None:
        self._busy.discard(cam)
        if item is None:
            return
        for dropped in self.outbox.push(item):
            self._drop(dropped, "dropped_buffer")
        metrics.EDGE_BUFFER.set(len(self.outbox))
        assert self._wake is not None
        self._wake.set()

    def _drop(self, item: Item, outcome: str) -> None:
        c = self.cams[item.camera]
        setattr(c, outcome, getattr(c, outcome) + 1)
        c.pending_dropped += 1
        self.encoders[item.camera].request_key_frame()  # a stateful stream must restart after a gap
        metrics.EDGE_FRAMES.labels(item.camera, outcome).inc()
        self._record(item, outcome)

    async def _schedule(self, queue) -> None:
        """Round-robin over cameras: newest frame of each idle camera into the infer queue."""
        order = list(self.captures)
        n, nxt = len(order), 0
        while not self._closing:
            if self.max_frames is not None and self._taken >= self.max_frames:
                break
            if all(cap.finished for cap in self.captures.values()):
                break
            started = False
            # Back-pressure: while the cloud is connected but slower than us, let the capture slots
            # skip frames instead of extracting features that would be dropped from a full buffer.
            if not (self._connected and len(self.outbox) + len(self._busy) >= self.outbox.capacity):
                for k in range(n):
                    cid = order[(nxt + k) % n]
                    if cid in self._busy:
                        continue
                    if not queue.is_ready():
                        break
                    frame = self.captures[cid].take()
                    if frame is None:
                        continue
                    t0 = time.perf_counter()
                    x, _ = letterbox(frame.image, self.imgsz)
                    pre_ms = (time.perf_counter() - t0) * 1000.0
                    self._busy.add(cid)
                    self._taken += 1
                    queue.start_async({0: x[None]}, (frame, pre_ms, time.perf_counter()))
                    nxt, started = (nxt + k + 1) % n, True
                    break
            await asyncio.sleep(0 if started else 0.003)

    # -- transport -------------------------------------------------------------------------------
    def _channel(self) -> grpc.aio.Channel:
        opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000)]
        return grpc.aio.insecure_channel(self.cfg.cloud, options=opts)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        md = [("x-edge-node", self.cfg.node_id)]
        if self.cfg.token:
            md.append(("authorization", f"Bearer {self.cfg.token}"))
        return tuple(md)

    @property
    def drained(self) -> bool:
        return not self._busy and not len(self.outbox) and not self.outbox.inflight

    async def _sender(self, give_up: asyncio.Event) -> None:
        """Keep one stream open to the ingest; reconnect with backoff; resend what was unanswered."""
        backoff = 0.25
        first = True
        while not give_up.is_set() and not (self._closing and self.drained):
            channel = self._channel()
            try:
                await asyncio.wait_for(channel.channel_ready(), self.connect_timeout_s)
                call = pb_grpc.FeatureIngestStub(channel).Stream(metadata=self._metadata())
                self._connected = True
                metrics.EDGE_CONNECTED.set(1)
                if not first:
                    self._reconnects += 1
                    metrics.EDGE_RECONNECTS.inc()
                log.info("connected to ingest %s", self.cfg.cloud)
                first = False
                writer = asyncio.create_task(self._write_frames(call))
                try:
                    async for ack in call:
                        self._refused = None
                        self._on_ack(ack)
                        backoff = 0.25
                        if self._closing and self.drained:
                            break
                finally:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
                    call.cancel()
                if self._closing and self.drained:
                    break
                self._last_conn_error = "the ingest closed the stream"
            except asyncio.TimeoutError:
                self._last_conn_error = f"ingest {self.cfg.cloud} unreachable (no connection in {self.connect_timeout_s:.0f} s)"
            except grpc.aio.AioRpcError as e:
                error = f"{e.code().name}: {e.details()}"
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    self._refused = error
                    log.error("the ingest refused this node's token: %s", e.details())
                # A retry after a refusal can surface as INTERNAL from gRPC's core: the refusal stays
                # the reported cause until the ingest acknowledges a frame again.
                self._last_conn_error = self._refused or error
            finally:
                was = self._connected
                self._connected = False
                metrics.EDGE_CONNECTED.set(0)
                n = self.outbox.requeue_inflight()
                if n:
                    for enc in self.encoders.values():  # resent deltas may meet a fresh decoder
                        enc.request_key_frame()
                await channel.close(grace=None)
            if self._closing and self.drained:
                break
            log.warning("ingest stream %s (%s); %d frame(s) buffered; retry in %.1f s",
                        "lost" if was else "not available", self._last_conn_error, len(self.outbox), backoff)
            try:
                await asyncio.wait_for(give_up.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, 5.0)

    async def _write_frames(self, call) -> None:
        assert self._wake is not None
        while True:
            item = self.outbox.next_sendable()
            if item is None:
                if self._closing and self.drained:
                    await call.done_writing()
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.05)  # also re-checks probe timers
                except asyncio.TimeoutError:
                    pass
                continue
            c = self.cams[item.camera]
            if not item.info.get("sent"):
                item.frame.dropped_before, c.pending_dropped = c.pending_dropped, 0
                item.info["sent"] = True
            item.frame.sent_ts = time.time()
            item.frame.timings_ms["sent_after_capture"] = (item.frame.sent_ts - item.frame.capture_ts) * 1000.0
            metrics.EDGE_INFLIGHT.set(len(self.outbox.inflight))
            metrics.EDGE_BUFFER.set(len(self.outbox))
            await call.write(item.frame)

    def _on_ack(self, ack: pb.Ack) -> None:
        cam = ack.camera_id
        if cam not in self.cams:
            log.warning("ack for unknown camera %r ignored", cam)
            return
        c = self.cams[cam]
        if ack.key_frame_needed:
            self.encoders[cam].request_key_frame()
        if ack.status == pb.Ack.RETRY:
            self.outbox.retry(cam, ack.seq, ack.credit, backoff_s=0.2)
        else:
            item, overtaken = self.outbox.acked(cam, ack.seq, ack.credit)
            for it in overtaken:
                self._drop(it, "dropped_superseded")
            if item is not None:
                if ack.status == pb.Ack.OK:
                    c.acked += 1
                    c.payload_bytes += len(item.frame.payload)
                    c.ack_latency_ms = (time.time() - item.frame.capture_ts) * 1000.0 if not c.ack_latency_ms else \
                        0.9 * c.ack_latency_ms + 0.1 * (time.time() - item.frame.capture_ts) * 1000.0
                    if item.frame.snapshot_jpeg:
                        c.snapshots += 1
                        c.snapshot_bytes += len(item.frame.snapshot_jpeg)
                        metrics.EDGE_BYTES.labels(cam, "snapshot").inc(len(item.frame.snapshot_jpeg))
                    metrics.EDGE_BYTES.labels(cam, "payload").inc(len(item.frame.payload))
                    metrics.EDGE_FRAMES.labels(cam, "acked").inc()
                    self._record(item, "acked")
                else:
                    c.rejected += 1
                    c.last_error = ack.error
                    c.pending_dropped += 1
                    log.warning("camera %s frame %d rejected: %s", cam, ack.seq, ack.error)
                    metrics.EDGE_FRAMES.labels(cam, "rejected").inc()
                    self._record(item, "rejected", ack.error)
        metrics.EDGE_INFLIGHT.set(len(self.outbox.inflight))
        assert self._wake is not None
        self._wake.set()

    def _record(self, item: Item, outcome: str, error: str = "") -> None:
        if self._sent_log is None:
            return
        rec = {"camera": item.camera, "session": self.session, "seq": item.seq, "outcome": outcome,
               "index": item.info.get("index"), "connection": item.info.get("connection"),
               "bytes": len(item.frame.payload)}
        if error:
            rec["error"] = error
        self._sent_log.write(json.dumps(rec) + "\n")

    # -- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        cams = {}
        for cid, cap in self.captures.items():
            s = cap.snapshot()
            with self._lock:
                c = self.cams[cid]
                d = {k: v for k, v in c.__dict__.items() if k not in ("stage_ms", "last_snapshot", "pending_dropped")}
                d["stage_ms"] = {k: round(v, 3) for k, v in c.stage_ms.items()}
            d["bytes_per_frame"] = round(c.payload_bytes / c.acked, 1) if c.acked else None
            anchor = self.anchors.get(cid)
            if anchor is not None and anchor.bytes_per_frame is not None:
                d["x264_bytes_per_frame"] = {"crf": anchor.crf, "bytes": round(anchor.bytes_per_frame, 1)}
            d["capture"] = s
            metrics.EDGE_CAMERA_UP.labels(cid).set(int(s["state"] == CameraState.ONLINE.value))
            cams[cid] = d
        return {"node_id": self.cfg.node_id, "session": self.session, "connected": self._connected,
                "cloud": self.cfg.cloud, "last_connection_error": self._last_conn_error,
                "reconnects": self._reconnects, "buffered": len(self.outbox), "inflight": len(self.outbox.inflight),
                "undelivered": len(self.outbox) + len(self.outbox.inflight),
                "uptime_s": round(time.time() - self._started, 3), "cpu_s": round(time.process_time() - self._cpu0, 3),
                "frames_taken": self._taken, "cameras": cams}

    def _write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = self.stats_path.with_suffix(self.stats_path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.stats(), indent=1))
        os.replace(tmp, self.stats_path)

    async def _stats_loop(self) -> None:
        while True:
            self._write_stats()
            await asyncio.sleep(1.0)

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, duration_s: float | None = None) -> dict[str, Any]:
        """Run until `stop`, `duration_s`, `max_frames`, or every source ended; then drain and return stats."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._cpu0 = time.process_time()
        queue = self.extractor.async_queue(self.cfg.infer_requests, self._on_features)
        for cap in self.captures.values():
            cap.start()
        give_up = asyncio.Event()
        sender = asyncio.create_task(self._sender(give_up))
        stats_task = asyncio.create_task(self._stats_loop())
        scheduler = asyncio.create_task(self._schedule(queue))
        waiters = [scheduler, asyncio.create_task(stop.wait())]
        if duration_s is not None:
            waiters.append(asyncio.create_task(asyncio.sleep(duration_s)))
        log.info("edge %s session %s: %d camera(s), model %s cut %s %sx%s, codec %s, ingest %s", self.cfg.node_id,
                 self.session, len(self.captures), self.extractor.meta.get("model"), self.extractor.meta.get("cut"),
                 *self.imgsz, self.cfg.codec, self.cfg.cloud)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._closing = True
            for w in waiters:
                w.cancel()
            await asyncio.to_thread(queue.wait_all)  # frames in OpenVINO finish and get queued
            for _ in range(100):
                if not self._busy:
                    break
                await asyncio.sleep(0.01)
            self._wake.set()
            try:  # deliver what is buffered, unless the cloud stays away
                await asyncio.wait_for(self._until_drained(), self.drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("stopping with %d frame(s) undelivered", len(self.outbox) + len(self.outbox.inflight))
            give_up.set()
            await asyncio.gather(sender, return_exceptions=True)
            stats_task.cancel()
            await asyncio.to_thread(self._stop_captures)
            stats = self.stats()
            if self.stats_path is not None:
                self._write_stats()
            if self._sent_log:
                self._sent_log.close()
        return stats

    async def _until_drained(self) -> None:
        while not self.drained:
            await asyncio.sleep(0.02)

    def _stop_captures(self) -> None:
        for cap in self.captures.values():
            cap._stop.set()
        for cap in self.captures.values():
            cap.stop(timeout=3.0)


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    cfg = load_yaml(args.config, EdgeConfig) if args.config else EdgeConfig()
    data = cfg.model_dump()
    if args.cloud:
        data["cloud"] = args.cloud
    if args.token:
        data["token"] = args.token
    if args.camera:
        data["cameras"] = [CameraConfig(id=f"cam{i}", url=u, loop=True).model_dump() for i, u in enumerate(args.camera)]
    return EdgeConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="split-infer edge", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="edge YAML (EdgeConfig: cameras, cloud address, token, model, codec)")
    ap.add_argument("--camera", action="append", help="camera URL (repeatable); replaces the config's cameras")
    ap.add_argument("--cloud", help="ingest host:port (overrides the config)")
    ap.add_argument("--token", help="bearer token for the ingest (overrides the config)")
    ap.add_argument("--frames", type=int, help="stop after taking N frames across cameras")
    ap.add_argument("--duration", type=float, help="stop after S seconds")
    ap.add_argument("--stats-json", type=Path, help="write per-camera stats here every second")
    ap.add_argument("--sent-log", type=Path, help="append one JSON line per frame outcome (tests, benchmarks)")
    ap.add_argument("--drain-timeout", type=float, default=10.0, help="seconds to deliver the buffer on stop")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"split-infer edge: invalid configuration: {e}", file=sys.stderr)
        return 2
    metrics.start_metrics_server(cfg.metrics_port or 0, cfg.metrics_addr)
    node = EdgeNode(cfg, sent_log=args.sent_log, stats_path=args.stats_json, max_frames=args.frames,
                    drain_timeout_s=args.drain_timeout)

    async def run() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await node.run(stop, args.duration)

    stats = asyncio.run(run())
    totals: dict[str, int] = defaultdict(int)
    for c in stats["cameras"].values():
        for k in ("extracted", "acked", "rejected", "dropped_buffer", "dropped_superseded"):
            totals[k] += c[k]
    print(json.dumps({"session": stats["session"], **totals, "undelivered": stats["undelivered"],
                      "reconnects": stats["reconnects"]}), file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    if any(t.is_alive() for cap in node.captures.values() for t in cap._threads):
        # A reader still blocked inside FFmpeg would abort the interpreter at exit; leave now.
        os._exit(0)
    return 0
