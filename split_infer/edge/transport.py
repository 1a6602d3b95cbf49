"""The edge node's one bidirectional gRPC stream to the ingest.

Sends what the outbox releases (per-camera credit and the node-wide window live in `Outbox`),
applies each Ack (OK, REJECTED, RETRY, new credit, key-frame requests), and keeps the stream
open: when it breaks, every unanswered frame goes back to the outbox, each camera's encoder is
asked for a key frame (resent deltas may meet a fresh decoder), and the link reconnects with
exponential backoff. It knows nothing of cameras or models: frames come from the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from split_infer import metrics
from split_infer.config import EdgeConfig
from split_infer.edge.ledger import Ledger
from split_infer.edge.outbox import Item, Outbox
from split_infer.proto import pb, pb_grpc
from split_infer.tls import explain, secure_or_insecure_channel

log = logging.getLogger(__name__)

MAX_MESSAGE = 64 << 20  # far above any feature frame; the ingest enforces its own payload limit
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1), ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]
FIRST_BACKOFF_S = 0.25  # after a stream ends; doubled per failed attempt, reset by any Ack
MAX_BACKOFF_S = 5.0
RETRY_BACKOFF_S = 0.2  # a camera answered RETRY sends nothing for this long
IDLE_POLL_S = 0.05  # with nothing sendable, look again this often (probe timers expire unannounced)


def call_metadata(cfg: EdgeConfig) -> tuple[tuple[str, str], ...]:
    """The node's name, and its bearer token when it has one (the ingest checks it per call)."""
    node = ("x-edge-node", cfg.node_id)
    return (node, ("authorization", f"Bearer {cfg.token}")) if cfg.token else (node,)


