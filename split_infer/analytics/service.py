"""`split-infer analytics`: tracking and counting over the detection streams in Redis.

One loop: keep the leases of the cameras this instance owns, read their detection streams
through the consumer group `analytics`, put records back in seq order, run each camera's
`CameraAnalytics`, then commit per camera in one MULTI/EXEC (events, counts hash, JSON checkpoint)
and only then XACK and publish. A crash at any point replays from the last checkpoint without
counting twice (docs/analytics.md, "Restart and scaling").
"""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError

from split_infer import metrics
from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.checkpoint import CheckpointError, dump_checkpoint, load_checkpoint
from split_infer.analytics.exported import export_commit
from split_infer.analytics.frames import DetectionFrame, parse_record
from split_infer.analytics.history import write_minutes
from split_infer.analytics.scene import scene_json
from split_infer.config import CameraConfig, CloudConfig, ConfigError, load_config
from split_infer.keys import Keys
from split_infer.observability import Probe
from split_infer.records import AnalyticsEvent, RecordError
from split_infer.redact import redact_url
from split_infer.redisconn import connect
from split_infer.retention import Trimmer, events_target
from split_infer.service import StopEvent, service_main
from split_infer.streams import Client, create_group, read_group

log = logging.getLogger(__name__)

MAX_COORD = 1e6  # px: a box beyond this is not from a camera, and would overflow the tracker's filter
# Renew the lease only if we still hold it (a plain EXPIRE could extend someone else's lease).
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


@dataclass(order=True)
class Pending:
    """A record read from the stream, waiting in the reorder buffer (still un-acked in Redis)."""

    key: tuple[float, int]
    entry_id: str = field(compare=False)
    frame: DetectionFrame = field(compare=False)
    arrived: float = field(compare=False)  # monotonic time it was read


@dataclass(eq=False)  # compared by identity
class Owned:
    """A camera this instance holds the lease of."""

    cfg: CameraConfig
    analytics: CameraAnalytics
    buffer: list[Pending] = field(default_factory=list)
    backlog: str | None = "0"  # where to go on reading our pending entries (PEL); None: done
    acks: list[str] = field(default_factory=list)
    events: list[AnalyticsEvent] = field(default_factory=list)
    dirty: bool = False
    late_sessions: set[str] = field(default_factory=set)  # sessions whose late frames were already logged


