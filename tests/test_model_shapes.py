"""The crossing shapes without torch in the asking process (the ingest's start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from split_infer.model import shapes as shapes_mod
from support.data import yolov5s_ready

pytestmark = pytest.mark.unit

CHECK = """
import json, sys
from split_infer.model.shapes import expected_shapes
s = expected_shapes("yolov5s", 4, (320, 192))
print(json.dumps({"shapes": {k: list(v) for k, v in s.items()}, "torch": "torch" in sys.modules}))
"""


@pytest.mark.e2e  # starts real servers or a torch child: out of make test-fast
def test_shapes_come_from_a_child_and_match_the_model_without_torch_here(tmp_path):
    yolov5s_ready()
    # A fresh cache dir, so the shapes are measured, with the converted weights linked into it.
    weights = shapes_mod.converted_path("yolov5s")
    env = {**os.environ, "SPLIT_INFER_CACHE": str(tmp_path)}
    target = tmp_path / weights.relative_to(shapes_mod.cache_dir())
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(weights)
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["torch"] is False  # the asking process never imported torch

    from split_infer.model.loading import load_model  # torch, for the reference only
    from split_infer.model.partition import crossing_shapes

    want = crossing_shapes(load_model("yolov5s"), 4, (320, 192))
    assert {k: tuple(v) for k, v in got["shapes"].items()} == want
    assert list((tmp_path / "shapes").glob("yolov5s-cut4-320x192-*.json")), "the answer was not cached"


def test_a_cached_answer_needs_no_child_and_a_damaged_one_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLIT_INFER_CACHE", str(tmp_path))
    path = shapes_mod.cache_path("some-model.pt", 4, (320, 192))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"x4": [128, 24, 40]}))
    calls = []
    monkeypatch.setattr(shapes_mod.subprocess, "run", lambda *a, **k: calls.append(a))
    assert shapes_mod.expected_shapes("some-model.pt", 4, (320, 192)) == {"x4": (128, 24, 40)}
    assert calls == []

    path.write_text("{not json")

    class Done:
        returncode, stdout, stderr = 0, json.dumps({"x4": [128, 24, 40]}), ""

    monkeypatch.setattr(shapes_mod.subprocess, "run", lambda *a, **k: calls.append(a) or Done())
    assert shapes_mod.expected_shapes("some-model.pt", 4, (320, 192)) == {"x4": (128, 24, 40)}
    assert len(calls) == 1 and json.loads(path.read_text()) == {"x4": [128, 24, 40]}


def test_a_failing_child_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLIT_INFER_CACHE", str(tmp_path))
    with pytest.raises(shapes_mod.ShapesError, match="cannot work out the shapes of no-such-model.pt cut 4"):
        shapes_mod.expected_shapes("no-such-model.pt", 4, (320, 192))