class IngestLink:
    """Keeps one stream to `cfg.cloud` until `run`'s `give_up` is set or everything is delivered.

    `producing()` says whether frames may still arrive from the scheduler; once it is False and
    the outbox is empty with nothing in flight, the link is `done` and closes the stream.
    """

    def __init__(self, cfg: EdgeConfig, outbox: Outbox, ledger: Ledger, request_key_frame: Callable[[str], None],
                 producing: Callable[[], bool], connect_timeout_s: float = 5.0) -> None:
        self.cloud = cfg.cloud
        self.tls = cfg.tls
        self.outbox = outbox
        self.ledger = ledger
        self.request_key_frame = request_key_frame
        self.producing = producing
        self.connect_timeout_s = connect_timeout_s
        self.metadata = call_metadata(cfg)
        self.connected = False
        self.connections = 0
        self.last_error: str | None = None
        self._refused: str | None = None  # the ingest's refusal of our token, until a frame is acked
        self._backoff = FIRST_BACKOFF_S
        self._wake = asyncio.Event()  # something became sendable (or the producer finished)

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    @property
    def done(self) -> bool:
        return not self.producing() and not len(self.outbox) and not self.outbox.inflight

    def wake(self) -> None:
        self._wake.set()

    async def run(self, give_up: asyncio.Event) -> None:
        while not give_up.is_set() and not self.done:
            had_stream = await self._session()
            if self.done:
                break
            log.warning("ingest stream %s (%s); %d frame(s) buffered; retry in %.1f s",
                        "lost" if had_stream else "not available", self.last_error, len(self.outbox), self._backoff)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(give_up.wait(), self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)

    async def _session(self) -> bool:
        """One channel and stream until either ends; True when a stream was opened."""
        channel = secure_or_insecure_channel(self.cloud, self.tls, CHANNEL_OPTIONS)
        opened = False
        try:
            await self._connect(channel)
            call = pb_grpc.FeatureIngestStub(channel).Stream(metadata=self.metadata)
            opened = True
            self._set_connected(True)
            await self._exchange(call)
            if not self.done:
                self.last_error = "the ingest closed the stream"
        except asyncio.TimeoutError:
            self.last_error = f"ingest {self.cloud} unreachable (no connection in {self.connect_timeout_s:.0f} s)"
        except ConnectionRefusedError as e:  # the TLS handshake failed: retrying will not help by itself
            self.last_error = str(e)
            log.error("%s", e)
        except grpc.aio.AioRpcError as e:
            self._call_failed(e)
        finally:
            self._set_connected(False)
            self._requeue_unanswered()
            await channel.close(grace=None)
        return opened

    async def _connect(self, channel: grpc.aio.Channel) -> None:
        """Wait for the channel; when it does not come up, ask it why once (a health check without
        wait-for-ready fails with gRPC's reason), so that a TLS failure is named, not a timeout."""
        try:
            await asyncio.wait_for(channel.channel_ready(), self.connect_timeout_s)
            return
        except asyncio.TimeoutError:
            pass
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2.0,
                                                            wait_for_ready=False)
        except grpc.aio.AioRpcError as e:
            hint = explain(e.details()) if e.code() == grpc.StatusCode.UNAVAILABLE else None
            if hint:
                raise ConnectionRefusedError(f"TLS with ingest {self.cloud} failed: {hint} ({e.details()})") from None
        raise asyncio.TimeoutError

    async def _exchange(self, call: grpc.aio.StreamStreamCall) -> None:
        """Write frames while reading Acks, until the ingest ends the stream or the link is done."""
        writer = asyncio.create_task(self._write_frames(call))
        try:
            async for ack in call:
                self._refused = None
                self._backoff = FIRST_BACKOFF_S
                self.on_ack(ack)
                if self.done:
                    break
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            call.cancel()

    async def _write_frames(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            item = self.outbox.next_sendable()
            if item is not None:
                self._stamp(item)
                await call.write(item.frame)
            elif self.done:
                await call.done_writing()
                return
            else:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)

    def _stamp(self, item: Item) -> None:
        """Fill in what is known only when a frame leaves: losses before it, and the send time."""
        frame = item.frame
        first_send = not item.info.get("sent")
        if first_send:
            frame.dropped_before = self.ledger.take_dropped_before(item.camera)
            item.info["sent"] = True
        frame.sent_ts = time.time()
        frame.timings_ms["sent_after_capture"] = (frame.sent_ts - frame.capture_ts) * 1000.0
        if first_send:  # capture-to-send latency, once per frame (a resend is not a new frame)
            metrics.EDGE_STAGE.labels("sent_after_capture").observe(frame.sent_ts - frame.capture_ts)
        metrics.EDGE_INFLIGHT.set(len(self.outbox.inflight))
        metrics.EDGE_BUFFER.set(len(self.outbox))

    def on_ack(self, ack: pb.Ack) -> None:
        if ack.camera_id not in self.ledger:
            log.warning("ack for unknown camera %r ignored", ack.camera_id)
            return
        if ack.key_frame_needed:
            self.request_key_frame(ack.camera_id)
        if ack.status == pb.Ack.RETRY:
            self.outbox.retry(ack.camera_id, ack.seq, ack.credit, backoff_s=RETRY_BACKOFF_S)
        else:
            self._settle(ack)
        metrics.EDGE_INFLIGHT.set(len(self.outbox.inflight))
        self._wake.set()

    def _settle(self, ack: pb.Ack) -> None:
        """An OK or REJECTED answer: the frame's outcome is final."""
        item, overtaken = self.outbox.acked(ack.camera_id, ack.seq, ack.credit)
        for lost in overtaken:
            self.ledger.dropped(lost, "dropped_superseded")
        if item is None:
            return
        if ack.status == pb.Ack.OK:
            self.ledger.acked(item)
            return
        log.warning("camera %s frame %d rejected: %s", ack.camera_id, ack.seq, ack.error)
        self.ledger.rejected(item, ack.error)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        metrics.EDGE_CONNECTED.set(int(connected))
        if not connected:
            return
        self.connections += 1
        if self.connections > 1:
            metrics.EDGE_RECONNECTS.inc()
        log.info("connected to ingest %s", self.cloud)

    def _call_failed(self, error: grpc.aio.AioRpcError) -> None:
        described = f"{error.code().name}: {error.details()}"
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            self._refused = described
            log.error("the ingest refused this node's token: %s", error.details())
        # A retry after a refusal can surface as INTERNAL from gRPC's core: the refusal stays the
        # reported cause until the ingest acknowledges a frame again.
        self.last_error = self._refused or described

    def _requeue_unanswered(self) -> None:
        if self.outbox.requeue_inflight():
            for camera in self.ledger.cams:  # resent deltas may meet a fresh decoder
                self.request_key_frame(camera)
