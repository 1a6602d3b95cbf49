"""Cloud ingest: a grpc.aio server that validates feature frames and queues them in Redis Streams.

Each call is checked against the caller's token (from `authorization: Bearer <token>`, matched by
its SHA-256), each frame against the cameras that token may send, then validated, decoded and
queued by split_infer/cloud/admission.py; what goes into Redis is
self-contained, so any worker can take any frame (docs/architecture.md). A bad frame is answered
and forgotten; it never ends the stream of the node, so other cameras lose nothing.

Redis down: frames are answered RETRY (stream) or UNAVAILABLE (Send), the health service reports
NOT_SERVING, and the client (its redis-py pool) reconnects by itself when Redis is back.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from redis.exceptions import RedisError

from split_infer import metrics
from split_infer.cloud.admission import FrameRejected, Ingest, RetryLater
from split_infer.config import CloudConfig, EdgeToken, load_config
from split_infer.keys import Keys
from split_infer.model.shapes import expected_shapes
from split_infer.observability import Probe
from split_infer.proto import pb, pb_grpc
from split_infer.redact import redact_url
from split_infer.redisconn import connect_async
from split_infer.service import StopEvent, service_main
from split_infer.streams import AsyncClient
from split_infer.tls import peer_identity, server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = "splitinfer.v1.FeatureIngest"


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    for k, v in metadata or ():
        if k.lower() == "authorization" and isinstance(v, str) and v.startswith("Bearer "):
            return v[len("Bearer "):].strip()
    return None


def match_token(tokens: Sequence[EdgeToken], presented: str | None) -> EdgeToken | None:
    """The entry whose digest is the presented token's; each digest compared in constant time."""
    if presented is None:
        return None
    digest = hashlib.sha256(presented.encode("utf-8", "replace")).hexdigest()
    found = None
    for t in tokens:  # all of them, whichever matches
        if hmac.compare_digest(digest, t.sha256):
            found = t
    return found


