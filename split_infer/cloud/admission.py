"""What the ingest does with each frame, gRPC apart: validate it, decode it, queue it, grant credit.

Per frame: known camera, sizes, session and sequence, then the codec decodes the payload, with one
decoder per camera (the gRPC stream of an edge node is ordered, so stateful codecs work). What
goes into Redis is self-contained (records.QueuedFrame): a key frame's payload unchanged, a delta
frame re-encoded with `ingest.queue_codec`; so any worker can take any frame. Each camera's state
(records.CameraStatus) is written at most every STATE_EVERY_S while frames come.

Flow control: every Ack carries credit for its camera, full while that camera's queue is shallow,
shrinking as it fills, 0 (status RETRY) at `max_queue`: the ingest never appends past that bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import grpc
import numpy as np
from redis.exceptions import RedisError, ResponseError

from split_infer import metrics
from split_infer.codec import CodecError, Decoder, Limits, make_decoder, make_encoder
from split_infer.config import CameraConfig, CloudConfig, EdgeToken
from split_infer.keys import Keys, valid_camera_id, valid_session
from split_infer.proto import pb
from split_infer.records import CameraStatus, QueuedFrame
from split_infer.records.snapshot import SnapshotFrame, jpeg_digest
from split_infer.streams import AsyncClient, create_group_async

log = logging.getLogger(__name__)

STATE_EVERY_S = 0.5  # camera state hash writes are throttled to this per camera
FPS_WINDOW_S = 5.0
# Seqs remembered per camera to recognise a resend of a queued frame (its Ack was lost). Older
# resends are queued again and the workers' (camera, session, seq) done keys drop them.
RESEND_MEMORY = 4096
SNAPSHOT_TTL_S = 3600
# Redis answers that mean "not now" rather than "wrong command".
BUSY_ANSWERS = ("OOM", "LOADING", "MASTERDOWN", "READONLY", "BUSY ")

T = TypeVar("T")


class FrameRejected(Exception):
    """A frame that is invalid for good: answer with `code`, never queue it."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, key_frame_needed: bool = False):
        super().__init__(message)
        self.code, self.reason, self.key_frame_needed = code, reason, key_frame_needed


