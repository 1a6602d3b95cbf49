"""Cloud worker: consumer-group reader of every camera's frame stream, runs the detection head.

Loop: follow the camera streams, claim entries left pending too long by a dead worker, read new
ones (split_infer/cloud/consumer.py), let the batching policy pick the batch, decode (frames in the
queue are self-contained: no codec state here), run the head, then end each frame with its
detection record, written once (a redelivered frame adds nothing). A payload that does not decode,
or a frame delivered `max_deliveries` times without success, goes to the dead-letter stream with
the reason; the worker carries on.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time

import numpy as np
from redis.exceptions import RedisError, ResponseError

from split_infer import metrics
from split_infer.batching import BatchPolicy, CostModel, QueuedFrameView, QueueView, TakeQueued
from split_infer.batching import make_policy as make_batching_policy
from split_infer.cloud.consumer import Entry, FrameStreams
from split_infer.cloud.head import HeadFn, load_head, profile_head
from split_infer.cloud.release import load_release, model_version_arg
from split_infer.cloud.shadow import Shadow
from split_infer.codec import CodecError, make_decoder
from split_infer.config import CloudConfig, load_config
from split_infer.keys import Keys
from split_infer.observability import Probe
from split_infer.records import DetectedObject, DetectionResult, ShedRecord
from split_infer.records.entries import UNVERSIONED
from split_infer.redact import redact_url
from split_infer.redisconn import connect
from split_infer.service import StopEvent, service_main
from split_infer.streams import Client, publish_all

log = logging.getLogger(__name__)

DEPTH_EVERY_S = 0.5  # queue_depth refresh

Decoded = list[tuple[Entry, dict[str, np.ndarray]]]


class Worker:
    def __init__(self, cfg: CloudConfig, r: Client, head: HeadFn, policy: BatchPolicy | None = None,
                 name: str | None = None, keys: Keys | None = None, model_version: str | None = None,
                 shadow: Shadow | None = None) -> None:
        self.cfg, self.r, self.head = cfg, r, head
        self.s = cfg.worker
        self.keys = keys or Keys.from_env()
        self.policy = policy or TakeQueued(self.s.max_batch)
        self.prefetch = self.s.prefetch or 2 * self.s.max_batch
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.frames = FrameStreams(r, self.keys, self.s, self.name, cfg.retention)
        self._wait_until: float | None = None  # the policy asked to be called again then
        self._next_depth = 0.0
        self._redis_ok = True
        self.processed = self.duplicates = self.shed = 0
        # Stamped on every record and latency sample (split_infer/cloud/release.py gives the derived one).
        self.model_version: str = model_version or cfg.worker.release.model_version or UNVERSIONED
        self.shadow = shadow  # a canary's: the stable model on a sample of the same features
        self.probe = Probe()  # /healthz: the loop turns; /readyz: Redis reachable

    @property
    def dead(self) -> int:
        return self.frames.dead

    # -- the policy's view ---------------------------------------------------------------------

    def _view(self, closing: bool = False) -> QueueView:
        views = [QueuedFrameView(e.frame.camera, e.frame.capture_ts, e.frame.ingest_ts or e.frame.capture_ts, e.key)
                 for e in self.frames.backlog.values()]
        return QueueView.of(views, arrived_total=self.frames.arrived, closing=closing)

    def _pop(self, views: list[QueuedFrameView]) -> list[Entry]:
        backlog = self.frames.backlog
        return [backlog.pop(v.key) for v in views if v.key in backlog]

    def drop(self, shed: list[tuple[QueuedFrameView, str]]) -> None:
        """Frames the policy shed: acknowledged, each recorded once in the dropped stream."""
        pipe = self.r.pipeline(transaction=False)
        for view, reason in shed:
            e = self.frames.backlog.pop(view.key, None)
            if e is None:
                continue
            f = e.frame
            record = ShedRecord(f.camera, f.session, f.seq, f.capture_ts, reason, self.name, time.time())
            self.frames.end(e, self.keys.dropped_stream(f.camera), record.to_fields(), pipe)
            metrics.FRAMES.labels("worker", f"shed_{reason}").inc()
            self.shed += 1
        pipe.execute()

    # -- processing ----------------------------------------------------------------------------

    def _decode(self, batch: list[Entry]) -> Decoded:
        good = []
        for e in batch:
            try:  # a fresh decoder per frame: a frame that needed codec state would fail here, loudly
                good.append((e, make_decoder().decode(e.frame.payload)))
            except CodecError as err:
                self.frames.dead_letter_frame(e, f"undecodable frame: {err}")
        return good

    def process(self, batch: list[Entry]) -> int:
        """Run the head on a batch and write its records; returns frames written (not duplicates)."""
        t_read = time.time()
        groups: dict[tuple, Decoded] = {}
        for e, t in self._decode(batch):  # frames of different layouts (cameras with another imgsz) go apart
            sig = tuple(sorted((k, v.shape) for k, v in t.items()))
            groups.setdefault(sig, []).append((e, t))
        written = 0
        for items in groups.values():
            feats = {k: np.concatenate([t[k] for _, t in items], axis=0) for k in items[0][1]}
            sizes = [(e.frame.width, e.frame.height) for e, _ in items]
            t0 = time.perf_counter()
            dets = self.head(feats, sizes)
            head_s = time.perf_counter() - t0
            if len(dets) != len(items):
                raise RuntimeError(f"head returned {len(dets)} results for {len(items)} frames")
            metrics.HEAD_SECONDS.observe(head_s)
            metrics.BATCH_SIZE.observe(len(items))
            self.policy.on_batch_done(len(items), head_s * 1000.0, time.time())
            written += self._write([e for e, _ in items], dets, head_s, t_read)
            if self.shadow is not None:  # after the writes: the stable model adds no latency to these frames
                self.shadow.observe(feats, sizes, dets)
        return written

    def _write(self, batch: list[Entry], dets: list[list[dict]], head_s: float, t_read: float) -> int:
        done_ts = time.time()
        pipe = self.r.pipeline(transaction=False)
        live: list[tuple[str, str]] = []
        for e, d in zip(batch, dets, strict=True):
            f = e.frame
            record = DetectionResult(
                camera=f.camera, session=f.session, seq=f.seq, capture_ts=f.capture_ts, width=f.width,
                height=f.height, detections=tuple(DetectedObject.from_json(x, i) for i, x in enumerate(d)),
                done_ts=done_ts, ingest_ts=f.ingest_ts, batch=len(batch), head_ms=round(head_s * 1000, 3),
                worker=self.name, timings=f.timings, model_version=self.model_version)
            self.frames.end(e, self.keys.detections_stream(f.camera), record.to_fields(), pipe)
            live.append((self.keys.live_detections, record.to_live_json()))
        written = 0
        fresh_live = []
        for e, fresh, message in zip(batch, pipe.execute(), live, strict=True):
            if fresh:
                fresh_live.append(message)
                written += 1
                metrics.FRAMES.labels("worker", "ok").inc()
                metrics.INFERENCE_LATENCY.labels(e.frame.camera, self.model_version).observe(
                    max(0.0, done_ts - e.frame.capture_ts))
                metrics.QUEUE_DELAY.observe(max(0.0, t_read - (e.frame.ingest_ts or t_read)))
            else:
                self.duplicates += 1
                metrics.FRAMES.labels("worker", "duplicate").inc()
        self.processed += written
        # Published after the records are in (the script touches only the camera's slot): a worker
        # killed in between loses these live messages, never a record. Pub/sub is at most once anyway.
        publish_all(self.r, fresh_live)
        return written

    # -- main loop -----------------------------------------------------------------------------

    def _read(self, now: float) -> None:
        """Top the backlog up to `prefetch`; block while it is empty, or until the policy's wake-up."""
        backlog = len(self.frames.backlog)
        if backlog >= self.prefetch:
            return
        if not backlog:
            block: int | None = self.s.block_ms
        elif self._wait_until is not None:
            block = max(1, min(self.s.block_ms, int((self._wait_until - now) * 1000)))
        else:
            block = None
        self.frames.read_new(self.prefetch - backlog, block)

    def step(self) -> int:
        """One iteration: refresh, claim, read, ask the policy, run at most one batch. Returns frames written."""
        self.frames.refresh()
        self.frames.claim_stale()
        now = time.time()
        if now >= self._next_depth and self.frames.cameras:
            self.frames.queue_depths()
            self._next_depth = now + DEPTH_EVERY_S
        self._read(now)
        if not self.frames.backlog:
            return 0
        d = self.policy.next_batch(self._view(), time.time())
        if d.shed:
            self.drop(d.shed)
        if not d.take:
            self._wait_until = d.wait_until
            if d.wait_until is None and len(self.frames.backlog) >= self.prefetch:
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
                self.probe.beat()
                self.probe.set_ready(True)
                metrics.REDIS_UP.labels("worker").set(1)  # from the first step on, not only after an outage
                if not self._redis_ok:
                    log.warning("Redis reachable again; resuming")
                    self._redis_ok, backoff = True, 0.2
                    metrics.REDIS_UP.labels("worker").set(1)
            except ResponseError as e:
                if "NOGROUP" in str(e):  # Redis restarted without its data: recreate the groups
                    log.warning("consumer group missing (%s); recreating", e)
                    self.frames.refresh(force=True)
                    continue
                raise
            except RedisError as e:
                if self._redis_ok:
                    log.error("Redis unreachable (%s: %s); retrying with backoff", type(e).__name__, e)
                    self._redis_ok = False
                    metrics.REDIS_UP.labels("worker").set(0)
                self.probe.beat()
                self.probe.set_ready(False, f"Redis unreachable ({type(e).__name__})")
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self.frames.forget_refresh()
            if max_frames is not None and self.processed >= max_frames:
                break
        self.drain()

    def drain(self) -> None:
        """On a clean stop, finish what was delivered to us, so nobody has to wait to claim it."""
        try:
            while self.frames.backlog:
                d = self.policy.next_batch(self._view(closing=True), time.time())
                if d.shed:
                    self.drop(d.shed)
                if d.take:
                    self.process(self._pop(d.take))
                elif not d.shed:
                    break
        except Exception as e:  # whatever is left stays pending and is claimed by another worker
            log.warning("stopping with %d frame(s) pending (%s)", len(self.frames.backlog), e)


