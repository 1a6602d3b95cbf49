"""Time-based retention (split_infer/retention.py) on the real Redis: MINID trimming by age, held
back by what the analytics group has not read yet, through the worker's own XADD script too."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from pydantic import ValidationError

from split_infer.cloud.consumer import WRITE_ONCE, FrameStreams
from split_infer.config import CloudConfig, WorkerSettings
from split_infer.keys import Keys
from split_infer.retention import (
    RetainedStream,
    RetentionConfig,
    StreamId,
    Target,
    Trimmer,
    camera_targets,
    format_duration,
    parse_duration,
    unread_floor,
)

DAY_MS = 86_400_000
CAM = "cam-1"


def ids(r: redis.Redis, stream: str) -> list[StreamId]:
    return [StreamId.parse(i) for i, _ in r.xrange(stream)]


def fill(r: redis.Redis, stream: str, start_ms: int, n: int) -> list[StreamId]:
    """n entries with explicit ids from start_ms on, one per 100 ms (a 10 fps camera)."""
    pipe = r.pipeline(transaction=False)
    out = [StreamId(start_ms + 100 * i, 0) for i in range(n)]
    for sid in out:
        pipe.xadd(stream, {"seq": str(sid.ms)}, id=str(sid))
    pipe.execute()
    return out


def detections(keys: Keys) -> Target:
    return camera_targets(keys, CAM)[0]


@pytest.mark.unit
def test_durations_are_parsed_strictly():
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    assert format_duration(timedelta(days=7)) == "7d" and format_duration(timedelta(minutes=90)) == "90m"
    for bad in ("7", "1.5d", "P7D", "0d", "-1d", "7 d", "3y", "", 7):
        with pytest.raises(ValidationError, match="is not a duration"):
            CloudConfig.model_validate({"retention": {"detections": bad}})
    with pytest.raises(ValidationError, match="extra"):
        CloudConfig.model_validate({"retention": {"detection": "7d"}})  # a typo is an error, not ignored
    cfg = CloudConfig.model_validate({"retention": {"detections": "7d", "events": "30d", "shed": "1d",
                                                    "dead_letters": "12h"}})
    assert cfg.retention.of(RetainedStream.DEAD_LETTERS) == timedelta(hours=12)
    assert CloudConfig.model_validate(cfg.model_dump()).retention == cfg.retention  # round trip


@pytest.mark.redis
def test_time_retention_trims_old_entries_and_keeps_recent_ones(r, keys):
    now_ms = int(time.time() * 1000)
    target = Target(keys.events_stream(CAM), RetainedStream.EVENTS)
    old = fill(r, target.stream, now_ms - 3 * DAY_MS, 500)
    recent = fill(r, target.stream, now_ms - 3_600_000, 500)
    removed = Trimmer(r, RetentionConfig(events="1d")).trim(target)
    left = ids(r, target.stream)
    assert set(recent) <= set(left), "an entry younger than the retention was trimmed"
    # `~` drops whole radix-tree nodes only: at most one node's worth of old entries may stay.
    assert removed == len(old) + len(recent) - len(left) and len(set(old) & set(left)) < 100, removed


@pytest.mark.redis
def test_lagging_analytics_keeps_its_unread_and_pending_entries(r, keys):
    """Every entry is past the retention, but the analytics group has read only 300 of 1000 and
    acknowledged 200: the trim stops at its oldest pending entry (the 201st)."""
    target = detections(keys)
    written = fill(r, target.stream, int(time.time() * 1000) - 10 * DAY_MS, 1000)
    r.xgroup_create(target.stream, keys.ANALYTICS_GROUP, id="0")
    read = r.xreadgroup(keys.ANALYTICS_GROUP, "analytics-1", {target.stream: ">"}, count=300)[0][1]
    r.xack(target.stream, keys.ANALYTICS_GROUP, *[i for i, _ in read[:200]])

    assert unread_floor(r, target.stream, keys.ANALYTICS_GROUP) == written[200]
    trimmer = Trimmer(r, RetentionConfig(detections="1d"))
    assert trimmer.compute(target) == written[200]
    removed = trimmer.trim(target)
    left = ids(r, target.stream)
    assert set(written[200:]) <= set(left), "trimmed an entry the analytics group still needs"
    assert removed > 100 and left[0] <= written[200], (removed, left[0])

    # All read ones acknowledged: the floor moves just past the last delivered entry, and no further.
    r.xack(target.stream, keys.ANALYTICS_GROUP, *[i for i, _ in read[200:]])
    assert unread_floor(r, target.stream, keys.ANALYTICS_GROUP) == written[299].successor() < written[300]
    trimmer.trim(target)
    left = ids(r, target.stream)
    assert set(written[300:]) <= set(left) and left[0] <= written[300] and len(left) < 800, len(left)

    # Read but not acknowledged: still held. Caught up (read and acknowledged): only the clock limits.
    rest = r.xreadgroup(keys.ANALYTICS_GROUP, "analytics-1", {target.stream: ">"})[0][1]
    assert unread_floor(r, target.stream, keys.ANALYTICS_GROUP) == written[300]
    r.xack(target.stream, keys.ANALYTICS_GROUP, *[i for i, _ in rest])
    assert unread_floor(r, target.stream, keys.ANALYTICS_GROUP) == written[-1].successor()


@pytest.mark.redis
def test_the_worker_script_trims_by_minid_and_spares_the_analytics_backlog(r, keys):
    """The worker's XADD (WRITE_ONCE, `MINID ~`) with the Trimmer's MINID: a stream of old records
    that analytics has not read keeps them all, while one without readers loses them."""
    target = detections(keys)
    old = fill(r, target.stream, int(time.time() * 1000) - 2 * DAY_MS, 400)
    r.xgroup_create(target.stream, keys.ANALYTICS_GROUP, id="0")  # created, nothing read: all unread
    shed = camera_targets(keys, CAM)[1]
    old_shed = fill(r, shed.stream, int(time.time() * 1000) - 2 * DAY_MS, 400)
    frames = keys.frames_stream(CAM)
    r.xgroup_create(frames, keys.FRAMES_GROUP, id="0", mkstream=True)
    trimmer = Trimmer(r, RetentionConfig(detections="1h", shed="1h"))
    for seq, tgt in ((1, target), (2, shed)):
        entry = r.xadd(frames, {"x": "1"})
        r.xreadgroup(keys.FRAMES_GROUP, "w", {frames: ">"})
        fresh = r.eval(WRITE_ONCE, 3, keys.done_key(CAM, "s", seq), tgt.stream, frames,
                       60, keys.FRAMES_GROUP, entry, trimmer.minid(tgt), "seq", str(seq))
        assert fresh == 1
    assert set(old) <= set(ids(r, target.stream)) and r.xlen(target.stream) == 401
    assert len(set(old_shed) & set(ids(r, shed.stream))) < 100 and r.xlen(shed.stream) >= 1


@pytest.mark.unit
def test_trim_points_are_cached_for_refresh_s():
    class Fake:
        """Counts the Redis calls a MINID costs (a group-held stream: XINFO GROUPS each time)."""

        calls = 0

        def xinfo_groups(self, stream):
            self.calls += 1
            return []

    fake, t = Fake(), [0.0]
    trimmer = Trimmer(fake, RetentionConfig(refresh_s=10), wall=lambda: 1_000_000.0, clock=lambda: t[0])
    target = Target("s", RetainedStream.DETECTIONS, "analytics")
    first = trimmer.minid(target)
    assert first == f"{1_000_000_000 - 6 * 3_600_000}-0"
    t[0] = 9.9
    trimmer.minid(target)
    assert fake.calls == 1
    t[0] = 10.0
    trimmer.minid(target)
    assert fake.calls == 2


@pytest.mark.redis
def test_the_worker_sweeps_quiet_cameras_streams_on_refresh(r, keys):
    """A camera that sends nothing gets no XADD that would trim it: the worker's camera refresh
    sweeps its streams (at most once a minute), still sparing what analytics has not read."""
    r.sadd(keys.cameras, CAM)
    det, shed, dead = camera_targets(keys, CAM)
    two_days_ago = int(time.time() * 1000) - 2 * DAY_MS
    unread = fill(r, det.stream, two_days_ago, 300)
    r.xgroup_create(det.stream, keys.ANALYTICS_GROUP, id="0")
    for target in (shed, dead):
        fill(r, target.stream, two_days_ago, 300)
    streams = FrameStreams(r, keys, WorkerSettings(), "w-1", RetentionConfig(detections="1h", shed="1h",
                                                                             dead_letters="1d"))
    streams.refresh(force=True)
    assert set(unread) <= set(ids(r, det.stream))
    assert r.xlen(shed.stream) < 100 and r.xlen(dead.stream) < 100, (r.xlen(shed.stream), r.xlen(dead.stream))
    r.delete(shed.stream)
    fill(r, shed.stream, two_days_ago, 300)  # old again; the next sweep is a minute away
    streams.refresh(force=True)
    assert r.xlen(shed.stream) >= 300
