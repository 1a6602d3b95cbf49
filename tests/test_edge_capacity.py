"""benchmarks/edge_capacity.py: its arithmetic on scraped metrics, and a short real run (e2e)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

import edge_capacity as E
from split_infer.edge.precision import PRECISIONS
from support.data import ROOT, street_video


@pytest.mark.unit
def test_quantile_interpolates_in_cumulative_buckets():
    buckets = [(0.1, 0.0), (0.2, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert E.quantile(buckets, 0.5) == pytest.approx(0.2)
    assert E.quantile(buckets, 0.25) == pytest.approx(0.15)
    assert E.quantile(buckets, 0.99) == pytest.approx(0.5 + 0.5 * 9 / 10)
    assert E.quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert E.quantile([(0.1, 0.0), (float("inf"), 4.0)], 0.5) == 0.1  # past the last bound: the bound


@pytest.mark.unit
def test_figures_are_differences_over_the_window_and_skips_break_sustain():
    a = {("frames", "cam0", "acked"): 100.0, ("frames", "cam1", "acked"): 100.0, ("sum", "extract"): 1.0,
         ("count", "extract"): 200.0, ("bytes", "cam0", "payload"): 1000.0,
         ("bucket", "sent_after_capture", 0.1): 150.0, ("bucket", "sent_after_capture", float("inf")): 200.0}
    b = {("frames", "cam0", "acked"): 200.0, ("frames", "cam1", "acked"): 196.0, ("sum", "extract"): 3.0,
         ("count", "extract"): 396.0, ("bytes", "cam0", "payload"): 51000.0,
         ("bucket", "sent_after_capture", 0.1): 246.0, ("bucket", "sent_after_capture", float("inf")): 396.0}
    f = E.figures(a, b, ["cam0", "cam1"], 10.0, 10.0, edge_cpu_s=15.0)
    assert f["fps_per_camera"] == {"cam0": 10.0, "cam1": 9.6} and f["fps_total"] == 19.6
    assert f["per_camera"]["cam0"]["payload_bytes_per_s"] == 5000.0
    assert f["stage_seconds"]["extract"] == {"seconds_per_s": 0.2, "ms_per_frame": 10.2, "frames": 196}
    assert f["edge_cpu"]["cores_busy"] == 1.5 and f["capture_to_send_ms"]["frames"] == 196
    assert f["capture_to_send_ms"]["p50"] == pytest.approx(100.0)  # 96 of 196 under 0.1 s: rank 98 past it
    assert f["sustained"] and f["skipped_total"] == 0
    b[("frames", "cam1", "skipped")] = 1.0
    assert not E.figures(a, b, ["cam0", "cam1"], 10.0, 10.0, 15.0)["sustained"]
    b[("frames", "cam1", "skipped")] = 0.0
    b[("frames", "cam1", "acked")] = 190.0  # 9.0 fps: below 95 % of 10
    assert not E.figures(a, b, ["cam0", "cam1"], 10.0, 10.0, 15.0)["sustained"]


@pytest.mark.unit
def test_bad_arguments_are_refused():
    for bad in (["--cameras", "0"], ["--duration", "-1"], ["--warmup", "-2"]):
        with pytest.raises(SystemExit):
            E.parse_args(bad)


@pytest.mark.e2e
def test_one_camera_short_run_reports_every_figure(tmp_path):
    street_video()  # the shared footage: a clear failure when missing
    if shutil.which("ffmpeg") is None:
        pytest.fail("ffmpeg missing: apt-get install -y ffmpeg")
    out = tmp_path / "capacity.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "edge_capacity.py"), "--cameras", "1", "--duration", "5",
           "--warmup", "1", "--clip-seconds", "4", "--cache", str(tmp_path / "clips"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    assert {"machine", "setup", "fps_per_camera", "skipped_total", "per_camera", "stage_seconds", "edge_cpu",
            "capture_to_send_ms", "precision", "sustained"} <= set(res)
    assert res["machine"]["cpu"] and "flags" in res["machine"] and res["setup"]["threads"]
    assert res["precision"]["used"] in PRECISIONS
    assert res["fps_per_camera"]["cam0"] > 0  # frames flowed through the real edge to the real ingest
    cam = res["per_camera"]["cam0"]
    assert cam["payload_bytes_per_s"] > 0 and cam["skipped"] >= 0
    assert all(res["stage_seconds"][s]["frames"] > 0 for s in E.STAGES)
    lat = res["capture_to_send_ms"]
    assert lat["frames"] > 0 and 0 < lat["p50"] <= lat["p99"]
