"""The Redis records: exact field encodings, exact round trips (as redis-py stores them, and through
a real Redis), and one clear RecordError for anything malformed; the key layout and the camera-id
rule."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from redis.connection import Encoder

from split_infer.api.app import create_app
from split_infer.config import CameraConfig
from split_infer.keys import CAMERA_ID_PATTERN, PREFIX_ENV, Keys, valid_camera_id, valid_session
from split_infer.records import (
    AnalyticsCounts,
    AnalyticsEvent,
    CameraStatus,
    DeadLetter,
    DetectedObject,
    DetectionResult,
    MinuteTally,
    QueuedFrame,
    RecordError,
    ShedRecord,
    ZoneTally,
)

CAR = DetectedObject(2, "car", 0.9012, (10.5, 20.0, 110.25, 80.0))
FRAME = QueuedFrame(camera="cam-1", session="s1", seq=7, capture_ts=1712345678.123456, sent_ts=1712345678.2,
                    width=640, height=360, payload=b"\x00\xffSIF\x01",
                    timings={"capture": 1.5, "encode": 12.300000190734863}, dropped_before=2, ingest_ts=1712345678.3)
RESULT = DetectionResult(camera="cam-1", session="s1", seq=7, capture_ts=1712345678.123456, width=640, height=360,
                         detections=(CAR,), done_ts=1712345678.5, ingest_ts=1712345678.3, batch=4, head_ms=20.125,
                         worker="w1", timings={"capture": 1.5}, model_version="yolov5s-0123456789")
STATUS = CameraStatus(online=True, fps=9.875, bytes_per_s=150000.5, last_frame_ts=1712345678.1,
                      last_seen_ts=1712345678.2, last_seq=41, session="s1", frames=42, bytes=6_000_000, rejected=1,
                      dropped_edge=3, peer="ipv4:127.0.0.1:5555")
SHED = ShedRecord("cam-1", "s1", 7, 1712345678.123456, "deadline", "w1", 1712345679.0)
LETTER = DeadLetter("si:frames:cam-1", "1-0", "cam-1", "7", "s1", "undecodable frame: truncated", "w1",
                    1712345679.25, 1234)
EVENT = AnalyticsEvent("zone_exit", "cam-1", 7, 1712345678.125, 3, "car", zone="kerb", dwell_s=2.5, reason="left")
COUNTS = AnalyticsCounts(
    updated_ts=1712345678.125, seq=7, frames=8, skipped_frames=0, rejected_records=1, congestion="free",
    congestion_score=0.125, vehicles=2, median_speed=0.5, lines={"road": {"in": {"car": 3}, "out": {"car": 1}}},
    zones={"kerb": ZoneTally({"car": 1}, {"car": 2}, {"car": 1}, {"car": 3.5}, {"car": 1.25})},
    per_minute_basis="crossings", per_minute={"car": 4, "bus": 0}, tracks={"car": 2, "bus": 0},
    per_minute_history=(MinuteTally(1712345640, {"car": 3}, {"car": 5}),))

STRICT = [FRAME, RESULT, SHED, LETTER, EVENT]
ALL = [*STRICT, STATUS, COUNTS]
ENCODER = Encoder("utf-8", "strict", False)


def stored(fields: dict) -> dict[bytes, bytes]:
    """The fields as Redis gives them back: redis-py's own encoding, bytes."""
    return {ENCODER.encode(k): ENCODER.encode(v) for k, v in fields.items()}


# -- exact encodings -----------------------------------------------------------------------------


@pytest.mark.unit
def test_queued_frame_fields_are_those_the_ingest_has_always_written():
    assert stored(FRAME.to_fields()) == {
        b"camera": b"cam-1", b"session": b"s1", b"seq": b"7", b"capture_ts": b"1712345678.123456",
        b"sent_ts": b"1712345678.2", b"width": b"640", b"height": b"360", b"payload": b"\x00\xffSIF\x01",
        b"timings": b'{"capture": 1.5, "encode": 12.300000190734863}', b"dropped_before": b"2",
        b"ingest_ts": b"1712345678.3"}


