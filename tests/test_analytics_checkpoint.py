"""The analytics checkpoint: JSON with a schema and a version, never pickle (docs/analytics.md,
"Checkpoint format"). A checkpoint taken anywhere and restored gives exactly the uninterrupted
run; a planted pickle (the exploit of issue 11) runs nothing; malformed, foreign and oversized
checkpoints are one clear CheckpointError."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.checkpoint import MAX_BYTES, CheckpointError, dump_checkpoint, load_checkpoint
from split_infer.analytics.frames import parse_record
from split_infer.config import CameraConfig
from support.analytics import LINE, street_records

pytestmark = pytest.mark.unit

ZONE = {"name": "lower", "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}
CAM = CameraConfig(id="street", url="x", lines=[LINE], zones=[ZONE])


def exploit_pickle(marker: str) -> bytes:
    """The planted checkpoint of issue 11: `split_infer.analytics.camera` + `np.f2py.subprocess.Popen`
    (a dotted name the old unpickler allowed), called with ["touch", marker]."""
    def text(s: str) -> bytes:
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE

    return (b"\x80\x04" + text("split_infer.analytics.camera") + text("np.f2py.subprocess.Popen") + b"\x93"
            + b"(" + text("touch") + text(marker) + b"l" + b"\x85" + b"R" + b".")  # MARK .. LIST, TUPLE1, REDUCE


def run(frames, analytics: CameraAnalytics, checkpoint_every: int = 0):
    events, counts = [], []
    for i, f in enumerate(frames):
        if checkpoint_every and i and i % checkpoint_every == 0:
            raw = dump_checkpoint(analytics)
            json.loads(raw)  # plain JSON
            analytics = load_checkpoint(raw, CAM)
        events += analytics.process(f)
        counts.append(analytics.counts().to_fields())
    return analytics, events, counts


def test_a_restored_checkpoint_continues_exactly_as_the_uninterrupted_run():
    frames = [parse_record(r) for r in street_records()]
    straight, ev1, counts1 = run(frames, CameraAnalytics(CAM))
    restored, ev2, counts2 = run(frames, CameraAnalytics(CAM), checkpoint_every=37)
    assert sum(e.type == "line_cross" for e in ev1) == 7  # the street's crossings, with live tracks at cuts
    assert ev2 == ev1 and counts2 == counts1
    assert dump_checkpoint(restored) == dump_checkpoint(straight)  # every piece of state, tracker included


def test_tracker_state_survives_with_live_tracklets():
    frames = [parse_record(r) for r in street_records()[:60]]
    a, _, _ = run(frames, CameraAnalytics(CAM))
    assert a.tracker.tracks and a.tracks  # something to carry over
    b = load_checkpoint(dump_checkpoint(a), CAM)
    assert b.tracker._next_track_id == a.tracker._next_track_id
    assert b.tracker._last_timestamp == a.tracker._last_timestamp
    for ta, tb in zip(a.tracker.tracks, b.tracker.tracks, strict=True):
        assert (ta.tracker_id, ta.age, ta.time_since_update) == (tb.tracker_id, tb.age, tb.time_since_update)
        assert (ta.state_estimator.kf.state == tb.state_estimator.kf.state).all()
        assert (ta.state_estimator.kf.state_covariance == tb.state_estimator.kf.state_covariance).all()


def test_the_exploit_payload_is_live_but_a_checkpoint_runs_nothing(tmp_path):
    live = tmp_path / "live"
    import pickle  # only to show the payload is real; the service never imports pickle

    proc = pickle.loads(exploit_pickle(str(live)))  # noqa: S301 - the point of the test
    assert isinstance(proc, subprocess.Popen) and proc.wait(10) == 0 and live.exists()
    marker = tmp_path / "pwned"
    with pytest.raises(CheckpointError, match="not a JSON checkpoint"):
        load_checkpoint(exploit_pickle(str(marker)), CAM)
    assert not marker.exists()


def good() -> dict:
    a, _, _ = run([parse_record(r) for r in street_records()[:40]], CameraAnalytics(CAM))
    return json.loads(dump_checkpoint(a))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(version=1), "version 1"),
    (lambda d: d.update(format="other"), "not an analytics checkpoint"),
    (lambda d: d["analytics"].update(camera="other"), "camera 'other'"),
    (lambda d: d["analytics"].update(frames="12"), "analytics.frames is not a whole number"),
    (lambda d: d["analytics"].update(last_ts=True), "analytics.last_ts is not a number"),
    (lambda d: d["analytics"]["tracker"]["tracklets"][0]["kalman"].update(state=[[0.0]] * 100_000),
     "has 100000 items, more than 8"),
    (lambda d: d["analytics"]["tracker"]["tracklets"][0]["kalman"].update(state_covariance=[[1.0] * 7] * 8),
     "has 7 values, not 8"),
    (lambda d: d["analytics"].update(tracks=[d["analytics"]["tracks"][0]] * 10_001), "more than 10000"),
    (lambda d: d["analytics"]["aggregates"].update(recent_tracks=[[1.0, "car"]] * 100_001), "more than 100000"),
    (lambda d: d["analytics"].update(session="s" * 5000), "longer than"),
    (lambda d: d["analytics"]["lines"][0]["counts"].update({"in": [["car", -1]]}), "outside"),
    (lambda d: d["analytics"].pop("aggregates"), "lacks 'aggregates'"),
])
def test_invalid_checkpoints_are_one_clear_error(mutate, message):
    doc = good()
    mutate(doc)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(json.dumps(doc).encode(), CAM)


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "not valid JSON"),
    (b'{"format": "split-infer analytics checkpoint", "version": 2, "x": NaN}', "NaN"),
    (b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"a": "\xff"}', "not valid JSON"),
    (b"[]", "not a JSON checkpoint"),
    (b"{" + b" " * MAX_BYTES + b"}", "more than"),
])
def test_malformed_bytes_are_one_clear_error(raw, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(raw, CAM)


def test_an_infinite_value_in_a_checkpoint_is_refused():
    doc = json.dumps(good()).replace('"score":', '"score":1e999,"_":', 1)
    with pytest.raises(CheckpointError, match="score is not a finite number"):
        load_checkpoint(doc.encode(), CAM)
