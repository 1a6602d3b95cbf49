"""Cloud worker: consumer-group reader of every camera's frame stream, runs the detection head.

Loop: discover camera streams (keys.CAMERAS_SET), claim entries left pending too long by a dead
worker (XAUTOCLAIM), read new ones (XREADGROUP), let the batching policy pick the batch size,
decode (frames in the queue are self-contained: no codec state here), run the head, then per
frame one Lua script, atomically: SET NX the (camera, session, seq) done key; only if it was new
XADD the detection record and PUBLISH it; then XACK and XDEL the frame. A redelivered frame thus
adds nothing, and a worker killed at any point loses nothing (its pending frames are claimed).
A payload that does not decode, or a frame delivered `max_deliveries` times without success,
goes to the dead-letter stream with the reason, acknowledged; the worker carries on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import redis
from redis.exceptions import RedisError, ResponseError

from split_infer import keys, metrics
from split_infer.codec import CodecError, make_decoder
from split_infer.config import CloudConfig

log = logging.getLogger("split_infer.worker")

# head(features batched on axis 0, [(width, height)] per frame) -> detections per frame
HeadFn = Callable[[dict[str, np.ndarray], list[tuple[int, int]]], list[list[dict]]]

# Atomic "write once, then acknowledge". KEYS: done key, target stream (detections, or the dropped
# stream for a shed frame), frames stream. ARGV: ttl, group, entry id, maxlen, live channel ('' =
# none), live message, field/value pairs of the record.
WRITE_ONCE = """
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
if fresh then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, 7))
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[3], ARGV[3])
if fresh then return 1 end
return 0
"""


class TakeQueued:
    """Take what is queued, up to a max (the fallback policy), on the batching interface."""

    name = "take-queued"

    def __init__(self, max_batch: int) -> None:
        from split_infer.batching.policy import PolicyMetrics

        self.max_batch, self.metrics = max_batch, PolicyMetrics()

    def next_batch(self, queue, now: float):
        from split_infer.batching.policy import Decision

        return Decision(take=queue.fifo(self.max_batch))

    def on_batch_done(self, batch_size: int, service_ms: float, now: float) -> None:
        pass


@dataclass
class Entry:
    stream: str
    id: str
    fields: dict[bytes, bytes]

    def get(self, name: str, default: str = "") -> str:
        v = self.fields.get(name.encode())
        return default if v is None else v.decode("utf-8", "replace")

    @property
    def camera(self) -> str:
        return self.get("camera") or self.stream.rsplit(":", 1)[-1]

    @property
    def capture_ts(self) -> float:
        try:
            return float(self.get("capture_ts", "0"))
        except ValueError:
            return 0.0


def _decode_id(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Worker:
    def __init__(self, cfg: CloudConfig, r: redis.Redis, head: HeadFn, policy=None, name: str | None = None) -> None:
        self.cfg, self.r, self.head = cfg, r, head
        self.s = cfg.worker
        self.policy = policy or TakeQueued(self.s.max_batch)
        self.prefetch = self.s.prefetch or 2 * self.s.max_batch
        self.arrived = 0  # frames ever delivered to this worker (the policy's arrival-rate input)
        self._wait_until: float | None = None  # the policy asked to be called again then
        self._next_depth = 0.0
        self.shed = 0
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.write_once = r.register_script(WRITE_ONCE)
        self.streams: list[str] = []
        self.backlog: dict[tuple[str, str], Entry] = {}  # delivered to us, not yet processed
        self._next_refresh = self._next_claim = 0.0
        self._redis_ok = True
        self.processed = self.duplicates = self.dead = 0

    # -- streams and claiming -----------------------------------------------------------------

    def refresh_streams(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + self.s.streams_refresh_s
        cams = sorted(c.decode() for c in self.r.smembers(keys.CAMERAS_SET))
        streams = [keys.frames_stream(c) for c in cams]
        for s in streams:
            if s in self.streams and not force:
                continue
            try:  # from id 0: frames queued before any worker existed are still read
                self.r.xgroup_create(s, keys.FRAMES_GROUP, id="0", mkstream=True)
            except ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise
        if streams != self.streams:
            log.info("reading %d camera stream(s): %s", len(streams), ", ".join(cams))
        self.streams = streams

    def claim_stale(self, force: bool = False) -> int:
        """Take over entries pending longer than claim_idle_ms (their worker is presumed dead)."""
        now = time.monotonic()
        if not force and now < self._next_claim:
            return 0
        self._next_claim = now + self.s.claim_interval_s
        claimed = 0
        for s in self.streams:
            start = "0-0"
            for _ in range(100):  # bounded walk of the pending list
                nxt, entries, _deleted = self.r.xautoclaim(s, keys.FRAMES_GROUP, self.name,
                                                           self.s.claim_idle_ms, start, count=64)
                if entries:
                    ids = [_decode_id(i) for i, _ in entries]
                    counts = self._delivery_counts(s, ids)
                    for (eid, fields) in entries:
                        eid = _decode_id(eid)
                        e = Entry(s, eid, fields or {})
                        if (s, eid) in self.backlog:
                            continue  # ours, only waiting for the policy: not a dead worker's
                        if counts.get(eid, 0) > self.s.max_deliveries:
                            self.dead_letter(e, f"delivered {counts[eid]} times without success (poison frame?)")
                        elif fields:
                            self.backlog[(s, eid)] = e
                            claimed += 1
                start = _decode_id(nxt)
                if start == "0-0":
                    break
        if claimed:
            log.warning("claimed %d frame(s) left pending by a dead or stuck worker", claimed)
            metrics.FRAMES.labels("worker", "claimed").inc(claimed)
        return claimed

    def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        pend = self.r.xpending_range(stream, keys.FRAMES_GROUP, min=ids[0], max=ids[-1], count=len(ids) + 64)
        return {_decode_id(p["message_id"]): int(p["times_delivered"]) for p in pend}

    def read_new(self, want: int, block_ms: int | None) -> None:
        """Read up to `want` new frames (XREADGROUP counts per stream: the surplus waits in the backlog)."""
        if not self.streams or want <= 0:
            if block_ms:
                time.sleep(block_ms / 1000)
            return
        resp = self.r.xreadgroup(keys.FRAMES_GROUP, self.name, {s: ">" for s in self.streams}, count=want,
                                 block=block_ms)
        for stream, entries in resp or []:
            stream = _decode_id(stream)
            for eid, fields in entries:
                eid = _decode_id(eid)
                self.backlog[(stream, eid)] = Entry(stream, eid, fields or {})
                self.arrived += 1

    def queue_depths(self) -> dict[str, int]:
        """XLEN per camera stream (queued + in flight), exported as queue_depth."""
        pipe = self.r.pipeline(transaction=False)
        for s in self.streams:
            pipe.xlen(s)
        depths = dict(zip(self.streams, pipe.execute()))
        for s, d in depths.items():
            metrics.QUEUE_DEPTH.labels(s.rsplit(":", 1)[-1]).set(d)
        return depths

    # -- processing ----------------------------------------------------------------------------

    def dead_letter(self, e: Entry, reason: str) -> None:
        log.error("dead-lettering %s %s (camera %s seq %s): %s", e.stream, e.id, e.camera, e.get("seq"), reason)
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(keys.DEAD_LETTER, {"stream": e.stream, "id": e.id, "camera": e.camera, "seq": e.get("seq"),
                                     "session": e.get("session"), "reason": reason[:2000], "worker": self.name,
                                     "ts": repr(time.time()),
                                     "payload_bytes": len(e.fields.get(b"payload", b""))},
                  maxlen=10000, approximate=True)
        pipe.xack(e.stream, keys.FRAMES_GROUP, e.id)
        pipe.xdel(e.stream, e.id)
        pipe.execute()
        self.backlog.pop((e.stream, e.id), None)
        self.dead += 1
        metrics.FRAMES.labels("worker", "dead_letter").inc()

    def _view(self, closing: bool = False):
        from split_infer.batching.policy import Frame, QueueView

        frames = []
        for e in self.backlog.values():
            try:
                arrival = float(e.get("ingest_ts") or 0) or e.capture_ts
            except ValueError:
                arrival = e.capture_ts
            frames.append(Frame(e.camera, e.capture_ts, arrival, (e.stream, e.id)))
        return QueueView.of(frames, arrived_total=self.arrived, closing=closing)

    def _pop(self, frames) -> list[Entry]:
        return [self.backlog.pop(f.key) for f in frames if f.key in self.backlog]

    def drop(self, shed) -> None:
        """Frames the policy shed: acknowledged, each recorded once in the dropped stream."""
        pipe = self.r.pipeline(transaction=False)
        for f, reason in shed:
            e = self.backlog.pop(f.key, None)
            if e is None:
                continue
            record = {"camera": e.camera, "session": e.get("session"), "seq": e.get("seq"),
                      "capture_ts": e.get("capture_ts"), "reason": reason, "worker": self.name,
                      "ts": repr(time.time())}
            argv: list = [self.s.done_ttl_s, keys.FRAMES_GROUP, e.id, self.s.detections_maxlen, "", ""]
            for k, v in record.items():
                argv += [k, v]
            self.write_once(keys=[keys.done_key(e.camera, e.get("session"), e.get("seq")), keys.DROPPED, e.stream],
                            args=argv, client=pipe)
            metrics.FRAMES.labels("worker", f"shed_{reason}").inc()
            self.shed += 1
        pipe.execute()

    def _decode(self, batch: list[Entry]) -> list[tuple[Entry, dict[str, np.ndarray]]]:
        good = []
        for e in batch:
            try:
                for name in ("seq", "width", "height", "capture_ts"):
                    if not e.get(name):
                        raise CodecError(f"queue entry lacks field {name!r}")
                int(e.get("seq")), int(e.get("width")), int(e.get("height"))
                # A fresh decoder per frame: a frame that needed codec state would fail here, loudly.
                good.append((e, make_decoder().decode(e.fields.get(b"payload", b""))))
            except (CodecError, ValueError) as err:
                self.dead_letter(e, f"undecodable frame: {err}")
        return good

    def process(self, batch: list[Entry]) -> int:
        """Run the head on a batch and write its records; returns frames written (not duplicates)."""
        t_read = time.time()
        decoded = self._decode(batch)
        groups: dict[tuple, list[tuple[Entry, dict[str, np.ndarray]]]] = {}
        for e, t in decoded:  # frames of different layouts (cameras with another imgsz) go apart
            sig = tuple(sorted((k, v.shape) for k, v in t.items()))
            groups.setdefault(sig, []).append((e, t))
        written = 0
        for items in groups.values():
            feats = {k: np.concatenate([t[k] for _, t in items], axis=0) for k in items[0][1]}
            sizes = [(int(e.get("width")), int(e.get("height"))) for e, _ in items]
            t0 = time.perf_counter()
            dets = self.head(feats, sizes)
            head_s = time.perf_counter() - t0
            if len(dets) != len(items):
                raise RuntimeError(f"head returned {len(dets)} results for {len(items)} frames")
            metrics.HEAD_SECONDS.observe(head_s)
            metrics.BATCH_SIZE.observe(len(items))
            self.policy.on_batch_done(len(items), head_s * 1000.0, time.time())
            written += self._write(items, dets, head_s, t_read)
        return written

    def _write(self, items, dets, head_s: float, t_read: float) -> int:
        done_ts = time.time()
        pipe = self.r.pipeline(transaction=False)
        meta = []
        for (e, _), d in zip(items, dets):
            cam, seq, session = e.camera, int(e.get("seq")), e.get("session")
            record = {"camera": cam, "session": session, "seq": seq, "capture_ts": e.get("capture_ts"),
                      "ingest_ts": e.get("ingest_ts"), "done_ts": repr(done_ts), "width": e.get("width"),
                      "height": e.get("height"), "detections": json.dumps(d, separators=(",", ":")),
                      "batch": len(items), "head_ms": round(head_s * 1000, 3), "worker": self.name,
                      "timings": e.get("timings", "{}")}
            live = json.dumps({**record, "detections": d}, separators=(",", ":"))
            argv: list = [self.s.done_ttl_s, keys.FRAMES_GROUP, e.id, self.s.detections_maxlen,
                          keys.LIVE_DETECTIONS, live]
            for k, v in record.items():
                argv += [k, v]
            self.write_once(keys=[keys.done_key(cam, session, seq), keys.detections_stream(cam), e.stream],
                            args=argv, client=pipe)
            meta.append((cam, e))
        results = pipe.execute()
        written = 0
        for (cam, e), fresh in zip(meta, results):
            if fresh:
                written += 1
                metrics.FRAMES.labels("worker", "ok").inc()
                metrics.INFERENCE_LATENCY.labels(cam).observe(max(0.0, done_ts - e.capture_ts))
                try:
                    metrics.QUEUE_DELAY.observe(max(0.0, t_read - float(e.get("ingest_ts") or t_read)))
                except ValueError:
                    pass
            else:
                self.duplicates += 1
                metrics.FRAMES.labels("worker", "duplicate").inc()
        self.processed += written
        return written

    # -- main loop -----------------------------------------------------------------------------

    def step(self) -> int:
        """One iteration: refresh, claim, read, ask the policy, run at most one batch. Returns frames written."""
        self.refresh_streams()
        self.claim_stale()
        now = time.time()
        if now >= self._next_depth and self.streams:
            self.queue_depths()
            self._next_depth = now + 0.5
        if len(self.backlog) < self.prefetch:
            if not self.backlog:
                block: int | None = self.s.block_ms
            elif self._wait_until is not None:
                block = max(1, min(self.s.block_ms, int((self._wait_until - now) * 1000)))
            else:
                block = None
            self.read_new(self.prefetch - len(self.backlog), block)
        if not self.backlog:
            return 0
        d = self.policy.next_batch(self._view(), time.time())
        if d.shed:
            self.drop(d.shed)
        if not d.take:
            self._wait_until = d.wait_until
            if d.wait_until is None and len(self.backlog) >= self.prefetch:
                time.sleep(self.s.block_ms / 1000)  # waiting for arrivals we cannot read: do not spin
            return 0
        self._wait_until = None
        metrics.BATCH_CHOICE.set(len(d.take))
        batch = self._pop(d.take)
        try:
            return self.process(batch)
        except RedisError:
            raise
        except Exception:
            # The head failed: leave the frames pending; they are claimed again after claim_idle_ms
            # and dead-lettered once delivered max_deliveries times.
            log.exception("head failed on a batch of %d; frames stay pending for a retry", len(batch))
            metrics.FRAMES.labels("worker", "head_error").inc(len(batch))
            return 0

    def run(self, stop: threading.Event, max_frames: int | None = None) -> None:
        backoff = 0.2
        while not stop.is_set():
            try:
                self.step()
                if not self._redis_ok:
                    log.warning("Redis reachable again; resuming")
                    self._redis_ok, backoff = True, 0.2
                    metrics.REDIS_UP.labels("worker").set(1)
            except ResponseError as e:
                if "NOGROUP" in str(e):  # Redis restarted without its data: recreate the groups
                    log.warning("consumer group missing (%s); recreating", e)
                    self.refresh_streams(force=True)
                    continue
                raise
            except RedisError as e:
                if self._redis_ok:
                    log.error("Redis unreachable (%s: %s); retrying with backoff", type(e).__name__, e)
                    self._redis_ok = False
                    metrics.REDIS_UP.labels("worker").set(0)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._next_refresh = 0.0
            if max_frames is not None and self.processed >= max_frames:
                break
        self.drain()

    def drain(self) -> None:
        """On a clean stop, finish what was delivered to us, so nobody has to wait to claim it."""
        try:
            while self.backlog:
                d = self.policy.next_batch(self._view(closing=True), time.time())
                if d.shed:
                    self.drop(d.shed)
                if d.take:
                    self.process(self._pop(d.take))
                elif not d.shed:
                    break
        except Exception as e:  # whatever is left stays pending and is claimed by another worker
            log.warning("stopping with %d frame(s) pending (%s)", len(self.backlog), e)


def yolo_head(cfg: CloudConfig) -> HeadFn:
    """The core's detection head for `cfg.model`, on `cfg.head_runtime` (auto: CUDA torch, else OpenVINO)."""
    from split_infer.model.preprocess import Letterbox

    m = cfg.model
    if cfg.head_runtime == "auto":
        head = fastest_head(cfg)
    else:
        head = make_head(cfg, cfg.head_runtime)
    log.info("head: %s cut %d imgsz %s on %s (%s)", m.name, m.cut, m.imgsz, head.runtime, head.device)

    def run(feats: dict[str, np.ndarray], sizes: list[tuple[int, int]]) -> list[list[dict]]:
        return head.detect(feats, [Letterbox.fit(w, h, *m.imgsz) for w, h in sizes])

    run.head = head  # type: ignore[attr-defined]
    return run