class RetryLater(Exception):
    """A valid frame that cannot be queued now (queue full, Redis down): the edge resends it."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason = code, reason


@dataclass
class IngestCamera:
    """What the ingest keeps per camera: its decoder, session, recent seqs and rates."""

    decoder: Decoder
    session: str | None = None
    last_seq: int | None = None  # highest seq queued in this session
    queued_seqs: set[int] = field(default_factory=set)  # recent seqs queued in this session (resend detection)
    queued_order: deque[int] = field(default_factory=deque)
    staged: QueuedFrame | None = None  # decoded but not yet queued (Redis failed): reuse on resend
    shapes: dict[str, tuple[int, ...]] | None = None  # pinned by the first frame when not configured
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recent: deque[tuple[float, int]] = field(default_factory=deque)  # (ingest time, payload bytes), FPS_WINDOW_S
    frames: int = 0
    bytes: int = 0
    rejected: int = 0
    dropped_edge: int = 0
    last_capture_ts: float = 0.0
    last_seen: float = 0.0
    last_state_write: float = 0.0
    up: bool = False
    group_ready: bool = False

    def new_session(self, session: str, decoder: Decoder) -> None:
        self.session, self.last_seq, self.staged, self.decoder = session, None, None, decoder
        self.queued_seqs, self.queued_order = set(), deque()

    def queued(self, f: pb.FeatureFrame, now: float) -> None:
        self.staged = None
        self.last_seq = f.seq if self.last_seq is None else max(self.last_seq, f.seq)
        self.queued_seqs.add(f.seq)
        self.queued_order.append(f.seq)
        if len(self.queued_order) > RESEND_MEMORY:
            self.queued_seqs.discard(self.queued_order.popleft())
        self.frames += 1
        self.bytes += len(f.payload)
        self.dropped_edge += f.dropped_before
        self.last_capture_ts, self.last_seen = f.capture_ts, now
        self.recent.append((now, len(f.payload)))

    def status(self, now: float, peer: str, online: bool) -> CameraStatus:
        """Rates over the last FPS_WINDOW_S seconds, and the totals."""
        while self.recent and now - self.recent[0][0] > FPS_WINDOW_S:
            self.recent.popleft()
        n = len(self.recent)
        span = max(1e-3, min(FPS_WINDOW_S, now - self.recent[0][0])) if n > 1 else FPS_WINDOW_S
        return CameraStatus(online=online, fps=(n - 1) / span if n > 1 else 0.0,
                            bytes_per_s=sum(b for _, b in self.recent) / span if self.recent else 0.0,
                            last_frame_ts=self.last_capture_ts, last_seen_ts=self.last_seen, last_seq=self.last_seq,
                            session=self.session, frames=self.frames, bytes=self.bytes, rejected=self.rejected,
                            dropped_edge=self.dropped_edge, peer=peer)


def credit_for(depth: int, max_queue: int, window: int) -> int:
    """Full window up to a quarter of max_queue, then linearly less, at least 1 until full, 0 when full."""
    if depth >= max_queue:
        return 0
    low = max_queue // 4
    if depth <= low:
        return window
    return max(1, int(window * (max_queue - depth) / max(1, max_queue - low)))


def _invalid(reason: str, message: str) -> FrameRejected:
    return FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


class Ingest:
    """Validation and queueing, independent of gRPC plumbing (the servicer maps errors to statuses)."""

    def __init__(self, cfg: CloudConfig, redis: AsyncClient, keys: Keys | None = None) -> None:
        self.cfg, self.redis = cfg, redis
        self.keys = keys or Keys.from_env()
        self.s = cfg.ingest
        self.known: dict[str, CameraConfig] = {c.id: c for c in cfg.cameras}
        self.cams: dict[str, IngestCamera] = {}
        self.expected = ({k: tuple(v) for k, v in self.s.feature_shapes.items()}
                         if self.s.feature_shapes else None)
        self.redis_ok = True
        self._outage_since: float | None = None

    # -- validation ---------------------------------------------------------------------------

    def _static_checks(self, f: pb.FeatureFrame, token: EdgeToken | None) -> None:
        cam = f.camera_id
        if not valid_camera_id(cam):
            raise _invalid("bad_camera_id", f"camera_id {cam[:80]!r} must be 1-64 characters of [A-Za-z0-9_.-]")
        if not valid_session(f.session):
            raise _invalid("bad_session",
                           f"{cam}: session {f.session[:80]!r} must be at most 64 characters of [A-Za-z0-9_.-]")
        if len(f.timings_ms) > 32:
            raise _invalid("bad_timings", f"{cam}: {len(f.timings_ms)} timings, at most 32")
        if self.known and cam not in self.known:
            raise FrameRejected(grpc.StatusCode.NOT_FOUND, "unknown_camera",
                                f"unknown camera {cam!r}: not in this ingest's camera list")
        if token is not None and not token.covers(cam):
            raise FrameRejected(grpc.StatusCode.PERMISSION_DENIED, "camera_not_allowed",
                                f"token {token.name!r} may not send camera {cam!r}")
        if not f.payload:
            raise _invalid("empty_payload", f"{cam}: empty payload")
        if len(f.payload) > self.s.max_payload_bytes:
            raise _invalid("oversized", f"{cam}: payload of {len(f.payload)} bytes exceeds max_payload_bytes "
                                        f"{self.s.max_payload_bytes}")
        if not (0 < f.width <= self.s.max_dim and 0 < f.height <= self.s.max_dim):
            raise _invalid("bad_size", f"{cam}: frame size {f.width}x{f.height} outside 1..{self.s.max_dim}")
        if not (np.isfinite(f.capture_ts) and f.capture_ts > 0):
            raise _invalid("bad_timestamp", f"{cam}: capture_ts {f.capture_ts} is not a positive unix time")
        ahead = f.capture_ts - time.time()
        if ahead > self.s.max_clock_skew_s:
            raise _invalid("clock_skew", f"{cam}: capture_ts is {ahead:.0f} s ahead of the ingest's clock "
                                         f"(max_clock_skew_s {self.s.max_clock_skew_s:g}): check the edge's clock")

    def _check_shapes(self, st: IngestCamera, cam: str, tensors: dict[str, np.ndarray]) -> None:
        expected = self.expected or st.shapes
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if any(len(s) < 2 or s[0] != 1 for s in got.values()):
            raise _invalid("wrong_shape", f"{cam}: one frame per message, tensors must be [1, C, ...], got {got}")
        per_frame = {k: s[1:] for k, s in got.items()}
        if expected is None:
            st.shapes = per_frame  # the first valid frame fixes the camera's layout
        elif per_frame != expected:
            raise _invalid("wrong_shape", f"{cam}: feature tensors {per_frame} do not match the expected {expected}")

    def _decode(self, st: IngestCamera, f: pb.FeatureFrame) -> bytes:
        """Decode (validates header, body and codec state); return a self-contained payload."""
        dec = st.decoder
        try:
            tensors = dec.decode(f.payload)
        except CodecError as e:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "codec", f"{f.camera_id}: {e}",
                                key_frame_needed=bool(dec.needs_key_frame)) from None
        cut = dec.last_frame.cut if dec.last_frame is not None else None
        if cut is not None and cut != self.cfg.model.cut:
            raise _invalid("wrong_cut",
                           f"{f.camera_id}: features of cut {cut}, this cloud runs cut {self.cfg.model.cut}")
        self._check_shapes(st, f.camera_id, tensors)
        if dec.last_frame_self_contained:
            return bytes(f.payload)  # already self-contained: queue the edge's bytes unchanged
        return make_encoder(self.s.queue_codec).encode(tensors)

    # -- Redis --------------------------------------------------------------------------------

    def _new_decoder(self, pinned: dict[str, tuple[int, ...]] | None = None) -> Decoder:
        """A decoder bounded by the expected feature shapes (configured, else pinned by the camera's
        first frame): a header declaring other or larger tensors is refused before decompression."""
        models, shapes = self.s.codec_models, self.expected or pinned
        limits = (Limits.for_shapes(shapes, self.s.max_payload_bytes) if shapes
                  else Limits(max_payload_bytes=self.s.max_payload_bytes))
        return make_decoder(limits, learned_dir=str(models) if models else None, expected=shapes)

    def _camera(self, cam: str) -> IngestCamera:
        st = self.cams.get(cam)
        if st is None:
            st = self.cams[cam] = IngestCamera(decoder=self._new_decoder())
        return st

    def _forget_if_never_valid(self, cam: str, st: IngestCamera) -> None:
        """A camera none of whose frames was ever queued leaves no state behind (garbage frames under
        made-up ids would otherwise grow the ingest's memory without bound)."""
        if st.frames == 0 and not st.group_ready and st.staged is None and self.cams.get(cam) is st:
            del self.cams[cam]

    async def _redis(self, command: Awaitable[T]) -> T:
        try:
            out = await command
        except ResponseError as e:
            if not str(e).startswith(BUSY_ANSWERS):
                raise  # a command error (e.g. BUSYGROUP) is the caller's to handle
            raise RetryLater(grpc.StatusCode.UNAVAILABLE, "redis_busy",
                             f"queue store cannot take writes now ({e}); resend later") from None
        except RedisError as e:
            self.redis_down(e)
            raise RetryLater(grpc.StatusCode.UNAVAILABLE, "redis_down",
                             f"queue store unavailable ({type(e).__name__}: {e}); resend later") from None
        self.redis_up()
        return out

    def redis_down(self, e: Exception) -> None:
        if self.redis_ok:
            log.error("Redis unreachable (%s: %s): answering RETRY until it is back", type(e).__name__, e)
            self._outage_since = time.monotonic()
        self.redis_ok = False
        for st in self.cams.values():
            st.group_ready = False  # a restarted Redis may have lost the stream and its group
        metrics.REDIS_UP.labels("ingest").set(0)

    def redis_up(self) -> None:
        if not self.redis_ok:
            log.warning("Redis reachable again after %.1f s", time.monotonic() - (self._outage_since or 0))
        self.redis_ok = True
        metrics.REDIS_UP.labels("ingest").set(1)

    async def _ensure_group(self, st: IngestCamera, cam: str) -> None:
        if st.group_ready:
            return
        await create_group_async(self.redis, self.keys.frames_stream(cam), self.keys.FRAMES_GROUP, run=self._redis)
        await self._redis(self.redis.sadd(self.keys.cameras, cam))
        st.group_ready = True

    # -- one frame ----------------------------------------------------------------------------

    async def handle(self, f: pb.FeatureFrame, peer: str = "", token: EdgeToken | None = None) -> pb.Ack:
        """Validate and queue one frame; raises FrameRejected or RetryLater, else returns the Ack.
        `token`: the caller's token entry, whose cameras it may send (None: no auth configured)."""
        try:
            self._static_checks(f, token)
        except FrameRejected as e:
            metrics.FRAMES.labels("ingest", f"rejected_{e.reason}").inc()
            raise
        st = self._camera(f.camera_id)
        while True:  # one frame of a camera at a time keeps its decoder state in order
            async with st.lock:
                if self.cams.get(f.camera_id) is not st:  # forgotten while we waited: start afresh
                    st = self._camera(f.camera_id)
                    continue
                return await self._handle_counted(st, f, peer)

    async def _handle_counted(self, st: IngestCamera, f: pb.FeatureFrame, peer: str) -> pb.Ack:
        try:
            return await self._handle_locked(st, f, peer)
        except FrameRejected as e:
            st.rejected += 1
            metrics.FRAMES.labels("ingest", f"rejected_{e.reason}").inc()
            self._forget_if_never_valid(f.camera_id, st)
            raise
        except RetryLater as e:
            metrics.FRAMES.labels("ingest", f"retry_{e.reason}").inc()
            raise

    async def _handle_locked(self, st: IngestCamera, f: pb.FeatureFrame, peer: str) -> pb.Ack:
        cam, now = f.camera_id, time.time()
        if f.session != st.session:
            if st.session is not None:
                log.info("camera %s: new edge session %r (was %r), codec state reset", cam, f.session, st.session)
            st.new_session(f.session, self._new_decoder(st.shapes))
        if f.seq in st.queued_seqs:
            # A resend of something already queued (its ack was lost): acknowledge, queue nothing.
            metrics.FRAMES.labels("ingest", "duplicate").inc()
            return pb.Ack(camera_id=cam, seq=f.seq, status=pb.Ack.OK, credit=self.s.credit_window,
                          error="duplicate: already queued")

        if not st.group_ready:  # decoded and valid before its stream, group and set entry exist
            await self._stage(st, f)
        await self._ensure_group(st, cam)
        # The depth decides credit here; its gauge is the worker's (one owner per series, docs/metrics.md).
        depth = await self._redis(self.redis.xlen(self.keys.frames_stream(cam)))
        if depth >= self.cfg.max_queue:
            metrics.CREDIT.labels(cam).set(0)
            raise RetryLater(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full",
                             f"{cam}: queue holds {depth} frames (max_queue {self.cfg.max_queue}); resend later")

        staged = await self._stage(st, f)
        note = self._snapshot_note(f)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(self.keys.frames_stream(cam), replace(staged, ingest_ts=time.time()).to_fields())
        if f.snapshot_jpeg and not note:
            # The thumbnail and the frame it shows (session, seq): the dashboard draws that frame's boxes.
            codec = st.decoder.last_frame.codec if st.decoder.last_frame is not None else ""
            shown = SnapshotFrame(cam, f.session, f.seq, f.capture_ts, jpeg_digest(f.snapshot_jpeg), codec)
            pipe.set(self.keys.snapshot(cam), f.snapshot_jpeg, ex=SNAPSHOT_TTL_S)
            pipe.hset(self.keys.snapshot_frame(cam), mapping=shown.to_fields())
            pipe.expire(self.keys.snapshot_frame(cam), SNAPSHOT_TTL_S)
        await self._redis(pipe.execute())
        st.queued(f, now)
        metrics.FRAMES.labels("ingest", "ok").inc()
        metrics.BYTES_RECEIVED.labels(cam).inc(len(f.payload))
        credit = credit_for(depth + 1, self.cfg.max_queue, self.s.credit_window)
        metrics.CREDIT.labels(cam).set(credit)
        if not st.up or now - st.last_state_write >= STATE_EVERY_S:
            await self._write_state(cam, st, now, peer, online=True)
        return pb.Ack(camera_id=cam, seq=f.seq, status=pb.Ack.OK, credit=credit, error=note)

    async def _stage(self, st: IngestCamera, f: pb.FeatureFrame) -> QueuedFrame:
        """Decode the frame into `st.staged`, unless it is there already (decoded before Redis failed
        or the queue was full: the decoder moved on)."""
        if st.staged is None or st.staged.seq != f.seq:
            payload = await asyncio.to_thread(self._decode, st, f)
            st.staged = QueuedFrame(camera=f.camera_id, session=f.session, seq=f.seq, capture_ts=f.capture_ts,
                                    sent_ts=f.sent_ts, width=f.width, height=f.height, payload=payload,
                                    timings=dict(f.timings_ms), dropped_before=f.dropped_before)
        return st.staged

    def _snapshot_note(self, f: pb.FeatureFrame) -> str:
        """A bad thumbnail is dropped with a note; the frame's features are still queued."""
        if not f.snapshot_jpeg:
            return ""
        if len(f.snapshot_jpeg) > self.s.max_snapshot_bytes:
            metrics.FRAMES.labels("ingest", "snapshot_dropped").inc()
            return f"snapshot ignored: {len(f.snapshot_jpeg)} bytes > max_snapshot_bytes {self.s.max_snapshot_bytes}"
        if not f.snapshot_jpeg.startswith(b"\xff\xd8"):
            metrics.FRAMES.labels("ingest", "snapshot_dropped").inc()
            return "snapshot ignored: not a JPEG"
        return ""

    async def _write_state(self, cam: str, st: IngestCamera, now: float, peer: str, online: bool) -> None:
        status = st.status(now, peer, online)
        await self._redis(self.redis.hset(self.keys.camera_state(cam), mapping=status.to_fields()))
        st.last_state_write, st.up = now, online
        metrics.CAMERA_UP.labels(cam).set(int(online))

    async def mark_offline(self, cams: list[str] | None = None) -> None:
        """Cameras that stopped sending (or whose edge stream ended) are marked offline."""
        now = time.time()
        for cam, st in list(self.cams.items()):
            stale = now - st.last_seen > self.s.camera_timeout_s
            if st.up and (stale or (cams is not None and cam in cams)):
                try:
                    await self._write_state(cam, st, now, "", online=False)
                    log.info("camera %s offline", cam)
                except RetryLater:
                    pass  # Redis down: retried on the next sweep

