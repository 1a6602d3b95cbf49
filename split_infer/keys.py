"""Redis key layout, in one place, for every service that reads or writes Redis.

Streams hold the data; hashes hold the latest state; pub/sub carries live updates.
Every key starts with PREFIX (env SPLIT_INFER_PREFIX, or `set_prefix`), so tests and several
deployments can share one Redis. Read constants as `keys.CAMERAS_SET` (not `from keys import`)
so that a changed prefix is seen.
"""

import os

PREFIX = os.environ.get("SPLIT_INFER_PREFIX", "si")

# Feature frames from the ingest, one stream per camera, read by the workers' consumer group.
# Entries are self-contained (no codec state needed): fields `camera`, `session`, `seq`,
# `capture_ts`, `sent_ts`, `ingest_ts`, `width`, `height`, `payload` (codec wire format),
# `timings` (JSON of edge stage ms), `dropped_before`. Workers XACK and XDEL an entry once its
# detections are written, so XLEN is the queue depth (unread + in flight).
def frames_stream(camera: str) -> str:
    return f"{PREFIX}:frames:{camera}"


FRAMES_GROUP = "workers"

# Detection records, one stream per camera; entries carry fields `camera`, `session`, `seq`, `capture_ts`,
# `done_ts`, `width`, `height` and `detections` (JSON list of {class_id, class_name, score, box}).
def detections_stream(camera: str) -> str:
    return f"{PREFIX}:detections:{camera}"


# Idempotence: one short-lived key per (camera, session, seq) already written (SET NX EX), so a
# redelivered frame adds nothing and memory stays bounded by the TTL.
def done_key(camera: str, session: str, seq: int) -> str:
    return f"{PREFIX}:done:{camera}:{session}:{seq}"


# Frames a worker could not process (corrupt payload, poison frame), with the reason.
DEAD_LETTER = f"{PREFIX}:deadletter"

# Frames the batching policy shed (could no longer meet the latency objective): fields `camera`,
# `session`, `seq`, `capture_ts`, `reason`. Each frame ends as one detection record or one of these.
DROPPED = f"{PREFIX}:dropped"


ANALYTICS_GROUP = "analytics"

# Live detections and analytics events for dashboards (pub/sub channels).
LIVE_DETECTIONS = f"{PREFIX}:live:detections"
LIVE_EVENTS = f"{PREFIX}:live:events"

# Per-camera state hash written by the ingest (online, fps, bytes, last frame time...).
def camera_state(camera: str) -> str:
    return f"{PREFIX}:camera:{camera}"


CAMERAS_SET = f"{PREFIX}:cameras"

# Latest JPEG thumbnail per camera (bytes), sent by the edge now and then.
def snapshot_key(camera: str) -> str:
    return f"{PREFIX}:snapshot:{camera}"


# Analytics output.
def events_stream(camera: str) -> str:
    return f"{PREFIX}:events:{camera}"


def counts_key(camera: str) -> str:
    return f"{PREFIX}:counts:{camera}"


def set_prefix(prefix: str) -> None:
    """Move every key to another namespace; the module-level names below follow it."""
    global PREFIX, LIVE_DETECTIONS, LIVE_EVENTS, CAMERAS_SET, DEAD_LETTER, DROPPED
    PREFIX = prefix
    DEAD_LETTER = f"{PREFIX}:deadletter"
    DROPPED = f"{PREFIX}:dropped"
    LIVE_DETECTIONS = f"{PREFIX}:live:detections"
    LIVE_EVENTS = f"{PREFIX}:live:events"
    CAMERAS_SET = f"{PREFIX}:cameras"


# Analytics bookkeeping (docs/analytics.md): the per-camera checkpoint that makes a restart
# resume exactly (tracker, line sides, zone occupants, aggregates, last seq), and the lease that
# gives one analytics instance at a time a camera (tracking needs every frame in one process).
def analytics_state_key(camera: str) -> str:
    return f"{PREFIX}:analytics:state:{camera}"


def analytics_owner_key(camera: str) -> str:
    return f"{PREFIX}:analytics:owner:{camera}"