def peer_host(peer: str) -> str:
    """The host of a gRPC peer ("ipv4:10.0.0.5:51234" -> "ipv4:10.0.0.5"): its streams share one limit."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class StreamSlots:
    """Open streams per peer host and per token, each bounded (an edge node holds one)."""

    def __init__(self, per_peer: int, per_token: int) -> None:
        self.per_peer, self.per_token = per_peer, per_token
        self.peers: Counter[str] = Counter()
        self.tokens: Counter[str] = Counter()

    def take(self, peer: str, token: str | None) -> str | None:
        """Take a slot; or, when either bound is reached, take none and say why."""
        if self.peers[peer] >= self.per_peer:
            return f"{self.peers[peer]} streams open from this peer (max_streams_per_peer {self.per_peer})"
        if token is not None and self.tokens[token] >= self.per_token:
            return (f"{self.tokens[token]} streams open with token {token!r} "
                    f"(max_streams_per_token {self.per_token})")
        self.peers[peer] += 1
        if token is not None:
            self.tokens[token] += 1
        return None

    def give(self, peer: str, token: str | None) -> None:
        self.peers[peer] -= 1
        if self.peers[peer] <= 0:
            del self.peers[peer]
        if token is not None:
            self.tokens[token] -= 1
            if self.tokens[token] <= 0:
                del self.tokens[token]


class IngestServicer(pb_grpc.FeatureIngestServicer):
    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.slots = StreamSlots(ingest.s.max_streams_per_peer, ingest.s.max_streams_per_token)

    async def _authorize(self, context: grpc.aio.ServicerContext) -> EdgeToken | None:
        """The caller's token entry (its cameras); None when no tokens are configured (no auth)."""
        tokens = self.ingest.cfg.tokens
        if not tokens:
            return None
        token = match_token(tokens, bearer_token(context.invocation_metadata()))
        if token is None:
            metrics.FRAMES.labels("ingest", "unauthenticated").inc()
            log.warning("unauthenticated call from %s", context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "missing or unknown token (metadata 'authorization: Bearer <token>')")
        return token

    async def Send(self, request: pb.FeatureFrame, context: grpc.aio.ServicerContext) -> pb.Ack:
        token = await self._authorize(context)
        try:
            return await self.ingest.handle(request, context.peer(), token)
        except (FrameRejected, RetryLater) as e:
            code, message = e.code, str(e)
        except Exception as e:  # a bug must cost one frame, not the server
            log.exception("frame %s/%s failed", request.camera_id, request.seq)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}"
        await context.abort(code, message)
        raise AssertionError("context.abort raises")

    async def Stream(self, request_iterator: AsyncIterator[pb.FeatureFrame],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Ack]:
        token = await self._authorize(context)
        peer, seen = context.peer(), set()
        refused = self.slots.take(peer_host(peer), token.name if token else None)
        if refused:
            metrics.FRAMES.labels("ingest", "stream_refused").inc()
            log.warning("stream from %s refused: %s", peer, refused)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        identity = peer_identity(context)  # the client certificate's name, under mutual TLS
        log.info("edge stream opened from %s%s%s", peer, f" (token {token.name})" if token else "",
                 f" (client certificate {identity!r})" if identity else "")
        try:
            async for f in self._frames(request_iterator, context):
                ack = await self._answer(f, peer, token)
                if ack.status == pb.Ack.OK:  # only cameras it really sent go offline when it ends
                    seen.add(f.camera_id)
                yield ack
        finally:
            self.slots.give(peer_host(peer), token.name if token else None)
            log.info("edge stream from %s closed", peer)
            known = [c for c in seen if c in self.ingest.cams]
            await self.ingest.mark_offline(known)

    async def _frames(self, request_iterator: AsyncIterator[pb.FeatureFrame],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.FeatureFrame]:
        """The stream's frames; the stream is closed (DEADLINE_EXCEEDED) when its first frame does not
        come within `first_frame_timeout_s`, or no frame comes for `idle_timeout_s`."""
        s, it = self.ingest.s, request_iterator.__aiter__()
        timeout, what = s.first_frame_timeout_s, "first frame"
        while True:
            try:
                f = await asyncio.wait_for(it.__anext__(), timeout)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                metrics.FRAMES.labels("ingest", "stream_timeout").inc()
                log.warning("closing stream from %s: no %s within %g s", context.peer(), what, timeout)
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no {what} within {timeout:g} s: stream closed")
                return
            yield f
            timeout, what = s.idle_timeout_s, "frame"

    async def _answer(self, f: pb.FeatureFrame, peer: str, token: EdgeToken | None) -> pb.Ack:
        """A stream's answer to one frame: never an error that would end the stream."""
        try:
            return await self.ingest.handle(f, peer, token)
        except FrameRejected as e:
            log.warning("rejected %s/%s from %s: %s", f.camera_id, f.seq, peer, e)
            return pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.REJECTED, error=f"{e.code.name}: {e}",
                          key_frame_needed=e.key_frame_needed, credit=self.ingest.s.credit_window)
        except RetryLater as e:
            return pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.RETRY, error=f"{e.code.name}: {e}",
                          credit=0)
        except Exception as e:
            log.exception("frame %s/%s failed", f.camera_id, f.seq)
            return pb.Ack(camera_id=f.camera_id, seq=f.seq, status=pb.Ack.RETRY,
                          error=f"INTERNAL: {type(e).__name__}: {e}", credit=1)