def make_head(cfg: CloudConfig, runtime: str):
    from split_infer.cloud.head import Head

    m = cfg.model
    return Head(m.name, m.cut, tuple(m.imgsz), runtime=runtime, conf=m.conf, iou=m.iou,
                threads=cfg.worker.head_threads)


def fastest_head(cfg: CloudConfig, repeats: int = 3):
    """auto: torch on a CUDA GPU; on a CPU whichever of torch and OpenVINO runs this head faster
    (median of `repeats` batch-1 runs after a warm-up); the slower one is discarded."""
    import statistics

    import torch

    if torch.cuda.is_available():
        return make_head(cfg, "torch")
    best, best_s, times = None, float("inf"), {}
    for rt in ("torch", "openvino"):
        head = make_head(cfg, rt)
        feats = {k: np.zeros((1, *v), np.float32) for k, v in feature_shapes(cfg).items()}
        head.raw(feats)  # warm-up
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            head.raw(feats)
            samples.append(time.perf_counter() - t0)
        times[rt] = statistics.median(samples)
        if times[rt] < best_s:
            best, best_s = head, times[rt]
    log.info("head runtime auto: %s (batch 1: %s)", best.runtime,
             ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()))
    return best


def feature_shapes(cfg: CloudConfig) -> dict[str, tuple[int, ...]]:
    """Per-frame shapes of the tensors crossing the cut (a dry run of the edge part, cached)."""
    from split_infer.cloud import head

    m = cfg.model
    return head.feature_shapes(m.name, m.cut, tuple(m.imgsz))