def make_policy(cfg: CloudConfig, head: HeadFn) -> BatchPolicy:
    """The configured batching policy; the adaptive one gets this device's head cost per batch size."""
    w = cfg.worker
    if w.batching != "adaptive":
        return make_batching_policy(w.batching, slo_ms=cfg.latency_slo_ms, max_batch=w.max_batch,
                                    batch_size=w.max_batch)
    if w.cost_file:
        cost = CostModel.load(w.cost_file)
        log.info("head cost from %s: %s", w.cost_file, cost)
    else:
        cost = profile_head(cfg, head)
    return make_batching_policy("adaptive", slo_ms=cfg.latency_slo_ms, max_batch=w.max_batch, cost=cost,
                                overload=w.overload)


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer cloud worker", __doc__, argv, _add_arguments, _run,
                        config_help="cloud YAML (CloudConfig); defaults apply without one")


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--redis-url", help="redis://host:port/db (default from config)")
    ap.add_argument("--name", help="consumer name (default host-pid); must be unique per live worker")
    ap.add_argument("--head", default="split_infer.cloud.head:yolo_head",
                    help="module:factory(cfg) returning the head callable (default: the YOLO head)")
    ap.add_argument("--max-frames", type=int, help="exit after writing this many records (default: run until stopped)")
    ap.add_argument("--model-version", type=model_version_arg,
                    help="stamped on every record (default: worker.release.model_version, else derived)")
    ap.add_argument("--metrics-port", type=int, default=0,
                    help="serve /metrics, /healthz and /readyz here (0: off; 9101 in the examples)")
    ap.add_argument("--metrics-addr", default="127.0.0.1", help="address the /metrics server binds")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    cfg = load_config(args.config, CloudConfig, {"redis_url": args.redis_url})
    probe = Probe(starting="loading the detection head")
    metrics.set_build_info(cfg.model.name, cfg.ingest.queue_codec)
    metrics.start_metrics_server(args.metrics_port, args.metrics_addr, live=probe.live, ready=probe.ready)
    release = load_release(cfg, load_head(args.head, cfg), args.head, args.model_version)
    head = release.head
    r = connect(cfg.redis_url, socket_connect_timeout=2, socket_timeout=max(5, cfg.worker.block_ms / 1000 + 5))
    worker = Worker(cfg, r, head, make_policy(cfg, head), args.name, model_version=release.version,
                    shadow=release.shadow)
    worker.probe = probe
    log.info("worker %s up: redis %s, max batch %d", worker.name, redact_url(cfg.redis_url), cfg.worker.max_batch)
    worker.run(stop, args.max_frames)
    log.info("worker %s stopped: %d written, %d duplicates, %d shed, %d dead-lettered", worker.name,
             worker.processed, worker.duplicates, worker.shed, worker.dead)
    return 0
