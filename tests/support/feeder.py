"""Writes to Redis what the ingest, the workers and analytics write, for the API and dashboard tests.

- camera state hash and snapshot JPEG as split_infer/cloud/ingest.py writes them; the snapshots
  are real frames of the street video;
- detection records with the worker's fields (split_infer/cloud/worker.py): boxes that move
  along the road, so the dashboard has something to draw;
- events and the counts hash made by the real analytics core (`CameraAnalytics`: ByteTrack,
  counting line, zone) from those records, encoded as its service writes them (docs/analytics.md).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import redis

from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.frames import parse_record
from split_infer.analytics.history import write_minutes
from split_infer.analytics.scene import scene_json
from split_infer.config import CameraConfig, LineConfig, ZoneConfig
from split_infer.keys import Keys
from split_infer.records.snapshot import SnapshotFrame, jpeg_digest
from support.data import street_video

W, H = 640, 360
SIZES = {"person": (18, 42), "bicycle": (26, 32), "motorcycle": (28, 32), "bus": (130, 85), "truck": (105, 72),
         "car": (64, 42)}
CLASSES = ("car", "car", "car", "car", "person", "truck", "bus", "motorcycle", "bicycle")


def video_frames(n: int, step: int = 61) -> list[np.ndarray]:
    """n frames spread over the street video (fails clearly when the video is missing)."""
    video = street_video()
    cap = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    i = 0
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            if i == 0:
                raise RuntimeError(f"cannot decode {video}")
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        if i % step == 0:
            frames.append(f)
        i += 1
    cap.release()
    return frames


def thumbnail(frame: np.ndarray, width: int = 320) -> bytes:
    h = round(frame.shape[0] * width / frame.shape[1])
    ok, buf = cv2.imencode(".jpg", cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA),
                           [cv2.IMWRITE_JPEG_QUALITY, 75])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class Mover:
    cls: str
    x: float  # bottom centre
    y: float
    vx: float


@dataclass
class FakeCamera:
    id: str
    frame: np.ndarray
    rng: random.Random
    analytics: CameraAnalytics
    seq: int = 0
    last_capture: float = 0.0
    frames: int = 0
    bytes: int = 0
    movers: list[Mover] = field(default_factory=list)


def camera_config(cam_id: str) -> CameraConfig:
    """A counting line across the road (top to bottom: `in` = left to right) and a zone on the right."""
    return CameraConfig(
        id=cam_id, url="feeder",
        lines=[LineConfig(name="road", a=(W / 2, 120), b=(W / 2, H))],
        zones=[ZoneConfig(name="kerb", polygon=[(420, 200), (640, 200), (640, 360), (420, 360)])],
    )


class Feeder:
    """One `step()` = one frame per live camera: state, detections, analytics, and a snapshot now and then."""

    def __init__(self, r: redis.Redis, keys: Keys, n_cameras: int = 8, dead: tuple[str, ...] = ("cam-8",),
                 seed: int = 0, snapshot_every_s: float = 2.0):
        self.r, self.keys = r, keys
        self.snapshot_every_s = snapshot_every_s
        frames = video_frames(n_cameras)
        self.cams = [FakeCamera(f"cam-{i + 1}", frames[i], random.Random(seed + i),
                                CameraAnalytics(camera_config(f"cam-{i + 1}"))) for i in range(n_cameras)]
        self.dead = set(dead)
        self.last_snapshot = 0.0
        now = time.time()
        for cam in self.cams:
            r.sadd(self.keys.cameras, cam.id)
            r.set(self.keys.scene(cam.id), scene_json(camera_config(cam.id)))  # as analytics publishes it
            if cam.id in self.dead:  # known, with an old snapshot; its ingest marked it offline 5 min ago
                r.set(self.keys.snapshot(cam.id), thumbnail(cam.frame), ex=3600)
                r.hset(self.keys.camera_state(cam.id), mapping={
                    "online": 0, "fps": 0.0, "bytes_per_s": 0.0, "last_frame_ts": repr(now - 300.2),
                    "last_seen_ts": repr(now - 300), "last_seq": 1234, "session": "s0", "frames": 1235,
                    "bytes": 1235 * 16000, "rejected": 0, "dropped_edge": 3, "peer": ""})

    def live(self) -> list[FakeCamera]:
        return [c for c in self.cams if c.id not in self.dead]

    def step(self, now: float | None = None) -> None:
        """One frame per live camera at `now` (default: the clock; tests may replay a past stretch)."""
        now = time.time() if now is None else now
        snap = now - self.last_snapshot >= self.snapshot_every_s
        if snap:
            self.last_snapshot = now
        p = self.r.pipeline(transaction=False)
        for cam in self.live():
            self._frame(cam, p, now, snap)
        p.execute()

    def _frame(self, cam: FakeCamera, p: redis.client.Pipeline, now: float, snap: bool) -> None:
        self._move(cam)
        cam.seq += 1
        # Capture times only grow per camera, as an edge's do (tracking needs that order).
        capture = max(cam.last_capture + 1e-3, now - 0.11 - 0.06 * cam.rng.random())
        cam.last_capture = capture
        dets = []
        for m in cam.movers:
            w, h = SIZES[m.cls]
            jitter = cam.rng.uniform(-1.5, 1.5)
            dets.append({"class_id": 0, "class_name": m.cls, "score": round(0.55 + 0.4 * cam.rng.random(), 3),
                         "box": [round(m.x - w / 2 + jitter, 1), round(m.y - h, 1), round(m.x + w / 2 + jitter, 1),
                                 round(m.y, 1)]})
        # As the worker writes it.
        record = {"camera": cam.id, "session": "s1", "seq": cam.seq, "capture_ts": repr(capture),
                  "ingest_ts": repr(capture + 0.03), "done_ts": repr(now), "width": W, "height": H,
                  "detections": json.dumps(dets, separators=(",", ":")), "batch": 4, "head_ms": 21.0,
                  "worker": "feeder", "timings": "{}"}
        p.xadd(self.keys.detections_stream(cam.id), record)
        # As the analytics service writes it: its events, and the counts hash rewritten whole.
        for ev in cam.analytics.process(parse_record(record)):
            p.xadd(self.keys.events_stream(cam.id), ev.to_fields())
        p.delete(self.keys.counts(cam.id))
        p.hset(self.keys.counts(cam.id), mapping=cam.analytics.counts().to_fields())
        write_minutes(p, self.keys, cam.id, cam.analytics.agg.take_changed(), 7)
        # As the ingest writes it.
        size = 15000 + cam.rng.randrange(3000)
        cam.frames += 1
        cam.bytes += size
        p.hset(self.keys.camera_state(cam.id), mapping={
            "online": 1, "fps": round(9.5 + cam.rng.random(), 3), "bytes_per_s": round(size * 10.0, 1),
            "last_frame_ts": repr(capture), "last_seen_ts": repr(now), "last_seq": cam.seq, "session": "s1",
            "frames": cam.frames, "bytes": cam.bytes, "rejected": 0, "dropped_edge": 0, "peer": "ipv4:127.0.0.1:5000"})
        if snap:  # the thumbnail and the frame it stands for, as the ingest writes them
            jpeg = thumbnail(cam.frame)
            p.set(self.keys.snapshot(cam.id), jpeg, ex=3600)
            p.hset(self.keys.snapshot_frame(cam.id),
                   mapping=SnapshotFrame(cam.id, "s1", cam.seq, capture, jpeg_digest(jpeg), "q8-zstd").to_fields())

    def _move(self, cam: FakeCamera) -> None:
        """New objects enter from either side now and then; every object drives straight across."""
        if len(cam.movers) < 5 and cam.rng.random() < 0.12:
            right = cam.rng.random() < 0.5
            cls = cam.rng.choice(CLASSES)
            speed = 4 if cls == "person" else 8 + 6 * cam.rng.random()
            cam.movers.append(Mover(cls, 0.0 if right else float(W), 200 + 150 * cam.rng.random(),
                                    speed if right else -speed))
        for m in cam.movers:
            m.x += m.vx
        cam.movers = [m for m in cam.movers if -10 <= m.x <= W + 10]