@pytest.mark.unit
def test_detection_record_fields_and_live_json():
    fields = RESULT.to_fields()
    assert stored(fields) == {
        b"camera": b"cam-1", b"session": b"s1", b"seq": b"7", b"capture_ts": b"1712345678.123456",
        b"ingest_ts": b"1712345678.3", b"done_ts": b"1712345678.5", b"width": b"640", b"height": b"360",
        b"detections": b'[{"class_id":2,"class_name":"car","score":0.9012,"box":[10.5,20.0,110.25,80.0]}]',
        b"batch": b"4", b"head_ms": b"20.125", b"worker": b"w1", b"timings": b'{"capture": 1.5}',
        b"model_version": b"yolov5s-0123456789"}
    assert list(fields) == ["camera", "session", "seq", "capture_ts", "ingest_ts", "done_ts", "width", "height",
                            "detections", "batch", "head_ms", "worker", "timings", "model_version"]
    assert json.loads(RESULT.to_live_json()) == {
        "camera": "cam-1", "session": "s1", "seq": 7, "capture_ts": "1712345678.123456", "ingest_ts": "1712345678.3",
        "done_ts": "1712345678.5", "width": "640", "height": "360", "detections": [CAR.to_json()], "batch": 4,
        "head_ms": 20.125, "worker": "w1", "timings": '{"capture": 1.5}', "model_version": "yolov5s-0123456789"}


@pytest.mark.unit
def test_a_record_without_a_model_version_reads_as_unversioned():
    old = {k: v for k, v in stored(RESULT.to_fields()).items() if k != b"model_version"}  # before versions existed
    assert DetectionResult.from_fields(old).model_version == "unversioned"
    assert DetectionResult.from_fields(stored(RESULT.to_fields())).model_version == "yolov5s-0123456789"


@pytest.mark.unit
def test_status_shed_dead_letter_and_event_fields():
    assert stored(STATUS.to_fields()) == {
        b"online": b"1", b"fps": b"9.875", b"bytes_per_s": b"150000.5", b"last_frame_ts": b"1712345678.1",
        b"last_seen_ts": b"1712345678.2", b"last_seq": b"41", b"session": b"s1", b"frames": b"42",
        b"bytes": b"6000000", b"rejected": b"1", b"dropped_edge": b"3", b"peer": b"ipv4:127.0.0.1:5555"}
    fresh = CameraStatus(online=False, fps=0.0, bytes_per_s=0.0, last_frame_ts=0.0, last_seen_ts=0.0, frames=0,
                         bytes=0, rejected=0, dropped_edge=0)
    assert stored(fresh.to_fields())[b"last_seq"] == b"-1" and stored(fresh.to_fields())[b"session"] == b""
    assert stored(SHED.to_fields()) == {b"camera": b"cam-1", b"session": b"s1", b"seq": b"7",
                                        b"capture_ts": b"1712345678.123456", b"reason": b"deadline", b"worker": b"w1",
                                        b"ts": b"1712345679.0"}
    assert stored(LETTER.to_fields()) == {b"stream": b"si:frames:cam-1", b"id": b"1-0", b"camera": b"cam-1",
                                          b"seq": b"7", b"session": b"s1", b"reason": b"undecodable frame: truncated",
                                          b"worker": b"w1", b"ts": b"1712345679.25", b"payload_bytes": b"1234"}
    assert EVENT.to_fields() == {"type": "zone_exit", "camera": "cam-1", "seq": "7", "ts": "1712345678.125",
                                 "track_id": "3", "class_name": "car", "zone": "kerb", "dwell_s": "2.500",
                                 "reason": "left"}
    assert json.loads(EVENT.to_json("5-0")) == {**EVENT.as_dict(), "id": "5-0"}


