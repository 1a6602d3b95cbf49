"""The frames streams as one worker sees them: which to read, new entries, entries a dead worker
left pending, and how each frame ends.

A frame ends in one Lua script, atomically: SET NX its (camera, session, seq) done key; only if it
was new, XADD its record (its detections, or a shed record); then XACK and XDEL the frame. Every
key it touches is the camera's (one hash slot on a Redis Cluster); the worker publishes the live
message after the script said the record was new. A redelivered frame thus adds nothing, and a
worker killed at any point loses nothing (its pending frames are claimed after claim_idle_ms).
An entry that cannot be read, or a frame delivered `max_deliveries` times without success, goes
to the camera's dead-letter stream with the reason, acknowledged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import ClusterPipeline

from split_infer import metrics
from split_infer.config import WorkerSettings
from split_infer.keys import Keys
from split_infer.records import DeadLetter, Fields, FieldValue, QueuedFrame, RawFields, RecordError
from split_infer.retention import RetainedStream, RetentionConfig, Target, Trimmer, camera_targets, target_of
from split_infer.streams import Client, create_group, read_group

log = logging.getLogger(__name__)

# KEYS (all of one camera, so one hash slot): done key, target stream (detections, or the
# camera's dropped stream for a shed frame), frames stream. ARGV: ttl, group, entry id, minid
# (time-based retention, split_infer/retention.py),
# then the record's field/value pairs. Sent as EVAL with its body: redis-py's cluster pipeline
# refuses EVALSHA, and ~300 bytes are nothing next to a queued frame.
WRITE_ONCE = """
local fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1])
if fresh then
  redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', unpack(ARGV, 5))
