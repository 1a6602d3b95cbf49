"""Unit tests of the analytics core: line crossings (with jitter), zones and dwell, aggregates,
record parsing, and tracking through ByteTrack on synthetic detections."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from split_infer.analytics.aggregates import Aggregates
from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.checkpoint import dump_checkpoint, load_checkpoint
from split_infer.analytics.frames import DetectionFrame, FrameDetection, parse_record
from split_infer.analytics.geometry import polygon_distance, side_distance
from split_infer.analytics.lines import LineCounter
from split_infer.analytics.zones import Zone
from split_infer.config import CameraConfig, LineConfig, ZoneConfig
from split_infer.records import RecordError

pytestmark = pytest.mark.unit

VERTICAL = LineConfig(name="v", a=(100, 0), b=(100, 200), margin=8)  # drawn downwards: in = moving right


def counter() -> LineCounter:
    return LineCounter.from_config(VERTICAL)


def test_side_distance_left_of_arrow_on_screen_is_positive():
    # Line drawn left to right: the on-screen left of the arrow is up (smaller y).
    d, t = side_distance((0, 100), (200, 100), (50, 90))
    assert d == pytest.approx(10) and t == pytest.approx(0.25)
    d, _ = side_distance((100, 0), (100, 200), (110, 50))  # drawn downwards: left is +x
    assert d == pytest.approx(10)


def test_one_crossing_counts_once_with_its_direction():
    lc = counter()
    xs = [60, 70, 80, 90, 100, 110, 120, 130, 140]
    out = [lc.update(1, "car", (x, 100)) for x in xs]
    assert [o for o in out if o] == ["in"]
    assert out.index("in") == xs.index(110)  # first frame beyond the 8 px margin on the other side
    assert lc.counts["in"]["car"] == 1 and sum(lc.counts["out"].values()) == 0
    back = [lc.update(1, "car", (x, 100)) for x in (120, 100, 80)]
    assert back == [None, None, "out"]


def test_jitter_on_the_line_does_not_count_twice():
    lc = counter()
    lc.update(7, "car", (60, 100))
    # Crosses, then wobbles around the line within the margin for a while (a queue on the line).
    seq = [110, 103, 96, 101, 93, 99, 104, 92.5, 107, 95, 101, 130]
    out = [lc.update(7, "car", (x, 100)) for x in seq]
    assert out.count("in") == 1 and out.count("out") == 0
    assert lc.counts["in"]["car"] == 1


def test_jitter_before_crossing_counts_nothing():
    lc = counter()
    for x in (70, 95, 104, 97, 106, 94, 107, 92.1):  # never beyond 8 px on the far side
        assert lc.update(3, "car", (x, 100)) is None
    assert sum(lc.counts["in"].values()) + sum(lc.counts["out"].values()) == 0


def test_first_sight_on_far_side_and_going_round_the_end_are_no_crossings():
    lc = counter()
    assert lc.update(1, "car", (150, 100)) is None  # first seen already past the line
    # Beside the segment's end (y > 200) the side is forgotten: driving round it is no crossing.
    for p in [(60, 150), (60, 250), (150, 250), (150, 150)]:
        assert lc.update(2, "car", p) is None
    assert sum(lc.counts["in"].values()) == 0


def test_line_counts_only_its_classes():
    lc = LineCounter.from_config(LineConfig(name="cars", a=(100, 0), b=(100, 200), classes=["car"]))
    lc.update(1, "person", (50, 100))
    assert lc.update(1, "person", (150, 100)) is None
    lc.update(2, "car", (50, 100))
    assert lc.update(2, "car", (150, 100)) == "in"


def test_polygon_distance_sign_and_value():
    sq = np.array([(0, 0), (100, 0), (100, 100), (0, 100)], float)
    assert polygon_distance(sq, (50, 10)) == pytest.approx(10)
    assert polygon_distance(sq, (50, -5)) == pytest.approx(-5)
    assert polygon_distance(sq, (110, 50)) == pytest.approx(-10)


def test_zone_entry_exit_dwell_and_hysteresis():
    z = Zone.from_config(ZoneConfig(name="z", polygon=[(0, 0), (100, 0), (100, 100), (0, 100)], margin=4))
    assert z.update(1, "car", (-20, 50), ts=0.0) is None
    assert z.update(1, "car", (2, 50), ts=1.0) is None  # 2 px inside: within the margin
    assert z.update(1, "car", (10, 50), ts=2.0) == ("enter", None)
    assert z.occupancy() == {"car": 1}
    for i, x in enumerate((98, 101, 99, 103.5, 97)):  # jitter on the border: still inside
        assert z.update(1, "car", (x, 50), ts=3.0 + i) is None
    assert z.dwell_max(7.0) == {"car": pytest.approx(5.0)}
    kind, dwell = z.update(1, "car", (110, 50), ts=9.5)
    assert kind == "exit" and dwell == pytest.approx(7.5)
    assert z.occupancy() == {} and z.entries["car"] == 1 and z.exits["car"] == 1
    assert z.dwell_total["car"] == pytest.approx(7.5)
    # A person first seen inside enters at once; a lost track closes its stay.
    assert z.update(2, "person", (50, 50), ts=10.0) == ("enter", None)
    assert z.leave(2, ts=14.0) == pytest.approx(4.0)
    assert z.leave(2, ts=15.0) is None


def test_per_minute_counts_and_history():
    agg = Aggregates()
    for ts, cls in [(5.0, "car"), (30.0, "car"), (61.0, "bus"), (100.0, "car")]:
        agg.crossing(ts, cls)
    assert agg.per_minute(100.0, "crossings") == {"car": 1, "bus": 1}  # window (40, 100]
    assert agg.per_minute(200.0, "crossings") == {}
    hist = agg.history()
    assert [h["minute"] for h in hist] == [0, 60]
    assert hist[0]["crossings"] == {"car": 2} and hist[1]["crossings"] == {"bus": 1, "car": 1}


def test_congestion_levels_from_density_and_speed():
    agg = Aggregates(capacity=10, free_speed=1.0, smoothing_s=5.0)
    agg.congestion(0.0, [])
    assert agg.level == "empty"
    agg.congestion(1.0, [2.0] * 3)  # raw 0.3 * 0.5, smoothed over 5 s from 0
    assert agg.score == pytest.approx(0.15 * (1 - np.exp(-1 / 5))) and agg.level == "free"
    for t in range(2, 60):
        agg.congestion(float(t), [0.0] * 12)  # a full, stopped street
    assert agg.score > 0.95 and agg.level == "jammed"
    for t in range(60, 120):
        agg.congestion(float(t), [1.5] * 6)  # moving freely, 6 vehicles: 0.6 * 0.5
    assert agg.score == pytest.approx(0.3, abs=0.01) and agg.level == "moderate"


def record(seq: int, dets: list[dict], ts: float | None = None, camera: str = "c") -> dict:
    return {"camera": camera, "seq": str(seq), "capture_ts": str(ts if ts is not None else seq / 10),
            "done_ts": "0", "width": "640", "height": "360", "detections": json.dumps(dets)}


def test_parse_record_and_clear_errors():
    f = parse_record({k.encode(): v.encode() for k, v in record(3, [
        {"class_id": 2, "class_name": "car", "score": 0.9, "box": [1, 2, 30, 40]}]).items()})
    assert f.seq == 3 and f.detections[0] == FrameDetection("car", 0.9, (1.0, 2.0, 30.0, 40.0))
    bad = [
        ({k: v for k, v in record(1, []).items() if k != "seq"}, "lacks field 'seq'"),
        ({**record(1, []), "detections": "{nope"}, "bad value"),
        ({**record(1, []), "detections": "{}"}, "not a JSON list"),
        (record(1, [{"class_name": "car", "score": 0.5}]), "detection 0 is malformed"),
        (record(1, [{"class_name": "car", "score": 0.5, "box": [10, 10, 5, 20]}]), "bad box"),
        (record(1, [{"class_name": "car", "score": 0.5, "box": [1, 2, 3]}]), "bad box"),
        ({**record(1, []), "capture_ts": "nan"}, "capture_ts"),
    ]
    for fields, msg in bad:
        with pytest.raises(RecordError, match=msg):
            parse_record(fields)


def moving_box(x: float, y: float = 100, w: float = 60, h: float = 40) -> list[float]:
    return [x - w / 2, y - h, x + w / 2, y]


def frame(seq: int, dets: list[tuple[str, float, list[float]]], camera: str = "c") -> DetectionFrame:
    return DetectionFrame(camera, seq, seq / 10, 640, 360, tuple(FrameDetection(c, s, tuple(b)) for c, s, b in dets))


def test_tracking_keeps_ids_and_counts_two_cars_in_opposite_directions():
    cam = CameraConfig(id="c", url="x", lines=[{"name": "v", "a": (300, 0), "b": (300, 360)}],
                       zones=[{"name": "right", "polygon": [(400, 0), (640, 0), (640, 360), (400, 360)]}])
    ca = CameraAnalytics(cam)
    events = []
    for i in range(40):
        dets = [("car", 0.8, moving_box(50 + 12 * i, 120)),  # left to right
                ("truck" if i % 5 == 0 else "car", 0.7, moving_box(600 - 12 * i, 250))]  # class flicker
        events += ca.process(frame(i, dets))
    crossings = [e for e in events if e.type == "line_cross"]
    assert sorted((e.direction, e.class_name) for e in crossings) == [("in", "car"), ("out", "car")]
    assert len({e.track_id for e in crossings}) == 2
    zone = [(e.type, e.track_id) for e in events if e.zone == "right"]
    a = next(e.track_id for e in crossings if e.direction == "in")
    b = next(e.track_id for e in crossings if e.direction == "out")
    assert ("zone_enter", a) in zone and ("zone_enter", b) in zone and ("zone_exit", b) in zone
    counts = ca.counts().to_fields()
    assert counts["line:v:in:car"] == "1" and counts["line:v:out:car"] == "1"
    assert counts["zone:right:occupancy:car"] == "1" and counts["zone:right:entries:car"] == "2"
    assert counts["per_minute:car"] == "2" and counts["per_minute_basis"] == "crossings"


def test_lost_track_leaves_zone_with_reason_lost_across_a_checkpoint():
    cam = CameraConfig(id="c", url="x", zones=[{"name": "all", "polygon": [(0, 0), (640, 0), (640, 360), (0, 360)]}])
    ca = CameraAnalytics(cam)
    events = []
    for i in range(10):
        events += ca.process(frame(i, [("person", 0.9, moving_box(100 + i, 200, 20, 50))]))
    ca = load_checkpoint(dump_checkpoint(ca), cam)  # the service's checkpoint round trip
    for i in range(10, 50):
        events += ca.process(frame(i, []))
    exits = [e for e in events if e.type == "zone_exit"]
    assert len(exits) == 1 and exits[0].reason == "lost" and exits[0].class_name == "person"
    assert exits[0].dwell_s == pytest.approx(0.8, abs=0.11)  # seen from frame 1 (confirmed) to 9
    assert ca.counts().to_fields()["zone:all:occupancy:person"] == "0"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=40, max_value=160, allow_nan=False), min_size=1, max_size=60),
       st.floats(min_value=0, max_value=20))
def test_counted_crossings_are_the_passages_from_one_far_side_to_the_other(xs, margin):
    """Any path across a line: counts alternate in/out, and equal the number of moves from beyond
    the margin on one side to beyond it on the other (everything in the band in between ignored)."""
    lc = LineCounter.from_config(LineConfig(name="v", a=(100, 0), b=(100, 200), margin=margin))
    got = [d for d in (lc.update(1, "car", (x, 100)) for x in xs) if d]
    far = [1 if x - 100 > margin else -1 for x in xs if abs(x - 100) > margin]
    expected = ["in" if b > 0 else "out" for a, b in pairwise(far) if a != b]
    assert got == expected
    assert all(a != b for a, b in pairwise(got))


def test_a_queue_that_stops_reads_as_jammed_and_parked_cars_do_not():
    ca = CameraAnalytics(CameraConfig(id="c", url="x"))
    # Twelve parked cars, never moving: not congestion.
    parked = [("car", 0.9, moving_box(30 + 50 * k, 330, 40, 30)) for k in range(12)]
    for i in range(100):
        ca.process(frame(i, parked))
    assert ca.agg.level == "empty"
    # Twelve cars drive in (two lanes) and come to a stop nose to tail: a jam.
    lanes = [(80 + 50 * k, 120 + 80 * (k % 2)) for k in range(12)]
    for i in range(100, 400):
        step = min(i - 100, 40)  # 4 s of driving, then standing
        dets = parked + [("car", 0.9, moving_box(x - 120 + 3 * step, y, 40, 30)) for x, y in lanes]
        ca.process(frame(i, dets))
    assert ca.agg.vehicles == 12 and ca.agg.level == "jammed"