@pytest.mark.unit
def test_counts_fields_exactly():
    assert COUNTS.to_fields() == {
        "updated_ts": "1712345678.125", "seq": "7", "frames": "8", "skipped_frames": "0", "rejected_records": "1",
        "congestion": "free", "congestion_score": "0.125", "vehicles": "2", "median_speed": "0.500",
        "line:road:in:car": "3", "line:road:out:car": "1", "zone:kerb:occupancy:car": "1",
        "zone:kerb:entries:car": "2", "zone:kerb:exits:car": "1", "zone:kerb:dwell_s:car": "3.500",
        "zone:kerb:dwell_max_s:car": "1.250", "per_minute_basis": "crossings", "per_minute:car": "4",
        "per_minute:bus": "0", "tracks:car": "2", "tracks:bus": "0",
        "per_minute_history": '[{"minute":1712345640,"crossings":{"car":3},"tracks":{"car":5}}]'}


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("record", ALL, ids=lambda x: type(x).__name__)
def test_round_trip_as_stored(record):
    assert type(record).from_fields(stored(record.to_fields())) == record
    assert type(record).from_fields(record.to_fields()) == record  # what a record wrote, unencoded


@pytest.mark.redis
def test_round_trip_through_redis(r, prefix):
    keys = Keys(prefix)
    for record in STRICT:
        entry_id = r.xadd(keys.dead_letter_stream("cam-1"), record.to_fields())
        (_, fields), = r.xrange(keys.dead_letter_stream("cam-1"), entry_id, entry_id)
        assert type(record).from_fields(fields) == record
    for record in (STATUS, COUNTS):
        r.delete(keys.camera_state("cam-1"))
        r.hset(keys.camera_state("cam-1"), mapping=record.to_fields())
        assert type(record).from_fields(r.hgetall(keys.camera_state("cam-1"))) == record


@pytest.mark.unit
def test_records_read_text_and_numbers_as_fixtures_hold_them():
    fixture = {"camera": "street", "seq": 5, "capture_ts": 0.4979, "width": 640, "height": 360,
               "detections": json.dumps([CAR.to_json()])}
    rec = DetectionResult.from_fields(fixture)
    assert (rec.seq, rec.capture_ts, rec.session, rec.done_ts, rec.timings) == (5, 0.4979, "", None, {})
    assert rec.detections == (CAR,)


# -- malformed input -----------------------------------------------------------------------------

BAD_UTF8 = b"\xff\xfe"
DEEP = "[" * 100_000 + "]" * 100_000


def as_bytes(record) -> dict[bytes, bytes]:
    return stored(record.to_fields())


@pytest.mark.unit
@pytest.mark.parametrize("record", STRICT, ids=lambda x: type(x).__name__)
def test_every_missing_field_of_a_strict_record_is_named(record):
    required = {"QueuedFrame": ["camera", "seq", "capture_ts", "width", "height", "payload"],
                "DetectionResult": ["camera", "seq", "capture_ts", "width", "height", "detections"],
                "ShedRecord": list(SHED.to_fields()), "DeadLetter": list(LETTER.to_fields()),
                "AnalyticsEvent": ["type", "camera", "seq", "ts", "track_id", "class_name"]}[type(record).__name__]
    for name in required:
        fields = {k: v for k, v in as_bytes(record).items() if k != name.encode()}
        with pytest.raises(RecordError, match=f"lacks field '{name}'"):
            type(record).from_fields(fields)


@pytest.mark.unit
@pytest.mark.parametrize("record", STRICT, ids=lambda x: type(x).__name__)
def test_bytes_that_are_not_utf8_are_a_record_error(record):
    fields = as_bytes(record)
    with pytest.raises(RecordError, match="not UTF-8"):
        type(record).from_fields({**fields, b"camera": BAD_UTF8})
    with pytest.raises(RecordError, match="not UTF-8"):
        type(record).from_fields({**fields, BAD_UTF8: b"x"})