def load_head(spec: str, cfg: CloudConfig) -> HeadFn:
    """`module:factory`; the factory receives the CloudConfig and returns the head callable."""
    mod, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(mod), attr or "make_head")
    return factory(cfg)


def make_policy(cfg: CloudConfig, head: HeadFn):
    """The configured batching policy; the adaptive one gets this device's head cost per batch size."""
    from split_infer.batching.cost import CostModel
    from split_infer.batching.policy import make_policy as make

    w = cfg.worker
    if w.batching != "adaptive":
        return make(w.batching, slo_ms=cfg.latency_slo_ms, max_batch=w.max_batch, batch_size=w.max_batch)
    if w.cost_file:
        cost = CostModel.load(w.cost_file)
        log.info("head cost from %s: %s", w.cost_file, cost)
    else:
        cost = profile_head(cfg, head)
    return make("adaptive", slo_ms=cfg.latency_slo_ms, max_batch=w.max_batch, cost=cost, overload=w.overload)


def profile_head(cfg: CloudConfig, head: HeadFn):
    """Time the head on zero features for each profile size (the CostModel then learns online)."""
    from split_infer.batching.cost import CostModel

    m = cfg.model
    shapes = feature_shapes(cfg)
    sizes = [b for b in cfg.worker.profile_sizes if b <= cfg.worker.max_batch] or [1]

    def run(b: int) -> None:
        head({k: np.zeros((b, *s), np.float32) for k, s in shapes.items()}, [tuple(m.imgsz)] * b)

    t0 = time.perf_counter()
    cost = CostModel.profile(run, sizes=sizes, warmup=1, repeats=3, device=f"head {m.name} cut {m.cut}")
    log.info("profiled the head in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"b={b}: {cost.ms(b):.1f} ms" for b in cost.sizes))
    return cost


def main(argv: list[str] | None = None) -> int:
    from split_infer.cloud.ingest import load_cloud_config

    ap = argparse.ArgumentParser(prog="split-infer cloud worker", description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="cloud YAML (CloudConfig); defaults apply without one")
    ap.add_argument("--redis-url", help="redis://host:port/db (default from config)")
    ap.add_argument("--name", help="consumer name (default host-pid); must be unique per live worker")
    ap.add_argument("--head", default="split_infer.cloud.worker:yolo_head",
                    help="module:factory(cfg) returning the head callable (default: the YOLO head)")
    ap.add_argument("--max-frames", type=int, help="exit after writing this many records")
    ap.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    ap.add_argument("--metrics-addr", default="127.0.0.1")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_cloud_config(args.config, {"redis_url": args.redis_url})
    metrics.start_metrics_server(args.metrics_port, args.metrics_addr)
    head = load_head(args.head, cfg)
    r = redis.Redis.from_url(cfg.redis_url, socket_connect_timeout=2, socket_timeout=max(5, cfg.worker.block_ms / 1000 + 5))
    worker = Worker(cfg, r, head, make_policy(cfg, head), args.name)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("worker %s up: redis %s, max batch %d", worker.name, cfg.redis_url, cfg.worker.max_batch)
    worker.run(stop, args.max_frames)
    log.info("worker %s stopped: %d written, %d duplicates, %d shed, %d dead-lettered", worker.name,
             worker.processed, worker.duplicates, worker.shed, worker.dead)
    return 0
