"""Lines and zones as configured for the analytics and the dashboard: normalised or pixel units,
rescaled when the stream's size changes; zone names that collide with camera ids; one camera list
read by the cloud from the edge's file; per-minute history kept by time in Redis."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from split_infer.analytics.aggregates import Aggregates
from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.checkpoint import dump_checkpoint, load_checkpoint
from split_infer.analytics.frames import DetectionFrame, FrameDetection
from split_infer.analytics.history import DAY_S, day_of, days_between, write_minutes
from split_infer.analytics.lines import LineCounter
from split_infer.analytics.zones import Zone
from split_infer.config import CameraConfig, CloudConfig, ConfigError, EdgeConfig, LineConfig, ZoneConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
MIDDLE = LineConfig(name="middle", units="normalized", a=(0.5, 0.0), b=(0.5, 1.0), margin=4)


def test_a_normalised_line_follows_the_stream_size():
    lc = LineCounter.from_config(MIDDLE)
    lc.resize((640, 360))
    assert lc.pixels == ((320.0, 0.0), (320.0, 360.0))
    assert [lc.update(1, "car", (x, 100)) for x in (300, 340)] == [None, "in"]
    lc.resize((1280, 720))  # the camera's resolution changed: same line, same counts, same sides
    assert lc.pixels == ((640.0, 0.0), (640.0, 720.0))
    assert lc.update(1, "car", (600, 200)) == "out"
    assert (lc.counts["in"]["car"], lc.counts["out"]["car"]) == (1, 1)


def test_pixel_shapes_rescale_only_with_a_reference_frame_size():
    drawn = LineConfig(name="p", a=(100, 0), b=(100, 720))
    fixed, scaled = LineCounter.from_config(drawn), LineCounter.from_config(drawn, reference=(1280, 720))
    for lc in (fixed, scaled):
        lc.resize((640, 360))
    assert fixed.pixels == ((100.0, 0.0), (100.0, 720.0))
    assert scaled.pixels == ((50.0, 0.0), (50.0, 360.0))
    zone = Zone.from_config(ZoneConfig(name="z", units="normalized", polygon=[(0.5, 0.5), (1, 0.5), (1, 1), (0.5, 1)]))
    zone.resize((640, 360))
    assert zone.contains((500, 300)) and not zone.contains((100, 300))
    zone.resize((1920, 1080))
    assert zone.contains((1500, 900)) and not zone.contains((500, 300))


def frame(seq: int, x: float, size: tuple[int, int]) -> DetectionFrame:
    w, h = size
    box = (x * w - 0.05 * w, 0.4 * h, x * w + 0.05 * w, 0.6 * h)  # a car, positions as fractions
    return DetectionFrame("c", seq, seq / 10, w, h, (FrameDetection("car", 0.9, box),), "s1")


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080)])
def test_the_same_normalised_config_counts_the_same_at_any_resolution(size):
    a = CameraAnalytics(CameraConfig(id="c", url="x", units="normalized", lines=[
        LineConfig(name="middle", a=(0.5, 0.0), b=(0.5, 1.0))]))
    events = [e for i, x in enumerate(k / 40 for k in range(8, 33)) for e in a.process(frame(i, x, size))]
    assert [(e.type, e.direction) for e in events] == [("line_cross", "in")]
    # The checkpoint keeps units and geometry; a restart resumes on the same line.
    back = load_checkpoint(dump_checkpoint(a), CameraConfig(id="c", url="x", units="normalized", lines=[
        LineConfig(name="middle", a=(0.5, 0.0), b=(0.5, 1.0))]))
    assert back.lines["middle"].counts["in"]["car"] == 1 and back.lines["middle"].units.value == "normalized"


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"normalized coordinates must lie in 0\.\.1"):
        CameraConfig(id="c", url="x", units="normalized", lines=[LineConfig(name="l", a=(10, 0), b=(10, 200))])
    with pytest.raises(ValueError, match="zone name 'cam-2' is also a camera id"):
        zone = ZoneConfig(name="cam-2", polygon=[(0, 0), (1, 0), (1, 1)])
        EdgeConfig(cameras=[CameraConfig(id="cam-1", url="x", zones=[zone]), CameraConfig(id="cam-2", url="y")])
    with pytest.raises(ValueError, match="line names must be unique"):
        CameraConfig(id="c", url="x", lines=[LineConfig(name="l", a=(0, 0), b=(1, 1))] * 2)
    with pytest.raises(ValueError, match="frame_size"):
        CameraConfig(id="c", url="x", frame_size=(0, 720))
    with pytest.raises(ValueError, match="units"):
        CameraConfig.model_validate({"id": "c", "url": "x", "units": "percent"})


def test_the_cloud_reads_the_edge_camera_list(tmp_path):
    (tmp_path / "edge").mkdir()
    (tmp_path / "cloud").mkdir()
    (tmp_path / "edge" / "edge.yaml").write_text(
        "cameras:\n  - id: a\n    url: rtsp://cam-a/stream\n    units: normalized\n"
        "    lines: [{name: door, a: [0.5, 0], b: [0.5, 1]}]\n  - id: b\n    url: /data/b.mp4\n")
    cloud = tmp_path / "cloud" / "cloud.yaml"
    cloud.write_text("camera_files: [../edge/edge.yaml]\nanalytics: {history_days: 30}\n")
    cfg = load_config(cloud, CloudConfig)
    assert [c.id for c in cfg.cameras] == ["a", "b"] and cfg.cameras[0].lines[0].name == "door"
    assert cfg.analytics.history_days == 30
    # A dump validates again to the same list (files are taken in once).
    assert [c.id for c in CloudConfig.model_validate(cfg.model_dump()).cameras] == ["a", "b"]
    cloud.write_text("camera_files: [../edge/edge.yaml]\ncameras: [{id: a, url: redis}]\n")
    with pytest.raises(ConfigError, match=r"camera ids must be unique, got \['a'\]"):
        load_config(cloud, CloudConfig)
    cloud.write_text("camera_files: [missing.yaml]\n")
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_config(cloud, CloudConfig)


def test_the_example_configs_share_one_camera_list():
    edge = load_config(ROOT / "deploy" / "edge" / "edge.example.yaml", EdgeConfig)
    cloud = load_config(ROOT / "deploy" / "cloud" / "cloud.example.yaml", CloudConfig)
    assert [c.id for c in cloud.cameras] == [c.id for c in edge.cameras]


@pytest.mark.redis
def test_history_buckets_expire_by_time(r, keys):
    agg = Aggregates()
    t0 = (time.time() // DAY_S) * DAY_S + 23 * 3600 + 59 * 60  # today 23:59 UTC: the next minute is tomorrow
    agg.crossing(t0 + 5, "car", "door", "in")
    agg.crossing(t0 + 65, "bus", "door", "out")
    agg.new_track(t0 + 66, "bus")
    changed = agg.take_changed()
    assert [m.start for m in changed] == [int(t0), int(t0) + 60] and agg.take_changed() == []
    pipe = r.pipeline()
    write_minutes(pipe, keys, "cam-1", changed, history_days=7)
    pipe.execute()
    first, second = day_of(t0), day_of(t0 + 65)
    assert days_between(t0, t0 + 65) == [first, second] and first != second
    bucket = json.loads(r.hget(keys.history("cam-1", second), str(int(t0) + 60)))
    assert bucket == {"crossings": {"bus": 1}, "tracks": {"bus": 1}, "lines": {"door": {"out": {"bus": 1}}}}
    assert r.expiretime(keys.history("cam-1", first)) == (int(t0) // DAY_S + 1 + 7) * DAY_S  # 7 days after the day
    # A day older than history_days is gone at once: retention is by time.
    old = Aggregates()
    old.crossing(t0 - 9 * DAY_S, "car", "door", "in")
    pipe = r.pipeline()
    write_minutes(pipe, keys, "cam-1", old.take_changed(), history_days=7)
    pipe.execute()
    assert not r.exists(keys.history("cam-1", day_of(t0 - 9 * DAY_S)))