@pytest.mark.unit
@pytest.mark.parametrize("record, field, value", [
    (FRAME, "seq", "seven"), (FRAME, "seq", "-1"), (FRAME, "capture_ts", "nan"), (FRAME, "width", "6.5"),
    (FRAME, "timings", "{nope"), (FRAME, "timings", '{"capture": "fast"}'), (FRAME, "timings", DEEP),
    (FRAME, "dropped_before", "1e3"), (RESULT, "done_ts", "inf"), (RESULT, "detections", "{nope"),
    (RESULT, "detections", DEEP), (RESULT, "batch", ""), (SHED, "ts", "yesterday"), (LETTER, "payload_bytes", "x"),
    (EVENT, "track_id", "3.5"), (EVENT, "dwell_s", "long"), (RESULT, "seq", "9" * 5000),
], ids=str)
def test_bad_numbers_and_bad_json_name_their_field(record, field, value):
    with pytest.raises(RecordError, match=f"bad value in field '{field}'"):
        type(record).from_fields({**as_bytes(record), field.encode(): value.encode()})


@pytest.mark.unit
@pytest.mark.parametrize("detections, message", [
    ('{"a": 1}', "not a JSON list"),
    ("[5]", "detection 0 is malformed"),
    ('[{"class_name": "car", "score": 0.5}]', "detection 0 is malformed"),
    ('[{"class_name": "car", "score": 0.5, "box": [1, 2, 3]}]', "bad box"),
    ('[{"class_name": "car", "score": 0.5, "box": [10, 10, 5, 20]}]', "bad box"),
    ('[{"class_name": "car", "score": 0.5, "box": [1, 2, Infinity, 4]}]', "bad box"),
    ('[{"class_name": "car", "score": NaN, "box": [1, 2, 3, 4]}]', "bad score"),
    ('[{"class_id": 2.5, "class_name": "car", "score": 0.5, "box": [1, 2, 3, 4]}]', "detection 0 is malformed"),
    ('[{"class_id": true, "class_name": "car", "score": 0.5, "box": [1, 2, 3, 4]}]', "detection 0 is malformed"),
    ("[" * 500 + "]" * 500, "detection 0 is malformed"),
])
def test_malformed_detections(detections, message):
    with pytest.raises(RecordError, match=message):
        DetectionResult.from_fields({**as_bytes(RESULT), b"detections": detections.encode()})


@pytest.mark.unit
@pytest.mark.parametrize("record", ALL, ids=lambda x: type(x).__name__)
def test_fields_that_are_not_a_mapping_are_a_record_error(record):
    for junk in (None, [("camera", "x")], b"camera"):
        with pytest.raises(RecordError, match="not a mapping"):
            type(record).from_fields(junk)


@pytest.mark.unit
def test_a_dead_letter_keeps_what_a_malformed_entry_has():
    letter = DeadLetter.of_entry("si:frames:cam-1", "1-0", "cam-1", {b"camera": BAD_UTF8, b"payload": b"xyz",
                                                                     b"seq": b"3"}, "r" * 5000, "w1", 1.0)
    assert (letter.camera, letter.seq, letter.session, letter.payload_bytes) == ("cam-1", "3", "", 3)
    assert len(letter.reason) == DeadLetter.MAX_REASON


@pytest.mark.unit
def test_the_status_hash_is_read_field_by_field():
    partial = {b"online": b"1", b"fps": b"10.0", b"last_seen_ts": b"12.5"}
    assert CameraStatus.from_fields(partial) == CameraStatus(online=True, fps=10.0, last_seen_ts=12.5)
    junk = {**as_bytes(STATUS), b"fps": b"fast", b"frames": b"nan", b"session": BAD_UTF8, BAD_UTF8: b"1",
            b"last_seq": b"-1"}
    got = CameraStatus.from_fields(junk)
    assert (got.fps, got.frames, got.session, got.last_seq) == (None, None, None, None)
    assert (got.online, got.bytes, got.peer) == (True, 6_000_000, "ipv4:127.0.0.1:5555")


