"""ByteTrack's running state as checkpoint JSON, and back (docs/analytics.md, "Checkpoint format").

What a `trackers.ByteTrackTracker` (trackers 2.6) changes while it runs, read from its source:
the tracker's `tracks`, `_next_track_id` and `_last_timestamp`; per tracklet `tracker_id`, `age`,
`time_since_update`, `time_since_update_seconds` and `number_of_successful_consecutive_updates`;
per tracklet its Kalman filter (`state_estimator.get_state()`: state, covariance, transition,
observation, process and measurement noise). Everything else (thresholds, budgets, the IoU
metric, the motion model's one-frame noise) follows from the settings and is rebuilt by making a
new tracker, so the restored tracker continues exactly as the original would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from trackers import ByteTrackTracker
from trackers.core.bytetrack.tracklet import ByteTrackTracklet

from split_infer.analytics.state import MAX_INT, StateError, StateReader, matrix_json

MAX_TRACKLETS = 10_000
KALMAN = ("state", "state_covariance", "transition_mtx", "observation_mtx", "process_noise", "measurement_noise")


def tracker_to_state(tracker: ByteTrackTracker) -> dict[str, Any]:
    return {"next_track_id": tracker._next_track_id, "last_timestamp": tracker._last_timestamp,
            "tracklets": [_tracklet_to_state(t) for t in tracker.tracks]}


def _tracklet_to_state(t: ByteTrackTracklet) -> dict[str, Any]:
    kf = t.state_estimator.get_state()
    return {"tracker_id": t.tracker_id, "age": t.age, "time_since_update": t.time_since_update,
            "time_since_update_seconds": t.time_since_update_seconds,
            "consecutive_updates": t.number_of_successful_consecutive_updates,
            "kalman": {name: matrix_json(kf[name]) for name in KALMAN}}


def tracker_from_state(tracker: ByteTrackTracker, r: StateReader) -> ByteTrackTracker:
    """Put the checkpoint's running state into `tracker`, a new one made from the settings."""
    tracker._next_track_id = r.whole("next_track_id", 0)
    tracker._last_timestamp = r.opt_num("last_timestamp")
    shapes = _kalman_shapes(tracker)
    tracker.tracks = [_tracklet_from_state(tracker, shapes, t) for t in r.objects("tracklets", MAX_TRACKLETS)]
    ids = [t.tracker_id for t in tracker.tracks if t.tracker_id >= 0]
    if len(ids) != len(set(ids)) or any(i >= tracker._next_track_id for i in ids):
        raise StateError(f"{r.path}.tracklets: track ids repeat or are not below next_track_id")
    return tracker


def _tracklet_from_state(tracker: ByteTrackTracker, shapes: dict[str, tuple[int, int]],
                         r: StateReader) -> ByteTrackTracklet:
    kr = r.obj_at("kalman")
    kf = {name: kr.matrix(name, shape) for name, shape in shapes.items()}
    t = ByteTrackTracklet(initial_bbox=kf["state"][:4, 0].copy(), state_estimator_class=tracker.state_estimator_class)
    t.state_estimator.set_state(kf)  # copies, and clears the motion model's cache (rebuilt alike)
    t.tracker_id = r.whole("tracker_id", -1)
    t.age = r.whole("age", 0)
    t.time_since_update = r.whole("time_since_update", 0)
    t.time_since_update_seconds = r.num("time_since_update_seconds")
    t.number_of_successful_consecutive_updates = r.whole("consecutive_updates", 0, MAX_INT)
    return t


def _kalman_shapes(tracker: ByteTrackTracker) -> dict[str, tuple[int, int]]:
    """The shapes of a tracklet's filter matrices, from a filter of the tracker's own kind."""
    probe = ByteTrackTracklet(initial_bbox=np.zeros(4), state_estimator_class=tracker.state_estimator_class)
    kf = probe.state_estimator.get_state()
    return {name: (int(kf[name].shape[0]), int(kf[name].shape[1])) for name in KALMAN}