end
redis.call('XACK', KEYS[3], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[3], ARGV[3])
if fresh then return 1 end
return 0
"""
CLAIM_PAGES = 100  # bounded walk of a pending list per claim round


@dataclass
class Entry:
    """A queued frame delivered to this worker and not yet ended."""

    stream: str
    id: str
    frame: QueuedFrame

    @property
    def key(self) -> tuple[str, str]:
        return (self.stream, self.id)


def _text(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class FrameStreams:
    """Reading side of the worker: entries delivered to it wait in `backlog` until the worker ends
    them (`end`, `dead_letter`)."""

    def __init__(self, r: Client, keys: Keys, settings: WorkerSettings, name: str,
                 retention: RetentionConfig | None = None) -> None:
        self.r, self.keys, self.s, self.name = r, keys, settings, name
        self.trimmer = Trimmer(r, retention)  # the trim points of the streams this worker writes
        self.cameras: dict[str, str] = {}  # frames stream -> its camera
        self.backlog: dict[tuple[str, str], Entry] = {}
        self.arrived = 0  # entries ever delivered to this worker (the policy's arrival-rate input)
        self.dead = 0
        self._next_refresh = self._next_claim = 0.0

    @property
    def streams(self) -> list[str]:
        return list(self.cameras)

    def refresh(self, force: bool = False) -> None:
        """Follow the set of cameras; the group of a new camera's stream is created if need be."""
        now = time.monotonic()
        # Between full refreshes, one O(1) SCARD per step: a camera that appeared since is read at
        # once, not up to streams_refresh_s later, when a tight latency objective would have shed
        # its first frames (the demo lost its first two per camera that way).
        if not force and now < self._next_refresh and self.r.scard(self.keys.cameras) == len(self.cameras):
            return
        self._next_refresh = now + self.s.streams_refresh_s
        cams = sorted(_text(c) for c in self.r.smembers(self.keys.cameras))
        cameras = {self.keys.frames_stream(c): c for c in cams}
        for stream in cameras:
            if force or stream not in self.cameras:
                create_group(self.r, stream, self.keys.FRAMES_GROUP)
        if cameras != self.cameras:
            log.info("reading %d camera stream(s): %s", len(cameras), ", ".join(cams))
        self.cameras = cameras
        # Retention of the streams of cameras that send nothing now (the writes trim the others).
        self.trimmer.sweep(t for c in cams for t in camera_targets(self.keys, c))

    def forget_refresh(self) -> None:
        """Look at the cameras again at the next refresh (after an outage)."""
        self._next_refresh = 0.0

    def claim_stale(self, force: bool = False) -> int:
        """Take over entries pending longer than claim_idle_ms (their worker is presumed dead)."""
        now = time.monotonic()
        if not force and now < self._next_claim:
            return 0
        self._next_claim = now + self.s.claim_interval_s
        claimed = sum(self._claim(stream) for stream in self.streams)
        if claimed:
            log.warning("claimed %d frame(s) left pending by a dead or stuck worker", claimed)
            metrics.FRAMES.labels("worker", "claimed").inc(claimed)
        return claimed

    def _claim(self, stream: str) -> int:
        claimed, start = 0, "0-0"
        for _ in range(CLAIM_PAGES):
            reply: Any = self.r.xautoclaim(stream, self.keys.FRAMES_GROUP, self.name, self.s.claim_idle_ms, start,
                                           count=64)
            nxt, entries, _deleted = reply
            counts = self._delivery_counts(stream, [_text(i) for i, _ in entries]) if entries else {}
            for eid, fields in entries:
                eid = _text(eid)
                if (stream, eid) in self.backlog:
                    continue  # ours, only waiting for the policy: not a dead worker's
                if counts.get(eid, 0) > self.s.max_deliveries:
                    self.dead_letter(stream, eid, fields or {},
                                     f"delivered {counts[eid]} times without success (poison frame?)")
                elif fields:
                    claimed += self._admit(stream, eid, fields)
            start = _text(nxt)
            if start == "0-0":
                break
        return claimed

    def _delivery_counts(self, stream: str, ids: list[str]) -> dict[str, int]:
        pend: Any = self.r.xpending_range(stream, self.keys.FRAMES_GROUP, min=ids[0], max=ids[-1], count=len(ids) + 64)
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pend}

    def read_new(self, want: int, block_ms: int | None) -> None:
        """Read up to `want` new frames (XREADGROUP counts per stream: the surplus waits in the backlog)."""
        if not self.cameras or want <= 0:
            if block_ms:
                time.sleep(block_ms / 1000)
            return
        resp = read_group(self.r, self.keys.FRAMES_GROUP, self.name, {s: ">" for s in self.cameras}, want, block_ms)
        for stream, entries in resp:
            for eid, fields in entries:
                self.arrived += 1
                self._admit(_text(stream), _text(eid), fields or {})

    def _admit(self, stream: str, eid: str, fields: RawFields) -> int:
        """Into the backlog (1), or to the dead letters when the entry is not a queued frame (0)."""
        try:
            frame = QueuedFrame.from_fields(fields)
        except RecordError as e:
            self.dead_letter(stream, eid, fields, f"undecodable frame: {e}")
            return 0
        self.backlog[(stream, eid)] = Entry(stream, eid, frame)
        return 1

    def queue_depths(self) -> dict[str, int]:
        """XLEN per camera stream (queued + in flight), exported as splitinfer_queue_depth_frames: the
        worker owns that gauge, as the one process that polls every stream all the time (docs/metrics.md)."""
        pipe = self.r.pipeline(transaction=False)
        for stream in self.cameras:
            pipe.xlen(stream)
        depths = dict(zip(self.cameras, pipe.execute(), strict=True))
        for stream, depth in depths.items():
            metrics.QUEUE_DEPTH.labels(self.cameras[stream]).set(depth)
        return depths

    def dead_letter(self, stream: str, eid: str, fields: RawFields, reason: str) -> None:
        """An entry that may not even be a queued frame."""
        camera = self.cameras.get(stream) or self.keys.camera_of(stream)
        self._send(DeadLetter.of_entry(stream, eid, camera, fields, reason, self.name, time.time()))

    def dead_letter_frame(self, e: Entry, reason: str) -> None:
        self._send(DeadLetter.of_frame(e.stream, e.id, e.frame, reason, self.name, time.time()))

    def _send(self, letter: DeadLetter) -> None:
        log.error("dead-lettering %s %s (camera %s seq %s): %s", letter.stream, letter.id, letter.camera,
                  letter.seq, letter.reason)
        pipe = self.r.pipeline(transaction=True)  # the camera's keys only: one slot on a cluster
        dead = Target(self.keys.dead_letter_stream(letter.camera), RetainedStream.DEAD_LETTERS)
        pipe.xadd(dead.stream, letter.to_fields(), minid=self.trimmer.minid(dead), approximate=True)
        pipe.xack(letter.stream, self.keys.FRAMES_GROUP, letter.id)
        pipe.xdel(letter.stream, letter.id)
        pipe.execute()
        self.backlog.pop((letter.stream, letter.id), None)
        self.dead += 1
        metrics.FRAMES.labels("worker", "dead_letter").inc()

    def end(self, e: Entry, target: str, record: Fields, pipe: redis.client.Pipeline | ClusterPipeline) -> None:
        """Queue on `pipe` the script that ends `e`: `record` into `target` (a stream of the frame's
        camera) once; its result is 1, or 0 for a frame already ended."""
        f = e.frame
        minid = self.trimmer.minid(target_of(self.keys, f.camera, target))
        argv: list[FieldValue] = [self.s.done_ttl_s, self.keys.FRAMES_GROUP, e.id, minid]
        for name, value in record.items():
            argv += [name, value]
        pipe.execute_command("EVAL", WRITE_ONCE, 3, self.keys.done_key(f.camera, f.session, f.seq), target, e.stream,
                             *argv)