@pytest.mark.unit
def test_the_counts_hash_leaves_out_what_it_cannot_read():
    fields = {"line:road:in:car": "3", "line:road:out:car": "many", "per_minute_history": "{broken",
              "future:field": "1", "congestion": "heavy", "zone:kerb:dwell_s:car": "1.5", "tracks:car": BAD_UTF8,
              "seq": "x"}
    got = AnalyticsCounts.from_fields(fields)
    assert got.lines == {"road": {"in": {"car": 3}}} and got.per_minute_history == ()
    assert got.congestion == "heavy" and got.zones == {"kerb": ZoneTally(dwell_s={"car": 1.5})}
    assert got.tracks == {} and got.seq is None
    assert AnalyticsCounts.from_fields({"per_minute_history": DEEP}).per_minute_history == ()
    assert AnalyticsCounts.from_fields({"per_minute_history": '[{"minute": 60}]'}).per_minute_history == ()


# -- keys and camera ids -------------------------------------------------------------------------


@pytest.mark.unit
def test_keys_of_a_prefix_and_from_the_environment(monkeypatch):
    k = Keys("p")
    # Each camera's keys carry its hash tag {c} (one Redis Cluster slot per camera; docs/redis.md).
    assert (k.frames_stream("c"), k.detections_stream("c"), k.done_key("c", "s", 3)) == (
        "p:frames:{c}", "p:detections:{c}", "p:done:{c}:s:3")
    assert (k.dead_letter_stream("c"), k.dropped_stream("c"), k.live_detections, k.live_events, k.cameras) == (
        "p:deadletter:{c}", "p:dropped:{c}", "p:live:detections", "p:live:events", "p:cameras")
    assert (k.camera_state("c"), k.snapshot("c"), k.events_stream("c"), k.counts("c")) == (
        "p:camera:{c}", "p:snapshot:{c}", "p:events:{c}", "p:counts:{c}")
    assert (k.analytics_state("c"), k.analytics_owner("c"), k.scan_pattern) == (
        "p:analytics:state:{c}", "p:analytics:owner:{c}", "p:*")
    assert Keys.camera_of(k.done_key("cam-1", "s", 3)) == "cam-1" and Keys.camera_of(k.cameras) == ""
    assert (k.FRAMES_GROUP, Keys.ANALYTICS_GROUP) == ("workers", "analytics")
    monkeypatch.delenv(PREFIX_ENV, raising=False)
    assert Keys.from_env() == Keys("si")
    monkeypatch.setenv(PREFIX_ENV, "other")
    assert Keys.from_env().cameras == "other:cameras"


@pytest.mark.unit
@pytest.mark.parametrize("camera, ok", [
    ("cam-1", True), ("A.b_c-9", True), ("x" * 64, True), ("", False), ("x" * 65, False), ("caméra", False),
    ("cam٣", False), ("cam 1", False), ("cam:1", False), ("cam/1", False), ("cam1\n", False),
])
def test_one_camera_id_rule_everywhere(camera, ok):
    assert valid_camera_id(camera) is ok
    try:
        CameraConfig(id=camera, url="x")
        config_ok = True
    except ValidationError:
        config_ok = False
    assert config_ok is ok


@pytest.mark.unit
def test_the_api_checks_camera_ids_with_the_same_pattern():
    schema = create_app(keys=Keys("unused")).openapi()
    (param,) = schema["paths"]["/api/cameras/{camera}"]["get"]["parameters"]
    assert param["schema"]["pattern"] == CAMERA_ID_PATTERN


@pytest.mark.unit
def test_sessions_are_empty_or_ascii():
    assert valid_session("") and valid_session("s-1.x_2") and not valid_session("sé") and not valid_session("s" * 65)
