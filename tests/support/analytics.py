"""The street detections and their hand count, shared by the analytics tests.

`street_records()` are the project's YOLOv5s detections on every frame of the street footage
(tests/fixtures/street_detections.json, made by tests/fixtures/make_street_detections.py), as the
workers write them. How LINE was drawn and HAND counted: tests/test_analytics_video.py.
"""

from __future__ import annotations

import json

import pytest
import redis

from split_infer.keys import Keys
from support.data import ROOT, street_video

FIXTURE = ROOT / "tests/fixtures/street_detections.json"
# (frame, direction) of each vehicle that crosses LINE, counted by hand.
HAND = [(42, "out"), (120, "in"), (138, "out"), (250, "out"), (290, "out"), (445, "in"), (535, "in"), (621, "in")]
LINE = {"name": "road", "a": (330, 60), "b": (330, 250)}


def street_records() -> list[dict]:
    """One detection record per frame of the street footage (734), fields as the worker writes them."""
    video = street_video()
    if not FIXTURE.exists():
        pytest.fail(f"{FIXTURE} is missing: run tests/fixtures/make_street_detections.py")
    data = json.loads(FIXTURE.read_text())
    assert data["meta"]["video"] == video.name and data["meta"]["frames"] == 734
    return [{**f, "detections": json.dumps(f["detections"])} for f in data["frames"]]


def feed(r: redis.Redis, keys: Keys, records: list[dict]) -> None:
    """Write `records` to their cameras' detection streams, as the workers do."""
    pipe = r.pipeline()
    for rec in records:
        pipe.xadd(keys.detections_stream(rec["camera"]), {k: str(v) for k, v in rec.items()})
    pipe.execute()
