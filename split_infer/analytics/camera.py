"""The analytics of one camera: ByteTrack over its detection frames, then lines, zones, aggregates.

Pure and deterministic (no Redis, no clock: times are the frames' capture times), so the service
can checkpoint it (`to_state`, plain JSON: split_infer/analytics/checkpoint.py) and a replay gives
the same events.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

from split_infer.analytics.aggregates import VEHICLES, Aggregates
from split_infer.analytics.frames import DetectionFrame
from split_infer.analytics.geometry import Point, anchor
from split_infer.analytics.lines import LineCounter
from split_infer.analytics.state import StateError, StateReader
from split_infer.analytics.tracker_state import tracker_from_state, tracker_to_state
from split_infer.analytics.zones import Zone
from split_infer.config import TRAFFIC_CLASSES, CameraConfig
from split_infer.records import AnalyticsCounts, AnalyticsEvent, MinuteTally, ZoneTally

CLASS_INDEX = {name: i for i, name in enumerate(TRAFFIC_CLASSES)}
PAST_SESSIONS = 16  # sessions remembered as ended: their stragglers are late, not a new session
MAX_TRACKS = 10_000


@dataclass(frozen=True)
class TrackerSettings:
    """ByteTrack settings tuned for YOLOv5 scores on ~10 fps street video (see tests/test_analytics_video.py)."""

    track_activation_threshold: float = 0.3  # a new track needs a detection at least this sure
    high_conf_det_threshold: float = 0.4  # first-stage association; lower ones only revive tracks
    minimum_iou_threshold: float = 0.1
    minimum_consecutive_frames: int = 2  # frames before a track gets an id (drops one-frame ghosts)
    lost_track_buffer: int = 30  # in 30 fps frames: 1 s of capture time
    frame_rate: float = 10.0
    track_ttl_s: float = 2.0  # our own memory of a track outlives the tracker's by a margin
    min_score: float = 0.1  # detections below are not given to the tracker

    def make_tracker(self) -> ByteTrackTracker:
        return ByteTrackTracker(
            lost_track_buffer=self.lost_track_buffer,
            frame_rate=self.frame_rate,
            track_activation_threshold=self.track_activation_threshold,
            minimum_consecutive_frames=self.minimum_consecutive_frames,
            minimum_iou_threshold=self.minimum_iou_threshold,
            high_conf_det_threshold=self.high_conf_det_threshold,
        )


@dataclass
class Track:
    first_ts: float
    last_ts: float
    anchor: Point
    votes: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # class -> summed score
    speed: float | None = None  # anchor motion in box heights per second, smoothed
    moved: bool = False  # has it ever been a box height away from where it was first seen? (parked: no)
    origin: Point | None = None

    @property
    def class_name(self) -> str:
        return max(self.votes, key=self.votes.__getitem__)  # the first of equals, as Counter.most_common

    def to_state(self, track_id: int) -> dict[str, Any]:
        return {"id": track_id, "first_ts": self.first_ts, "last_ts": self.last_ts, "anchor": list(self.anchor),
                "votes": [[c, v] for c, v in self.votes.items()], "speed": self.speed, "moved": self.moved,
                "origin": None if self.origin is None else list(self.origin)}

    @classmethod
    def from_state(cls, r: StateReader) -> Track:
        votes = r.tally("votes", whole=False)
        if not votes:
            raise StateError(f"{r.path}.votes is empty")
        return cls(first_ts=r.num("first_ts"), last_ts=r.num("last_ts"), anchor=r.point("anchor"),
                   votes=defaultdict(float, votes), speed=r.opt_num("speed"), moved=r.flag("moved"),
                   origin=r.opt_point("origin"))


class CameraAnalytics:
    def __init__(self, camera: CameraConfig | str, settings: TrackerSettings | None = None) -> None:
        cfg = camera if isinstance(camera, CameraConfig) else CameraConfig(id=camera, url="redis")
        self.camera = cfg.id
        self.settings = settings or TrackerSettings()
        self.tracker = self.settings.make_tracker()
        self.tracks: dict[int, Track] = {}
        self.lines: dict[str, LineCounter] = {}
        self.zones: dict[str, Zone] = {}
        self.agg = Aggregates()
        # Ordering bookkeeping (read and written by the service).
        self.session: str | None = None
        self.past_sessions: deque[str] = deque(maxlen=PAST_SESSIONS)  # ended, most recent last
        self.last_seq: int = -1
        self.last_ts: float = -math.inf
        self.frames = 0
        self.skipped_frames = 0
        self.rejected_records = 0
        self.apply_config(cfg)

    def apply_config(self, cfg: CameraConfig) -> None:
        """Take the camera's lines and zones; a line or zone whose geometry is unchanged keeps its counts."""
        lines = {}
        for lc in cfg.lines:
            new = LineCounter.from_config(lc, cfg.units, cfg.frame_size)
            old = self.lines.get(lc.name)
            lines[lc.name] = old if old is not None and old.geometry == new.geometry else new
        zones = {}
        for zc in cfg.zones:
            new_z = Zone.from_config(zc, cfg.units, cfg.frame_size)
            old_z = self.zones.get(zc.name)
            zones[zc.name] = old_z if old_z is not None and old_z.same_geometry(new_z) else new_z
        self.lines, self.zones = lines, zones

    # ------------------------------------------------------------------ per frame

    def process(self, frame: DetectionFrame) -> list[AnalyticsEvent]:
        """Track one frame (frames must come in capture order) and return the events it caused."""
        ts = frame.capture_ts
        events: list[AnalyticsEvent] = []
        size = (frame.width, frame.height)  # the stream's size may change: lines and zones follow
        for line in self.lines.values():
            line.resize(size)
        for zone in self.zones.values():
            zone.resize(size)
        tracked = self.tracker.update(self._to_sv(frame), timestamp=ts)
        ids = tracked.tracker_id if tracked.tracker_id is not None else np.empty(0, int)
        classes = tracked.class_id if tracked.class_id is not None else np.empty(0, int)  # set with the ids
        for i, tid in enumerate(ids):
            tid = int(tid)
            if tid < 0:
                continue  # not confirmed yet: may be a ghost
            box = tracked.xyxy[i]
            name = TRAFFIC_CLASSES[int(classes[i])]
            score = float(tracked.confidence[i]) if tracked.confidence is not None else 1.0
            events += self._observe(frame, tid, box, name, score)
        events += self._expire(frame)
        self._congestion(ts)
        self.frames += 1
        if self.session is not None and frame.session != self.session:
            self.past_sessions.append(self.session)
        self.session, self.last_seq, self.last_ts = frame.session, frame.seq, ts
        return events

    def restart_clock(self, frame: DetectionFrame) -> list[AnalyticsEvent]:
        """A new session dated before the last frame (its predecessor's clock ran ahead): end every
        track (zone stays close as lost), so tracking and the rolling figures start again at its time."""
        events: list[AnalyticsEvent] = []
        for tid in list(self.tracks):
            events += self._close(tid, frame)
        next_id = self.tracker._next_track_id
        self.tracker = self.settings.make_tracker()
        self.tracker._next_track_id = next_id  # track ids stay unique in the events
        self.agg.restart_clock(frame.capture_ts)
        self.last_ts = -math.inf
        return events

    def _to_sv(self, frame: DetectionFrame) -> sv.Detections:
        dets = [d for d in frame.detections if d.class_name in CLASS_INDEX and d.score >= self.settings.min_score]
        if not dets:
            return sv.Detections.empty()
        return sv.Detections(
            xyxy=np.array([d.box for d in dets], dtype=float),
            confidence=np.array([d.score for d in dets], dtype=float),
            class_id=np.array([CLASS_INDEX[d.class_name] for d in dets], dtype=int),
        )

    def _observe(self, frame: DetectionFrame, tid: int, box: np.ndarray, name: str,
                 score: float) -> list[AnalyticsEvent]:
        ts, p = frame.capture_ts, anchor(box)
        track = self.tracks.get(tid)
        if track is None:
            track = self.tracks[tid] = Track(first_ts=ts, last_ts=ts, anchor=p, origin=p)
            track.votes[name] += score
            self.agg.new_track(ts, track.class_name)
        else:
            dt = ts - track.last_ts
            if dt > 0:
                height = max(1.0, float(box[3] - box[1]))
                v = math.dist(p, track.anchor) / dt / height
                alpha = 1.0 - math.exp(-dt / 1.0)  # ~1 s smoothing
                track.speed = v if track.speed is None else track.speed + alpha * (v - track.speed)
            track.votes[name] += score
            track.last_ts, track.anchor = ts, p
            if not track.moved and math.dist(p, track.origin or p) >= max(1.0, float(box[3] - box[1])):
                track.moved = True
        cls = track.class_name
        out: list[AnalyticsEvent] = []
        for line in self.lines.values():
            direction = line.update(tid, cls, p)
            if direction is not None:
                self.agg.crossing(ts, cls, line.name, direction)
                out.append(AnalyticsEvent("line_cross", self.camera, frame.seq, ts, tid, cls, line=line.name,
                                          direction=direction))
        for zone in self.zones.values():
            change = zone.update(tid, cls, p, ts)
            if change is not None:
                kind, dwell = change
                out.append(AnalyticsEvent("zone_enter" if kind == "enter" else "zone_exit", self.camera, frame.seq, ts,
                                          tid, cls, zone=zone.name, dwell_s=dwell,
                                          reason="left" if kind == "exit" else None))
        return out

    def _expire(self, frame: DetectionFrame) -> list[AnalyticsEvent]:
        """Forget tracks unseen for track_ttl_s; close their zone stays as 'lost'."""
        ts, out = frame.capture_ts, []
        for tid in [t for t, tr in self.tracks.items() if ts - tr.last_ts > self.settings.track_ttl_s]:
            out += self._close(tid, frame)
        return out

    def _close(self, tid: int, frame: DetectionFrame) -> list[AnalyticsEvent]:
        track, out = self.tracks.pop(tid), []
        for line in self.lines.values():
            line.forget(tid)
        for zone in self.zones.values():
            dwell = zone.leave(tid, track.last_ts)
            if dwell is not None:
                out.append(AnalyticsEvent("zone_exit", self.camera, frame.seq, frame.capture_ts, tid,
                                          track.class_name, zone=zone.name, dwell_s=dwell, reason="lost"))
        return out

    def _congestion(self, ts: float) -> None:
        speeds = []
        for tr in self.tracks.values():
            if tr.last_ts != ts or tr.class_name not in VEHICLES or tr.speed is None or not tr.moved:
                continue  # only vehicles in this frame, with a measured speed, that are not parked
            if self.zones and not any(z.contains(tr.anchor) for z in self.zones.values()):
                continue
            speeds.append(tr.speed)
        self.agg.congestion(ts, speeds)

    # ------------------------------------------------------------------ checkpoint

    def to_state(self) -> dict[str, Any]:
        """Every piece of running state as plain JSON values (docs/analytics.md, "Checkpoint format")."""
        return {"camera": self.camera, "session": self.session, "past_sessions": list(self.past_sessions),
                "last_seq": self.last_seq, "last_ts": self.last_ts if math.isfinite(self.last_ts) else None,
                "frames": self.frames, "skipped_frames": self.skipped_frames,
                "rejected_records": self.rejected_records, "tracker": tracker_to_state(self.tracker),
                "tracks": [tr.to_state(tid) for tid, tr in self.tracks.items()],
                "lines": [line.to_state() for line in self.lines.values()],
                "zones": [zone.to_state() for zone in self.zones.values()], "aggregates": self.agg.to_state()}

    @classmethod
    def from_state(cls, state: object, camera: CameraConfig,
                   settings: TrackerSettings | None = None) -> CameraAnalytics:
        """The analytics `to_state` gave, with the camera's lines and zones of now (a line or zone whose
        geometry changed starts afresh). StateError for anything that is not such a state."""
        r = StateReader(state, "analytics")
        if r.text("camera") != camera.id:
            raise StateError(f"the checkpoint is of camera {r.text('camera')!r}, not {camera.id!r}")
        a = cls(camera, settings)
        a.session, a.last_seq = r.opt_text("session"), r.whole("last_seq", -1)
        a.past_sessions.extend(r.texts("past_sessions", PAST_SESSIONS))
        last_ts = r.opt_num("last_ts")
        a.last_ts = -math.inf if last_ts is None else last_ts
        a.frames, a.skipped_frames = r.whole("frames", 0), r.whole("skipped_frames", 0)
        a.rejected_records = r.whole("rejected_records", 0)
        a.tracker = tracker_from_state(a.settings.make_tracker(), r.obj_at("tracker"))
        for t in r.objects("tracks", MAX_TRACKS):
            tid = t.whole("id", 0)
            if tid in a.tracks:
                raise StateError(f"{t.path}: track {tid} appears twice")
            a.tracks[tid] = Track.from_state(t)
        a.lines = {line.name: line for line in map(LineCounter.from_state, r.objects("lines", 1000))}
        a.zones = {zone.name: zone for zone in map(Zone.from_state, r.objects("zones", 1000))}
        a.agg = Aggregates.from_state(r.obj_at("aggregates"))
        a.apply_config(camera)
        return a

    # ------------------------------------------------------------------ output

    def counts(self) -> AnalyticsCounts:
        """The counts hash (field layout: docs/analytics.md)."""
        now = self.last_ts if math.isfinite(self.last_ts) else 0.0
        lines = {line.name: {d: {cls: line.counts[d][cls] for cls in sorted(line.classes)} for d in ("in", "out")}
                 for line in self.lines.values()}
        zones = {}
        for zone in self.zones.values():
            classes, occ, dmax = sorted(zone.classes), zone.occupancy(), zone.dwell_max(now)
            zones[zone.name] = ZoneTally(
                occupancy={c: occ[c] for c in classes}, entries={c: zone.entries[c] for c in classes},
                exits={c: zone.exits[c] for c in classes}, dwell_s={c: zone.dwell_total.get(c, 0.0) for c in classes},
                dwell_max_s={c: dmax.get(c, 0.0) for c in classes})
        basis = "crossings" if self.lines else "tracks"
        per_min = self.agg.per_minute(now, basis)
        tracks_now = Counter(tr.class_name for tr in self.tracks.values() if tr.last_ts == now)
        return AnalyticsCounts(
            updated_ts=now, seq=self.last_seq, frames=self.frames, skipped_frames=self.skipped_frames,
            rejected_records=self.rejected_records, congestion=self.agg.level, congestion_score=self.agg.score,
            vehicles=self.agg.vehicles, median_speed=self.agg.median_speed, lines=lines, zones=zones,
            per_minute_basis=basis, per_minute={c: per_min[c] for c in TRAFFIC_CLASSES},
            tracks={c: tracks_now[c] for c in TRAFFIC_CLASSES},
            per_minute_history=tuple(MinuteTally(**m) for m in self.agg.history()))
