"""Redis key layout, in one place, for every service that reads or writes Redis.

Streams hold the data; hashes hold the latest state; pub/sub carries live updates. Every key
starts with a prefix, so tests and several deployments can share one Redis: each service is
given a `Keys(prefix)`, by default `Keys.from_env()` (env SPLIT_INFER_PREFIX, else "si").
What each entry and hash holds, field by field: split_infer/records.py.

Redis Cluster: every key of one camera carries the hash tag `{camera}` (`si:frames:{cam-1}`), so
a camera's keys share one hash slot and each per-frame script or transaction touches one slot.
Only `cameras` (a set) and the two pub/sub channels are global. Table: docs/redis.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import ClassVar

PREFIX_ENV = "SPLIT_INFER_PREFIX"
DEFAULT_PREFIX = "si"

# Camera ids and edge sessions become parts of Redis keys (after a ':') and of URL paths, so
# they are ASCII letters, digits and '_.-' only (no ':' or '/'), checked the same everywhere.
_ID_CHARS = "A-Za-z0-9_.-"
CAMERA_ID_PATTERN = rf"^[{_ID_CHARS}]{{1,64}}$"
SESSION_PATTERN = rf"^[{_ID_CHARS}]{{0,64}}$"


def valid_camera_id(camera: str) -> bool:
    return re.fullmatch(CAMERA_ID_PATTERN, camera) is not None


def valid_session(session: str) -> bool:
    return re.fullmatch(SESSION_PATTERN, session) is not None


def camera_tag(camera: str) -> str:
    """The hash tag of a camera's keys: Redis Cluster hashes only what is between the braces."""
    return "{" + camera + "}"


@dataclass(frozen=True)
class Keys:
    """The keys of one deployment (one prefix)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            # A brace in the prefix would become the hash tag and put every camera in one slot.
            raise ValueError(f"key prefix {self.prefix!r} must be non-empty and hold no '{{' or '}}'")

    # Consumer groups: the workers on each frames stream, the analytics on each detections stream.
    FRAMES_GROUP: ClassVar[str] = "workers"
    ANALYTICS_GROUP: ClassVar[str] = "analytics"

    @classmethod
    def from_env(cls) -> Keys:
        return cls(os.environ.get(PREFIX_ENV, DEFAULT_PREFIX))

    @staticmethod
    def camera_of(key: str) -> str:
        """The camera a per-camera key belongs to (its hash tag); '' for a global key."""
        start = key.find("{")
        end = key.find("}", start + 1)
        return key[start + 1:end] if start >= 0 and end > start else ""

    @property
    def scan_pattern(self) -> str:
        """SCAN MATCH pattern for every key of this prefix (clean-up of a test or benchmark)."""
        return f"{self.prefix}:*"

    def frames_stream(self, camera: str) -> str:
        """Queued frames (records.QueuedFrame), read by the workers' group. Workers XACK and XDEL an
        entry once its detections are written, so XLEN is the queue depth (unread + in flight)."""
        return f"{self.prefix}:frames:{camera_tag(camera)}"

    def detections_stream(self, camera: str) -> str:
        """Detection records (records.DetectionResult), one per frame."""
        return f"{self.prefix}:detections:{camera_tag(camera)}"

    def done_key(self, camera: str, session: str, seq: int) -> str:
        """Idempotence: one short-lived key per (camera, session, seq) already written (SET NX EX),
        so a redelivered frame adds nothing and memory stays bounded by the TTL."""
        return f"{self.prefix}:done:{camera_tag(camera)}:{session}:{seq}"

    def dead_letter_stream(self, camera: str) -> str:
        """Frames of `camera` a worker could not process (records.DeadLetter). Per camera, not one
        global stream: the worker writes it in the same atomic step that acknowledges the frame,
        which on a cluster must stay in the camera's slot."""
        return f"{self.prefix}:deadletter:{camera_tag(camera)}"

    def dropped_stream(self, camera: str) -> str:
        """Frames of `camera` the batching policy shed (records.ShedRecord). Each frame ends as one
        detection record, one of these, or one dead letter, written by one single-slot script."""
        return f"{self.prefix}:dropped:{camera_tag(camera)}"

    @property
    def live_detections(self) -> str:
        """Pub/sub channel: each detection record as JSON (records.DetectionResult.to_live_json)."""
        return f"{self.prefix}:live:detections"

    @property
    def live_events(self) -> str:
        """Pub/sub channel: each analytics event as JSON (records.AnalyticsEvent.to_json)."""
        return f"{self.prefix}:live:events"

    def camera_state(self, camera: str) -> str:
        """Hash written by the ingest (records.CameraStatus)."""
        return f"{self.prefix}:camera:{camera_tag(camera)}"

    @property
    def cameras(self) -> str:
        """Set of every camera id the ingest has seen."""
        return f"{self.prefix}:cameras"

    def snapshot(self, camera: str) -> str:
        """Latest JPEG thumbnail of a camera (bytes), sent by the edge now and then."""
        return f"{self.prefix}:snapshot:{camera_tag(camera)}"

    def snapshot_frame(self, camera: str) -> str:
        """Hash naming the frame the latest snapshot shows (records.snapshot.SnapshotFrame: session,
        seq, the JPEG's digest), so the dashboard draws that frame's boxes on it."""
        return f"{self.prefix}:snapframe:{camera_tag(camera)}"

    def scene(self, camera: str) -> str:
        """JSON of the camera's configured lines and zones, written by analytics for the dashboard."""
        return f"{self.prefix}:scene:{camera_tag(camera)}"

    def history(self, camera: str, day: str) -> str:
        """Hash of one UTC day (YYYYMMDD) of per-minute counts: minute start -> JSON bucket
        (split_infer/analytics/history.py); expires `analytics.history_days` after the day."""
        return f"{self.prefix}:history:{camera_tag(camera)}:{day}"

    def events_stream(self, camera: str) -> str:
        """Analytics events (records.AnalyticsEvent)."""
        return f"{self.prefix}:events:{camera_tag(camera)}"

    def counts(self, camera: str) -> str:
        """Hash of the analytics aggregates (records.AnalyticsCounts)."""
        return f"{self.prefix}:counts:{camera_tag(camera)}"

    def analytics_state(self, camera: str) -> str:
        """The analytics checkpoint that makes a restart resume exactly (docs/analytics.md)."""
        return f"{self.prefix}:analytics:state:{camera_tag(camera)}"

    def analytics_owner(self, camera: str) -> str:
        """The lease that gives one analytics instance at a time a camera (tracking needs every
        frame in one process)."""
        return f"{self.prefix}:analytics:owner:{camera_tag(camera)}"
