"""Cloud ingest: a grpc.aio server that validates feature frames and queues them in Redis Streams.

Per frame: token (per call, from `authorization: Bearer <token>`), known camera, sizes, session and
sequence, then the codec decodes the payload here, with one decoder per camera (the gRPC stream of
an edge node is ordered, so stateful codecs work). What goes into Redis is self-contained: a key
frame's payload unchanged, a delta frame re-encoded with `ingest.queue_codec`; so any worker can
take any frame (docs/architecture.md). A bad frame is answered and forgotten; it never ends the
stream of the node, so other cameras lose nothing.

Flow control: every Ack carries credit for its camera, full while that camera's queue is shallow,
shrinking as it fills, 0 (status RETRY) at `max_queue`: the ingest never appends past that bound.
Redis down: frames are answered RETRY (stream) or UNAVAILABLE (Send), the health service reports
NOT_SERVING, and the client (its redis-py pool) reconnects by itself when Redis is back.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import grpc
import numpy as np
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError, ResponseError

from split_infer import keys, metrics
from split_infer.codec import CodecError, make_decoder, make_encoder
from split_infer.config import CameraConfig, CloudConfig, load_yaml
from split_infer.proto import pb, pb_grpc

log = logging.getLogger("split_infer.ingest")

SERVICE_NAME = "splitinfer.v1.FeatureIngest"
STATE_EVERY_S = 0.5  # camera state hash writes are throttled to this per camera
FPS_WINDOW_S = 5.0
# Seqs remembered per camera to recognise a resend of a queued frame (its Ack was lost). Older
# resends are queued again and the workers' (camera, session, seq) done keys drop them.
RESEND_MEMORY = 4096


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
class CameraState:
    decoder: object
    session: str | None = None
    last_seq: int | None = None  # highest seq queued in this session
    queued_seqs: set = field(default_factory=set)  # recent seqs queued in this session (resend detection)
    queued_order: deque = field(default_factory=deque)
    staged: tuple[int, dict] | None = None  # decoded but not yet queued (Redis failed): reuse on resend
    shapes: dict[str, tuple[int, ...]] | None = None  # pinned by the first frame when not configured
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    recent: deque = field(default_factory=deque)  # (ingest time, payload bytes) within FPS_WINDOW_S
    frames: int = 0
    bytes: int = 0
    rejected: int = 0
    dropped_edge: int = 0
    last_capture_ts: float = 0.0
    last_seen: float = 0.0
    last_state_write: float = 0.0
    up: bool = False
    group_ready: bool = False


def credit_for(depth: int, max_queue: int, window: int) -> int:
    """Full window up to a quarter of max_queue, then linearly less, at least 1 until full, 0 when full."""
    if depth >= max_queue:
        return 0
    low = max_queue // 4
    if depth <= low:
        return window
    return max(1, int(window * (max_queue - depth) / max(1, max_queue - low)))


def bearer_token(metadata) -> str | None:
    for k, v in metadata or ():
        if k.lower() == "authorization" and isinstance(v, str) and v.startswith("Bearer "):
            return v[len("Bearer "):].strip()
    return None


class Ingest:
    """Validation and queueing, independent of gRPC plumbing (the servicer below maps errors to statuses)."""

    def __init__(self, cfg: CloudConfig, redis: aioredis.Redis) -> None:
        self.cfg, self.redis = cfg, redis
        self.s = cfg.ingest
        self.known: dict[str, CameraConfig] = {c.id: c for c in cfg.cameras}
        self.cams: dict[str, CameraState] = {}
        self.expected = ({k: tuple(v) for k, v in self.s.feature_shapes.items()}
                         if self.s.feature_shapes else None)
        self.redis_ok = True
        self._outage_since: float | None = None

    # -- validation ---------------------------------------------------------------------------

    def _static_checks(self, f: pb.FeatureFrame) -> None:
        cam = f.camera_id
        if not cam or len(cam) > 64 or not all(c.isalnum() or c in "_.-" for c in cam):
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "bad_camera_id",
                                f"camera_id {cam[:80]!r} must be 1-64 characters of [A-Za-z0-9_.-]")
        if len(f.session) > 64 or not all(c.isalnum() or c in "_.-" for c in f.session):
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "bad_session",
                                f"{cam}: session {f.session[:80]!r} must be at most 64 characters of [A-Za-z0-9_.-]")
        if len(f.timings_ms) > 32:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "bad_timings",
                                f"{cam}: {len(f.timings_ms)} timings, at most 32")
        if self.known and cam not in self.known:
            raise FrameRejected(grpc.StatusCode.NOT_FOUND, "unknown_camera",
                                f"unknown camera {cam!r}: not in this ingest's camera list")
        if not f.payload:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "empty_payload", f"{cam}: empty payload")
        if len(f.payload) > self.s.max_payload_bytes:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "oversized",
                                f"{cam}: payload of {len(f.payload)} bytes exceeds max_payload_bytes "
                                f"{self.s.max_payload_bytes}")
        if not (0 < f.width <= self.s.max_dim and 0 < f.height <= self.s.max_dim):
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "bad_size",
                                f"{cam}: frame size {f.width}x{f.height} outside 1..{self.s.max_dim}")
        if not (np.isfinite(f.capture_ts) and f.capture_ts > 0):
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "bad_timestamp",
                                f"{cam}: capture_ts {f.capture_ts} is not a positive unix time")

    def _check_shapes(self, st: CameraState, cam: str, tensors: dict[str, np.ndarray]) -> None:
        expected = self.expected or st.shapes
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if any(len(s) < 2 or s[0] != 1 for s in got.values()):
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong_shape",
                                f"{cam}: one frame per message, tensors must be [1, C, ...], got {got}")
        per_frame = {k: s[1:] for k, s in got.items()}
        if expected is None:
            st.shapes = per_frame  # the first valid frame fixes the camera's layout
        elif per_frame != expected:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong_shape",
                                f"{cam}: feature tensors {per_frame} do not match the expected {expected}")

    def _decode(self, st: CameraState, f: pb.FeatureFrame) -> bytes:
        """Decode (validates header, body and codec state); return a self-contained payload."""
        dec = st.decoder
        try:
            tensors = dec.decode(f.payload)
        except CodecError as e:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "codec", f"{f.camera_id}: {e}",
                                key_frame_needed=bool(dec.needs_key_frame)) from None
        cut = dec.last_frame.cut if dec.last_frame is not None else None
        if cut is not None and cut != self.cfg.model.cut:
            raise FrameRejected(grpc.StatusCode.INVALID_ARGUMENT, "wrong_cut",
                                f"{f.camera_id}: features of cut {cut}, this cloud runs cut {self.cfg.model.cut}")
        self._check_shapes(st, f.camera_id, tensors)
        if dec.last_frame_self_contained:
            return bytes(f.payload)  # already self-contained: queue the edge's bytes unchanged
        return make_encoder(self.s.queue_codec).encode(tensors)

    # -- queueing -----------------------------------------------------------------------------

    def _new_decoder(self):
        models = self.s.codec_models
        return make_decoder(learned_dir=str(models) if models else None)

    def _state(self, cam: str) -> CameraState:
        st = self.cams.get(cam)
        if st is None:
            st = self.cams[cam] = CameraState(decoder=self._new_decoder())
        return st

    async def _redis(self, coro):
        try:
            out = await coro
        except ResponseError as e:
            if not str(e).startswith(("OOM", "LOADING", "MASTERDOWN", "READONLY", "BUSY ")):
                raise  # a command error (e.g. BUSYGROUP) is the caller's to handle
            raise RetryLater(grpc.StatusCode.UNAVAILABLE, "redis_busy",
                             f"queue store cannot take writes now ({e}); resend later") from None
        except RedisError as e:
            self._redis_down(e)
            raise RetryLater(grpc.StatusCode.UNAVAILABLE, "redis_down",
                             f"queue store unavailable ({type(e).__name__}: {e}); resend later") from None
        self._redis_up()
        return out

    def _redis_down(self, e: Exception) -> None:
        if self.redis_ok:
            log.error("Redis unreachable (%s: %s): answering RETRY until it is back", type(e).__name__, e)
            self._outage_since = time.monotonic()
        self.redis_ok = False
        for st in self.cams.values():
            st.group_ready = False  # a restarted Redis may have lost the stream and its group
        metrics.REDIS_UP.labels("ingest").set(0)

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.warning("Redis reachable again after %.1f s", time.monotonic() - (self._outage_since or 0))
        self.redis_ok = True
        metrics.REDIS_UP.labels("ingest").set(1)

    async def _ensure_group(self, st: CameraState, cam: str) -> None:
        if st.group_ready:
            return
        try:  # created by whoever sees the camera first, from id 0 so nothing queued is skipped
            await self._redis(self.redis.xgroup_create(keys.frames_stream(cam), keys.FRAMES_GROUP, id="0",
                                                       mkstream=True))
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await self._redis(self.redis.sadd(keys.CAMERAS_SET, cam))
        st.group_ready = True

    async def handle(self, f: pb.FeatureFrame, peer: str = "") -> pb.Ack:
        """Validate and queue one frame; raises FrameRejected or RetryLater, else returns the Ack."""
        try:
            self._static_checks(f)
        except FrameRejected as e:
            metrics.FRAMES.labels("ingest", f"rejected_{e.reason}").inc()
            raise
        cam = f.camera_id
        st = self._state(cam)
        async with st.lock:  # one frame of a camera at a time keeps its decoder state in order
            try:
                return await self._handle_locked(st, f, peer)
            except FrameRejected as e:
                st.rejected += 1
                metrics.FRAMES.labels("ingest", f"rejected_{e.reason}").inc()
                raise
            except RetryLater as e:
                metrics.FRAMES.labels("ingest", f"retry_{e.reason}").inc()
                raise

    async def _handle_locked(self, st: CameraState, f: pb.FeatureFrame, peer: str) -> pb.Ack:
        cam, now = f.camera_id, time.time()
        if f.session != st.session:
            if st.session is not None:
                log.info("camera %s: new edge session %r (was %r), codec state reset", cam, f.session, st.session)
            st.session, st.last_seq, st.staged, st.decoder = f.session, None, None, self._new_decoder()
            st.queued_seqs, st.queued_order = set(), deque()
        if f.seq in st.queued_seqs:
            # A resend of something already queued (its ack was lost): acknowledge, queue nothing.
            metrics.FRAMES.labels("ingest", "duplicate").inc()
            return pb.Ack(camera_id=cam, seq=f.seq, status=pb.Ack.OK, credit=self.s.credit_window,
                          error="duplicate: already queued")

        await self._ensure_group(st, cam)
        depth = await self._redis(self.redis.xlen(keys.frames_stream(cam)))
        metrics.QUEUE_DEPTH.labels(cam).set(depth)
        if depth >= self.cfg.max_queue:
            metrics.CREDIT.labels(cam).set(0)
            raise RetryLater(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full",
                             f"{cam}: queue holds {depth} frames (max_queue {self.cfg.max_queue}); resend later")

        if st.staged is not None and st.staged[0] == f.seq:
            fields = st.staged[1]  # decoded before Redis failed; the decoder has moved past it
        else:
            payload = await asyncio.to_thread(self._decode, st, f)
            fields = {
                "camera": cam, "session": f.session, "seq": f.seq, "capture_ts": repr(f.capture_ts),
                "sent_ts": repr(f.sent_ts), "width": f.width, "height": f.height, "payload": payload,
                "timings": json.dumps(dict(f.timings_ms)), "dropped_before": f.dropped_before,
            }
            st.staged = (f.seq, fields)

        fields["ingest_ts"] = repr(time.time())
        note = self._snapshot_note(f)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(keys.frames_stream(cam), fields)
        if f.snapshot_jpeg and not note:
            pipe.set(keys.snapshot_key(cam), f.snapshot_jpeg, ex=3600)
        await self._redis(pipe.execute())
        st.staged = None
        st.last_seq = f.seq if st.last_seq is None else max(st.last_seq, f.seq)
        st.queued_seqs.add(f.seq)
        st.queued_order.append(f.seq)
        if len(st.queued_order) > RESEND_MEMORY:
            st.queued_seqs.discard(st.queued_order.popleft())

        st.frames += 1
        st.bytes += len(f.payload)
        st.dropped_edge += f.dropped_before
        st.last_capture_ts, st.last_seen = f.capture_ts, now
        st.recent.append((now, len(f.payload)))
        metrics.FRAMES.labels("ingest", "ok").inc()
        metrics.BYTES_RECEIVED.labels(cam).inc(len(f.payload))
        credit = credit_for(depth + 1, self.cfg.max_queue, self.s.credit_window)
        metrics.CREDIT.labels(cam).set(credit)
        if not st.up or now - st.last_state_write >= STATE_EVERY_S:
            await self._write_state(cam, st, now, peer, online=True)
        return pb.Ack(camera_id=cam, seq=f.seq, status=pb.Ack.OK, credit=credit, error=note)

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

    async def _write_state(self, cam: str, st: CameraState, now: float, peer: str, online: bool) -> None:
        while st.recent and now - st.recent[0][0] > FPS_WINDOW_S:
            st.recent.popleft()
        span = max(1e-3, min(FPS_WINDOW_S, now - st.recent[0][0])) if len(st.recent) > 1 else FPS_WINDOW_S
        fps = (len(st.recent) - 1) / span if len(st.recent) > 1 else 0.0
        bps = sum(b for _, b in st.recent) / span if st.recent else 0.0
        state = {"online": int(online), "fps": round(fps, 3), "bytes_per_s": round(bps, 1),
                 "last_frame_ts": repr(st.last_capture_ts), "last_seen_ts": repr(st.last_seen),
                 "last_seq": -1 if st.last_seq is None else st.last_seq, "session": st.session or "",
                 "frames": st.frames, "bytes": st.bytes, "rejected": st.rejected,
                 "dropped_edge": st.dropped_edge, "peer": peer}
        await self._redis(self.redis.hset(keys.camera_state(cam), mapping=state))
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


class IngestServicer(pb_grpc.FeatureIngestServicer):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        tokens = self.ingest.cfg.tokens
        if not tokens:
            return
        got = bearer_token(context.invocation_metadata())
        if got is None or not any(hmac.compare_digest(got, t) for t in tokens):
            metrics.FRAMES.labels("ingest", "unauthenticated").inc()
            log.warning("unauthenticated call from %s", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown token (metadata 'authorization: Bearer <token>')")

    async def Send(self, request: pb.FeatureFrame, context: grpc.aio.ServicerContext) -> pb.Ack:
        await self._authorize(context)
        try:
            return await self.ingest.handle(request, context.peer())
        except (FrameRejected, RetryLater) as e:
            await context.abort(e.code, str(e))
        except Exception as e:  # a bug must cost one frame, not the server
            log.exception("frame %s/%s failed", request.camera_id, request.seq)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    async def Stream(self, request_iterator, context: grpc.aio.ServicerContext):
        await self._authorize(context)
        peer, seen = context.peer(), set()
        log.info("edge stream opened from %s", peer)
        try:
            async for f in request_iterator:
                seen.add(f.camera_id)
                try:
                    yield await self.ingest.handle(f, peer)
                except FrameRejected as e:
                    log.warning("rejected %s/%s from %s: %s", f.camera_id, f.seq, peer, e)
                    yield pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.REJECTED,
                                 error=f"{e.code.name}: {e}", key_frame_needed=e.key_frame_needed,
                                 credit=self.ingest.s.credit_window)
                except RetryLater as e:
                    yield pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.RETRY,
                                 error=f"{e.code.name}: {e}", credit=0)
                except Exception as e:
                    log.exception("frame %s/%s failed", f.camera_id, f.seq)
                    yield pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.RETRY,
                                 error=f"INTERNAL: {type(e).__name__}: {e}", credit=1)
        finally:
            log.info("edge stream from %s closed", peer)
            known = [c for c in seen if c in self.ingest.cams]
            await self.ingest.mark_offline(known)


def grpc_options(cfg: CloudConfig) -> list[tuple[str, int]]:
    # Room for the largest valid frame plus its snapshot and framing, so that our own size check
    # (a per-frame answer) fires before gRPC's (which would end the whole stream).
    limit = 2 * cfg.ingest.max_payload_bytes + cfg.ingest.max_snapshot_bytes + (1 << 20)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 1)]


async def _watch(ingest: Ingest, health_srv, stop: asyncio.Event) -> None:
    """Health follows Redis; cameras that went quiet are marked offline."""
    status = None
    while not stop.is_set():
        try:
            await ingest.redis.ping()
            ingest._redis_up()
        except RedisError as e:
            ingest._redis_down(e)
        new = health_pb2.HealthCheckResponse.SERVING if ingest.redis_ok else health_pb2.HealthCheckResponse.NOT_SERVING
        if new != status:
            status = new
            await health_srv.set("", new)
            await health_srv.set(SERVICE_NAME, new)
        if ingest.redis_ok:
            await ingest.mark_offline()
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


async def serve(cfg: CloudConfig, stop: asyncio.Event, ready: asyncio.Event | None = None,
                bound: list | None = None) -> None:
    """Run the ingest until `stop` is set. `bound` (if given) receives the port actually bound."""
    r = redis_client(cfg.redis_url)
    ingest = Ingest(cfg, r)
    server = grpc.aio.server(options=grpc_options(cfg))
    pb_grpc.add_FeatureIngestServicer_to_server(IngestServicer(ingest), server)
    health_srv = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_srv, server)
    port = server.add_insecure_port(cfg.listen)
    if port == 0:
        raise SystemExit(f"ingest: cannot listen on {cfg.listen}")
    if bound is not None:
        bound.append(port)
    await server.start()
    log.info("ingest listening on %s (port %d), redis %s, %s cameras configured, auth %s", cfg.listen, port,
             cfg.redis_url, len(cfg.cameras) or "any", "on" if cfg.tokens else "off")
    watcher = asyncio.create_task(_watch(ingest, health_srv, stop))
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.stop(grace=2.0)
        watcher.cancel()
        await ingest.mark_offline(list(ingest.cams))
        await r.aclose()
        log.info("ingest stopped")


def with_feature_shapes(cfg: CloudConfig) -> CloudConfig:
    """Fill `ingest.feature_shapes` from the model (a dry run of its edge part) when not configured."""
    if cfg.ingest.feature_shapes:
        return cfg
    from split_infer.cloud.head import feature_shapes  # torch, once at start-up

    shapes = feature_shapes(cfg.model.name, cfg.model.cut, tuple(cfg.model.imgsz))
    log.info("expecting features %s (model %s, cut %d, imgsz %s)", shapes, cfg.model.name, cfg.model.cut,
             cfg.model.imgsz)
    ingest = cfg.ingest.model_copy(update={"feature_shapes": {k: list(v) for k, v in shapes.items()}})
    return cfg.model_copy(update={"ingest": ingest})


def load_cloud_config(path: str | None, overrides: dict) -> CloudConfig:
    cfg = load_yaml(path, CloudConfig) if path else CloudConfig()
    data = cfg.model_dump()
    data.update({k: v for k, v in overrides.items() if v is not None})
    return CloudConfig.model_validate(data)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="split-infer cloud ingest", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="cloud YAML (CloudConfig); defaults apply without one")
    ap.add_argument("--listen", help="host:port for gRPC (default from config, 127.0.0.1:50051)")
    ap.add_argument("--redis-url", help="redis://host:port/db (default from config)")
    ap.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    ap.add_argument("--metrics-addr", default="127.0.0.1")
    ap.add_argument("--no-shape-check-from-model", action="store_true",
                    help="do not derive the expected feature shapes from the model (then the first frame of "
                         "each camera fixes them, unless ingest.feature_shapes is configured)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_cloud_config(args.config, {"listen": args.listen, "redis_url": args.redis_url})
    if not args.no_shape_check_from_model:
        cfg = with_feature_shapes(cfg)
    metrics.start_metrics_server(args.metrics_port, args.metrics_addr)

    async def run() -> None:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(cfg, stop)

    asyncio.run(run())
    return 0