def grpc_options(cfg: CloudConfig) -> list[tuple[str, int]]:
    # Room for the largest valid frame plus its snapshot and framing, so that our own size check
    # (a per-frame answer) fires before gRPC's (which would end the whole stream).
    s = cfg.ingest
    limit = 2 * s.max_payload_bytes + s.max_snapshot_bytes + (1 << 20)
    return [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            ("grpc.keepalive_time_ms", 20000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.max_pings_without_data", 0), ("grpc.keepalive_permit_without_calls", 1),
            # Against abuse: HTTP/2 streams per connection; a connection's TLS/HTTP2 handshake must
            # finish in time; clients may ping at most every 10 s (the edge pings every 20 s), two
            # strikes and the connection is closed; a connection with no call for 5 min is closed.
            ("grpc.max_concurrent_streams", s.max_streams_per_connection),
            ("grpc.server_handshake_timeout_ms", int(s.first_frame_timeout_s * 1000)),
            ("grpc.http2.min_ping_interval_without_data_ms", 10000), ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", 300000)]


async def _watch(ingest: Ingest, health_srv: health.aio.HealthServicer, stop: asyncio.Event,
                 probe: Probe) -> None:
    """Health (gRPC and /readyz) follows Redis; cameras that went quiet are marked offline."""
    status = None
    while not stop.is_set():
        try:
            await ingest.redis.ping()
            ingest.redis_up()
        except RedisError as e:
            ingest.redis_down(e)
        probe.beat()  # the event loop turns: /healthz
        probe.set_ready(ingest.redis_ok, "Redis unreachable: frames are answered RETRY")
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


def redis_client(url: str) -> AsyncClient:
    """One server or a cluster, as the URL says (split_infer/redisconn.py)."""
    return connect_async(url, socket_connect_timeout=2, socket_timeout=5)


async def serve(cfg: CloudConfig, stop: asyncio.Event, ready: asyncio.Event | None = None,
                bound: list[int] | None = None, keys: Keys | None = None, probe: Probe | None = None) -> None:
    """Run the ingest until `stop` is set. `bound` (if given) receives the port actually bound;
    `probe` (if given) is what /healthz and /readyz report."""
    r = redis_client(cfg.redis_url)
    ingest = Ingest(cfg, r, keys)
    server = grpc.aio.server(options=grpc_options(cfg), maximum_concurrent_rpcs=cfg.ingest.max_concurrent_rpcs)
    pb_grpc.add_FeatureIngestServicer_to_server(IngestServicer(ingest), server)
    health_srv = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_srv, server)
    creds = server_credentials(cfg.tls)  # a ConfigError before anything listens, when TLS is not set up
    port = server.add_insecure_port(cfg.listen) if creds is None else server.add_secure_port(cfg.listen, creds)
    if port == 0:
        raise SystemExit(f"ingest: cannot listen on {cfg.listen}")
    if bound is not None:
        bound.append(port)
    await server.start()
    log.info("ingest listening on %s (port %d, %s), redis %s, %s cameras configured, auth %s", cfg.listen, port,
             _transport(cfg), redact_url(cfg.redis_url), len(cfg.cameras) or "any", "on" if cfg.tokens else "off")
    watcher = asyncio.create_task(_watch(ingest, health_srv, stop, probe or Probe()))
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


def _transport(cfg: CloudConfig) -> str:
    if cfg.tls.insecure:
        return "PLAINTEXT (tls.insecure)"
    return "TLS, client certificates required" if cfg.tls.client_ca else "TLS"


def with_feature_shapes(cfg: CloudConfig) -> CloudConfig:
    """Fill `ingest.feature_shapes` from the model (a dry run of its edge part) when not configured."""
    if cfg.ingest.feature_shapes:
        return cfg
    shapes = expected_shapes(cfg.model.name, cfg.model.cut, cfg.model.imgsz)  # torch in a child, cached
    log.info("expecting features %s (model %s, cut %d, imgsz %s)", shapes, cfg.model.name, cfg.model.cut,
             cfg.model.imgsz)
    ingest = cfg.ingest.model_copy(update={"feature_shapes": {k: list(v) for k, v in shapes.items()}})
    return cfg.model_copy(update={"ingest": ingest})


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer cloud ingest", __doc__, argv, _add_arguments, _run,
                        config_help="cloud YAML (CloudConfig); defaults apply without one")


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--listen", help="host:port for gRPC (default from config, 127.0.0.1:50051)")
    ap.add_argument("--redis-url", help="redis://host:port/db (default from config)")
    ap.add_argument("--metrics-port", type=int, default=0,
                    help="serve /metrics, /healthz and /readyz here (0: off; 9100 in the examples)")
    ap.add_argument("--metrics-addr", default="127.0.0.1", help="address the /metrics server binds")
    ap.add_argument("--no-shape-check-from-model", action="store_true",
                    help="do not derive the expected feature shapes from the model (then the first frame of "
                         "each camera fixes them, unless ingest.feature_shapes is configured)")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    cfg = load_config(args.config, CloudConfig, {"listen": args.listen, "redis_url": args.redis_url})
    if not args.no_shape_check_from_model:
        cfg = with_feature_shapes(cfg)
    probe = Probe(starting="gRPC server starting")
    metrics.set_build_info(cfg.model.name, cfg.ingest.queue_codec)
    metrics.start_metrics_server(args.metrics_port, args.metrics_addr, live=probe.live, ready=probe.ready)

    async def serve_until_stopped() -> None:
        await serve(cfg, stop.asyncio_event(), probe=probe)

    asyncio.run(serve_until_stopped())
    return 0