class Rejected(ValueError):
    """A detection record analytics does not use; `reason` labels the metric."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Settings:
    consumer: str
    reorder_wait_s: float = 1.0
    max_buffer: int = 64
    lease_ms: int = 10_000
    renew_s: float = 2.0
    block_ms: int = 200
    read_count: int = 64  # per stream and step: bounds a step's time well under the lease
    discover: bool = True  # also analyse every camera the ingest has seen (Keys.cameras)
    max_future_s: float = 300.0  # a record dated further ahead of this host's clock is rejected


class AnalyticsService:
    def __init__(self, r: Client, cfg: CloudConfig, settings: Settings, mqtt=None,
                 keys: Keys | None = None) -> None:
        self.r = r
        self.keys = keys or Keys.from_env()
        self.cfg = cfg
        self.s = settings
        self.mqtt = mqtt  # optional MqttPublisher (split_infer.analytics.mqtt): .publish(camera, events, analytics)
        self.owned: dict[str, Owned] = {}
        self._last_renew = 0.0
        self._last_scan = 0.0
        self._bad_ids: set[str] = set()
        self.trimmer = Trimmer(r, cfg.retention)  # time-based retention of the events streams
        self.probe = Probe()  # /healthz: the loop turns; /readyz: Redis reachable

    # ------------------------------------------------------------------ ownership

    def cameras(self) -> dict[str, CameraConfig]:
        cams = {c.id: c for c in self.cfg.cameras}
        if self.s.discover:
            for raw in self.r.smembers(self.keys.cameras):
                cid = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
                if cid in cams:
                    continue
                try:
                    cams[cid] = CameraConfig(id=cid, url="redis")
                except ValidationError:
                    if cid not in self._bad_ids:
                        self._bad_ids.add(cid)
                        log.error("ignoring camera id %r from %s: not a valid camera id", cid, self.keys.cameras)
        return cams

    def renew_leases(self, now: float, force: bool = False) -> None:
        """Extend the leases we hold (every renew_s, also from inside long work); drop those we lost."""
        if not force and now - self._last_renew < self.s.renew_s:
            return
        self._last_renew = now
        for cid in list(self.owned):
            if not self.r.eval(RENEW, 1, self.keys.analytics_owner(cid), self.s.consumer, self.s.lease_ms):
                log.warning("lost the lease of camera %s; dropping it", cid)
                self.owned.pop(cid, None)

    def refresh_leases(self, now: float) -> None:
        """Renew what we hold and try to take the cameras nobody holds."""
        if now - self._last_scan < self.s.renew_s and self.owned:
            return
        self._last_scan = now
        self.renew_leases(now, force=True)
        self.trimmer.sweep(events_target(self.keys, c) for c in self.owned)  # cameras with no new events
        me = self.s.consumer
        for cid, cam in self.cameras().items():
            key = self.keys.analytics_owner(cid)
            if cid in self.owned:
                continue
            got = self.r.set(key, me, nx=True, px=self.s.lease_ms)
            if not got and self.r.get(key) not in (me, me.encode()):
                continue  # another live instance has it
            if not got:
                self.r.eval(RENEW, 1, key, me, self.s.lease_ms)  # our own lease from before a restart
            self._take(cid, cam)

    def _take(self, cid: str, cam: CameraConfig) -> None:
        stream = self.keys.detections_stream(cid)
        create_group(self.r, stream, self.keys.ANALYTICS_GROUP)
        # Records a previous owner read but never acked are ours now.
        start = "0-0"
        while True:
            start, *_ = self.r.xautoclaim(stream, self.keys.ANALYTICS_GROUP, self.s.consumer, 0, start, count=1000)
            if start in (b"0-0", "0-0"):
                break
        self.owned[cid] = Owned(cam, self._load_state(cid, cam))
        self.r.set(self.keys.scene(cid), scene_json(cam))  # the lines and zones the dashboard draws
        log.info("analysing camera %s (from seq %d)", cid, self.owned[cid].analytics.last_seq)

    def _load_state(self, cid: str, cam: CameraConfig) -> CameraAnalytics:
        """The camera's analytics from its checkpoint (JSON, checked: nothing in it can run code), or
        a fresh one, said loudly and counted, when the checkpoint is missing or unreadable."""
        raw: Any = self.r.get(self.keys.analytics_state(cid))
        if not raw:
            metrics.ANALYTICS_CHECKPOINTS.labels(outcome="absent").inc()
            return CameraAnalytics(cam)
        try:
            analytics = load_checkpoint(raw if isinstance(raw, bytes) else str(raw).encode(), cam)
            metrics.ANALYTICS_CHECKPOINTS.labels(outcome="loaded").inc()
            return analytics
        except CheckpointError as e:
            reason = str(e)
        except Exception as e:  # noqa: BLE001 - a bug in reading one checkpoint must not stop the service
            log.exception("camera %s: reading the checkpoint failed", cid)
            reason = f"{type(e).__name__}: {e}"
        metrics.ANALYTICS_CHECKPOINTS.labels(outcome="unreadable").inc()
        log.error("camera %s: CHECKPOINT UNREADABLE at %s (%d bytes): %s; starting afresh: this camera's counts "
                  "restart from zero", cid, self.keys.analytics_state(cid), len(raw), reason)
        return CameraAnalytics(cam)

    # ------------------------------------------------------------------ one cycle

    def step(self) -> int:
        """Read what is there (blocking up to block_ms), process what is in order, commit. Returns records read."""
        now = time.monotonic()
        self.refresh_leases(now)
        if not self.owned:
            time.sleep(self.s.block_ms / 1000)
            return 0
        n = self._read()
        for cid, own in list(self.owned.items()):
            if self.owned.get(cid) is not own:
                continue  # lost while we worked on another camera
            self._release(own)
            if (own.acks or own.dirty) and self.owned.get(cid) is own:
                self._commit(cid, own)
        return n

    def _read(self) -> int:
        # First our own pending entries (after a start or a takeover), paged from id 0; then new ones.
        backlog = {self.keys.detections_stream(c): o.backlog for c, o in self.owned.items() if o.backlog}
        streams: dict[Any, Any] = backlog or {self.keys.detections_stream(c): ">" for c in self.owned}
        block = None if backlog else self.s.block_ms
        reply = read_group(self.r, self.keys.ANALYTICS_GROUP, self.s.consumer, streams, self.s.read_count, block)
        got = {(s.decode() if isinstance(s, bytes) else s): entries for s, entries in reply}
        n = 0
        for cid, own in self.owned.items():
            stream = self.keys.detections_stream(cid)
            entries = got.get(stream, [])
            n += len(entries)
            for entry_id, fields in entries:
                self._admit(cid, own, entry_id.decode() if isinstance(entry_id, bytes) else entry_id, fields)
            if stream in backlog:
                last = entries[-1][0] if entries else None
                more = len(entries) == self.s.read_count
                own.backlog = (last.decode() if isinstance(last, bytes) else last) if more else None
        return n

    def _admit(self, cid: str, own: Owned, entry_id: str, fields: dict) -> None:
        if any(p.entry_id == entry_id for p in own.buffer):
            return
        try:
            frame = self._check(cid, fields)
        except Rejected as e:
            # Logged once (it is acked here), counted, and the camera goes on with the next record.
            log.error("camera %s: rejecting detection record %s (%s): %s", cid, entry_id, e.reason, e)
            own.analytics.rejected_records += 1
            own.acks.append(entry_id)
            own.dirty = True
            metrics.FRAMES.labels(stage="analytics", outcome="rejected").inc()
            metrics.ANALYTICS_REJECTED.labels(reason=e.reason).inc()
            return
        own.buffer.append(Pending((frame.capture_ts, frame.seq), entry_id, frame, time.monotonic()))
        own.buffer.sort()

    def _check(self, cid: str, fields: Any) -> DetectionFrame:
        """The record as a frame, or Rejected: malformed (not UTF-8, nested too deeply, a bad field...),
        another camera's, dated too far ahead of this host's clock, or with boxes no camera makes."""
        if not fields:
            raise Rejected("deleted", "entry was deleted from the stream")
        try:
            frame = parse_record(fields)
        except (RecordError, ValueError, TypeError, RecursionError) as e:  # RecordError is the promise
            raise Rejected("malformed", str(e) or type(e).__name__) from None
        if frame.camera != cid:
            raise Rejected("foreign_camera", f"record of camera {frame.camera!r} in the stream of {cid!r}")
        ahead = frame.capture_ts - time.time()
        if ahead > self.s.max_future_s:
            raise Rejected("future", f"capture_ts {frame.capture_ts!r} is {ahead:.0f} s ahead of this host's "
                                     f"clock (more than {self.s.max_future_s:g} s)")
        if any(not abs(v) <= MAX_COORD for d in frame.detections for v in d.box):
            raise Rejected("bad_box", f"a box coordinate beyond {MAX_COORD:g} px")
        return frame

    def _release(self, own: Owned) -> None:
        """Process buffered frames in order: the next seq at once, a gap after reorder_wait_s."""
        a = own.analytics
        while own.buffer:
            now = time.monotonic()
            self.renew_leases(now)  # a long backlog must not let the leases run out
            if not any(o is own for o in self.owned.values()):
                return  # lost it: the new owner replays these records from the checkpoint
            p = own.buffer[0]
            f = p.frame
            same = a.session == f.session
            if same and f.seq <= a.last_seq:
                own.buffer.pop(0)  # redelivered: already counted
                own.acks.append(p.entry_id)
                metrics.FRAMES.labels(stage="analytics", outcome="duplicate").inc()
                continue
            ended = f.session in a.past_sessions  # its stragglers are late whatever their date
            if not same and a.session is not None and (ended or f.capture_ts <= a.last_ts):
                if not ended and a.last_ts > time.time():
                    # The last session was dated ahead of this clock: it must not freeze the camera.
                    log.warning("camera %s: new session %r is dated %.1f s before the last frame of session %r, "
                                "which was ahead of this host's clock; tracking restarts at its time",
                                a.camera, f.session, a.last_ts - f.capture_ts, a.session)
                    own.events += a.restart_clock(f)
                    own.dirty = True
                else:
                    own.buffer.pop(0)  # a straggler of an ended session: its moment has passed
                    own.acks.append(p.entry_id)
                    metrics.FRAMES.labels(stage="analytics", outcome="late").inc()
                    if f.session not in own.late_sessions and len(own.late_sessions) < 1000:
                        own.late_sessions.add(f.session)
                        log.warning("camera %s: dropping late frames of session %r (seq %d dated %.3f, at or "
                                    "before the last analysed frame)", a.camera, f.session, f.seq, f.capture_ts)
                    continue
            in_order = same and f.seq == a.last_seq + 1
            waited = now - p.arrived >= self.s.reorder_wait_s or len(own.buffer) > self.s.max_buffer
            if not (in_order or waited):
                break
            if same and f.seq > a.last_seq + 1:
                a.skipped_frames += f.seq - a.last_seq - 1
            own.buffer.pop(0)
            own.events += a.process(f)
            own.acks.append(p.entry_id)
            own.dirty = True
            metrics.FRAMES.labels(stage="analytics", outcome="processed").inc()

    def _commit(self, cid: str, own: Owned) -> None:
        owner_key = self.keys.analytics_owner(cid)
        events, acks = own.events, own.acks
        counts = own.analytics.counts().to_fields() if own.dirty else None
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(owner_key)
                if pipe.get(owner_key) not in (self.s.consumer, self.s.consumer.encode()):
                    raise redis.WatchError("lease lost")
                pipe.multi()
                for ev in events:
                    pipe.xadd(self.keys.events_stream(cid), ev.to_fields(),
                              minid=self.trimmer.minid(events_target(self.keys, cid)), approximate=True)
                if counts is not None:
                    pipe.delete(self.keys.counts(cid))
                    pipe.hset(self.keys.counts(cid), mapping=counts)
                    write_minutes(pipe, self.keys, cid, own.analytics.agg.take_changed(),
                                  self.cfg.analytics.history_days)
                    try:
                        pipe.set(self.keys.analytics_state(cid), dump_checkpoint(own.analytics))
                    except CheckpointError as e:  # inputs are bounded so that this does not happen
                        metrics.ANALYTICS_CHECKPOINTS.labels(outcome="unwritable").inc()
                        log.error("%s; keeping the previous checkpoint", e)
                results = pipe.execute()
            except redis.WatchError:
                log.warning("camera %s: lease lost before commit; another instance takes over", cid)
                self.owned.pop(cid, None)
                return
        if acks:
            self.r.xack(self.keys.detections_stream(cid), self.keys.ANALYTICS_GROUP, *acks)
        own.events, own.acks, own.dirty = [], [], False
        export_commit(cid, events, own.analytics)  # committed: counted once (split_infer/analytics/exported.py)
        for ev, entry_id in zip(events, results, strict=False):  # results: the events' ids, then the rest
            eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            self.r.publish(self.keys.live_events, ev.to_json(eid))
        if self.mqtt is not None and (events or counts):
            self.mqtt.publish(cid, events, own.analytics)

    # ------------------------------------------------------------------ loop

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.probe.beat()
            try:
                self.step()
                metrics.REDIS_UP.labels(service="analytics").set(1)
                self.probe.set_ready(True)
            except (redis.ConnectionError, redis.TimeoutError) as e:
                # In-memory state may be ahead of the checkpoint: forget it all, reload when Redis is back.
                metrics.REDIS_UP.labels(service="analytics").set(0)
                self.probe.set_ready(False, f"Redis unreachable ({type(e).__name__})")
                log.error("redis unreachable (%s); retrying in 1 s", e)
                self.owned.clear()
                stop.wait(1.0)
            except redis.ResponseError as e:
                if not str(e).startswith(("NOGROUP", "UNBLOCKED")):  # UNBLOCKED: deleted during a blocking read
                    raise
                # A detection stream was deleted under us: take the cameras again (recreates the group).
                log.warning("a detection stream or its group vanished (%s); re-taking the cameras", e)
                self.owned.clear()


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer analytics", "Tracking, line and zone counts over the detection streams "
                        "(docs/analytics.md).", argv, _add_arguments, _run,
                        config_help="cloud YAML (CloudConfig: cameras with lines and zones)")


def _add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--redis-url", help="redis://host:port/db (default from config)")
    ap.add_argument("--consumer", default=f"analytics-{socket.gethostname()}",
                    help="consumer and lease name; keep it stable across restarts, unique per live instance")
    ap.add_argument("--reorder-wait", type=float, default=1.0, help="seconds to wait for a missing seq")
    ap.add_argument("--max-future", type=float, default=300.0,
                    help="reject records whose capture_ts is more than this many seconds ahead of this host's clock")
    ap.add_argument("--no-discover", action="store_true", help="only the cameras in the config")
    ap.add_argument("--metrics-port", type=int, default=0,
                    help="serve /metrics, /healthz and /readyz here (0: off; 9102 in the examples)")
    ap.add_argument("--metrics-addr", default="127.0.0.1", help="address the /metrics server binds")
    ap.add_argument("--mqtt", help="publish events to this MQTT broker, host[:port], with the config's `mqtt` "
                    "credentials, TLS and layout (default: the config's broker; docs/analytics.md)")
    ap.add_argument("--mqtt-prefix", help="MQTT topic prefix (default: the config's, else split-infer)")
    ap.add_argument("--mqtt-insecure", action="store_true", help="plaintext MQTT (as mqtt.tls.insecure: true)")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    # --redis-url goes through the config, so the password from its file or the environment is added.
    cfg = with_mqtt_overrides(load_config(args.config, CloudConfig, {"redis_url": args.redis_url}), args)
    r = connect(cfg.redis_url)  # one server or a cluster, as the URL says
    mqtt = None
    if cfg.mqtt is not None:
        from split_infer.analytics.mqtt import MqttError, MqttPublisher  # paho-mqtt, needed only with MQTT

        try:
            mqtt = MqttPublisher(cfg.mqtt, client_id=args.consumer)
        except MqttError as e:
            raise ConfigError(f"mqtt: {e}") from None
    service = AnalyticsService(r, cfg, Settings(consumer=args.consumer, reorder_wait_s=args.reorder_wait,
                                                discover=not args.no_discover, max_future_s=args.max_future), mqtt=mqtt)
    metrics.set_build_info(cfg.model.name, None)  # analytics reads records: no feature codec
    metrics.start_metrics_server(args.metrics_port, args.metrics_addr, live=service.probe.live,
                                 ready=service.probe.ready)
    log.info("analytics %s on %s", args.consumer, redact_url(cfg.redis_url))
    service.run(stop)
    if mqtt is not None:
        mqtt.close()
    return 0


def with_mqtt_overrides(cfg: CloudConfig, args: argparse.Namespace) -> CloudConfig:
    """`cfg` with --mqtt host[:port], --mqtt-prefix and --mqtt-insecure over its `mqtt` section
    (which --mqtt creates when the config has none)."""
    if not args.mqtt and cfg.mqtt is None:
        if args.mqtt_prefix or args.mqtt_insecure:
            raise ConfigError("--mqtt-prefix and --mqtt-insecure need --mqtt or an mqtt section in the config")
        return cfg
    section: dict[str, Any] = cfg.mqtt.model_dump(exclude_unset=True, exclude={"password_file"}) if cfg.mqtt else {}
    if cfg.mqtt is not None and cfg.mqtt.password:
        section["password"] = cfg.mqtt.password  # read from its file or the environment already
    if args.mqtt:
        host, sep, port = args.mqtt.rpartition(":")
        section.update({"host": host, "port": port} if sep else {"host": args.mqtt})
    if args.mqtt_prefix:
        section["prefix"] = args.mqtt_prefix
    if args.mqtt_insecure:
        section["tls"] = {"insecure": True}
    return load_config(None, CloudConfig, {**cfg.model_dump(exclude={"mqtt", "redis_password_file"}), "mqtt": section})
