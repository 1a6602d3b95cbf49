"""The edge's precision is chosen by measurement: fastest within tolerance, explicit overrides, cached."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from split_infer.config import EdgeConfig
from split_infer.edge import precision as P
from split_infer.edge.node import load_extractor
from split_infer.model.export import export_edge
from support.data import street_video, yolov5s_ready

pytestmark = pytest.mark.unit

REF = {"x4": np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 4, 4, 4)}


def _ir(path, precision="fp32", weights=b"w", **extra):
    path.mkdir(parents=True)
    meta = {"model": "yolov5s", "cut": 4, "imgsz": [320, 192], "outputs": [{"name": "x4"}],
            "codec_model": None, "precision": precision, **extra}
    (path / "edge.json").write_text(json.dumps(meta))
    (path / "edge.xml").write_text("<xml/>")
    (path / "edge.bin").write_bytes(weights)
    return path


def _runner(ms, err, calls=None):
    """Injected timings (ms per candidate) and feature errors relative to f32."""
    def run(c):
        if calls is not None:
            calls.append(c.name)
        return ms[c.name], [{"x4": REF["x4"] * (1 + err.get(c.name, 0.0))}]
    return run


def _select(ir, tmp_path, run, setting="auto", caps=("FP32", "BF16"), **kw):
    return P.select_precision(ir, "CPU", setting, run=run, capabilities=list(caps), ov_version="test",
                              cache=tmp_path / "cache", **kw)


def test_fastest_within_tolerance_wins(tmp_path):
    ir = _ir(tmp_path / "m")
    choice = _select(ir, tmp_path, _runner({"f32": 20.0, "bf16": 12.0}, {"bf16": 0.01}))
    assert (choice.precision, choice.hint, choice.source) == ("bf16", "bf16", "measured")
    assert {m.name: m.ok for m in choice.measurements} == {"f32": True, "bf16": True}


def test_slower_bf16_loses_to_f32(tmp_path):  # the Xeon of issue 14: bf16 25.3 ms, f32 20.3 ms
    choice = _select(_ir(tmp_path / "m"), tmp_path, _runner({"f32": 20.3, "bf16": 25.3}, {"bf16": 0.01}))
    assert choice.precision == "f32"


def test_faster_candidate_out_of_tolerance_is_refused(tmp_path):
    ir = _ir(tmp_path / "m")
    _ir(tmp_path / "m-int8", "int8")
    run = _runner({"f32": 20.0, "bf16": 15.0, "int8": 8.0}, {"bf16": 0.2, "int8": 0.5})
    choice = _select(ir, tmp_path, run)
    assert choice.precision == "f32"
    assert {m.name: m.ok for m in choice.measurements} == {"f32": True, "bf16": False, "int8": False}


def test_int8_uses_export_agreement_when_recorded(tmp_path):
    ir = _ir(tmp_path / "m")
    int8 = _ir(tmp_path / "m-int8", "int8", agreement=0.98)
    run = _runner({"f32": 20.0, "bf16": 25.0, "int8": 8.0}, {"int8": 0.5})  # features far off, agreement fine
    choice = _select(ir, tmp_path, run)
    assert (choice.precision, choice.model_dir, choice.hint) == ("int8", int8, None)
    m = {m.name: m for m in choice.measurements}["int8"]
    assert m.fidelity_kind == "detection_agreement@export" and m.fidelity == 0.98


def test_int8_below_agreement_floor_is_refused(tmp_path):
    ir = _ir(tmp_path / "m")
    _ir(tmp_path / "m-int8", "int8", agreement=0.96)
    choice = _select(ir, tmp_path, _runner({"f32": 20.0, "int8": 8.0}, {}), caps=("FP32",))
    assert choice.precision == "f32"


def test_int8_ir_for_another_size_is_not_a_candidate(tmp_path):
    ir = _ir(tmp_path / "m")
    _ir(tmp_path / "m-int8", "int8", imgsz=[640, 384])
    assert [c.name for c in P.candidates(ir, ["FP32", "BF16"])] == ["f32", "bf16"]
    assert [c.name for c in P.candidates(ir, ["FP32"])] == ["f32"]  # bf16 only where the CPU has it


def test_explicit_setting_overrides_without_measuring(tmp_path):
    ir = _ir(tmp_path / "m")
    int8 = _ir(tmp_path / "m-int8", "int8")
    calls: list[str] = []
    run = _runner({"f32": 5.0, "bf16": 50.0, "int8": 50.0}, {}, calls)
    assert _select(ir, tmp_path, run, "bf16").precision == "bf16"
    choice = _select(ir, tmp_path, run, "int8")
    assert (choice.precision, choice.model_dir, choice.source) == ("int8", int8, "explicit")
    assert calls == []
    with pytest.raises(ValueError, match="no INT8 IR"):
        _select(_ir(tmp_path / "other"), tmp_path, run, "int8")
    with pytest.raises(ValueError, match="expected one of"):
        _select(ir, tmp_path, run, "fp16")
    assert EdgeConfig().precision == "auto" and EdgeConfig(precision="f32").precision == "f32"


def test_cache_hit_avoids_remeasuring_and_key_follows_ir_and_cpu(tmp_path, monkeypatch):
    ir = _ir(tmp_path / "m")
    calls: list[str] = []
    run = _runner({"f32": 20.0, "bf16": 12.0}, {}, calls)
    assert _select(ir, tmp_path, run).source == "measured"
    assert calls == ["f32", "bf16"]
    cached = _select(ir, tmp_path, run, frames=lambda: pytest.fail("frames read on a cache hit"))
    assert (cached.precision, cached.source, calls) == ("bf16", "cached", ["f32", "bf16"])
    assert [m.name for m in cached.measurements] == ["f32", "bf16"]
    (ir / "edge.bin").write_bytes(b"other weights")  # a new IR: measured again
    assert _select(ir, tmp_path, run).source == "measured"
    monkeypatch.setattr(P, "cpu_info", lambda: {"model": "another CPU", "flags": []})
    assert _select(ir, tmp_path, run).source == "measured"
    cands = P.candidates(ir, ["FP32"])
    cpu = {"model": "x", "flags": []}
    base = P.cache_key("CPU", cands, cpu, None, "v")
    assert base != P.cache_key("CPU", cands, {**cpu, "flags": ["amx_bf16"]}, None, "v")
    assert base != P.cache_key("CPU", cands, cpu, 1, "v")
    assert base != P.cache_key("GPU", cands, cpu, None, "v")
    assert base == P.cache_key("CPU", cands, dict(cpu), None, "v")


@pytest.mark.e2e
def test_edge_start_measures_records_and_logs_its_precision(tmp_path, monkeypatch, caplog):
    yolov5s_ready()
    ir = export_edge("yolov5s", 4, (320, 192), tmp_path / "ir")
    monkeypatch.setattr(P, "cache_dir", lambda: tmp_path / "cache")  # the choice is recorded here
    cfg = EdgeConfig(model_dir=ir, device="CPU", cameras=[{"id": "cam1", "url": str(street_video())}])
    with caplog.at_level(logging.INFO, logger="split_infer"):
        extractor = load_extractor(cfg)
    assert extractor.precision in ("f32", "bf16")
    records = list((tmp_path / "cache" / "precision").glob("*.json"))
    assert len(records) == 1
    saved = json.loads(records[0].read_text())
    assert saved["precision"] == extractor.precision and saved["cpu"]["model"]
    figures = {m["name"]: m for m in saved["measurements"]}
    assert figures["f32"]["ms"] > 0 and figures["f32"]["ok"]
    if "bf16" in figures:
        assert figures["bf16"]["fidelity"] <= P.FEATURE_REL_TOL["bf16"] or not figures["bf16"]["ok"]
    text = caplog.text
    assert f"edge precision {extractor.precision} (measured)" in text and "f32" in text and " ms " in text
    assert "street" in text  # measured on real frames from the camera
    print(json.dumps(saved, indent=2))  # the figures on this machine (pytest -s)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="split_infer"):
        again = load_extractor(cfg)
    assert again.precision == extractor.precision and "(cached)" in caplog.text
    x = np.zeros((1, 3, 192, 320), np.float32)
    assert again.infer(x)["x4"].shape == (1, 128, 24, 40)


@pytest.mark.parametrize(("recorded", "admitted"), [(0.97, True), (0.9999, True), (0.9699, False), (0.5, False)])
def test_int8_admitted_only_at_or_above_the_agreement_floor(tmp_path, recorded, admitted, caplog):
    assert P.INT8_AGREEMENT_FLOOR == 0.97  # the floor issue 14 sets; docs/pipeline.md says so
    ir = _ir(tmp_path / "m")
    _ir(tmp_path / "m-int8", "int8", agreement=recorded)
    run = _runner({"f32": 20.0, "int8": 8.0}, {"int8": 0.0})  # identical features: only agreement decides
    with caplog.at_level(logging.INFO, logger="split_infer"):
        choice = _select(ir, tmp_path, run, caps=("FP32",))
    assert choice.precision == ("int8" if admitted else "f32")
    m = {m.name: m for m in choice.measurements}["int8"]
    assert (m.ok, m.fidelity, m.fidelity_kind) == (admitted, recorded, "detection_agreement@export")
    if admitted:
        assert m.reason == "" and "excluded" not in caplog.text
    else:
        assert f"{recorded:.4f}" in m.reason and "below the floor 0.97" in m.reason
        assert "edge precision int8 excluded" in caplog.text and m.reason in caplog.text


NOT_MEASURED = {"agreement": None, "agreement_note": "not measured: the IR ends in a codec model"}


@pytest.mark.parametrize("meta", [{}, NOT_MEASURED])
def test_int8_without_recorded_agreement_is_excluded_however_close_its_features(tmp_path, meta, caplog):
    ir = _ir(tmp_path / "m")
    _ir(tmp_path / "m-int8", "int8", **meta)
    run = _runner({"f32": 20.0, "int8": 8.0}, {"int8": 0.0})
    with caplog.at_level(logging.INFO, logger="split_infer"):
        choice = _select(ir, tmp_path, run, caps=("FP32",))
    assert choice.precision == "f32"
    m = {m.name: m for m in choice.measurements}["int8"]
    assert not m.ok and "no detection agreement" in m.reason and "split-infer export --int8" in m.reason
    assert meta.get("agreement_note", "exported before it was measured") in m.reason
    assert "edge precision int8 excluded" in caplog.text


def test_bf16_exclusion_is_logged_with_its_error(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="split_infer"):
        choice = _select(_ir(tmp_path / "m"), tmp_path, _runner({"f32": 20.0, "bf16": 10.0}, {"bf16": 0.2}))
    m = {m.name: m for m in choice.measurements}["bf16"]
    assert choice.precision == "f32" and not m.ok and "above 0.05" in m.reason
    assert "edge precision bf16 excluded" in caplog.text


def test_export_agreement_measure_is_the_projects_pooled_agreement():
    from evaluation import TRAFFIC_CLASSES, pooled_agreement
    from split_infer.model.agreement import pooled_ap

    rng = np.random.default_rng(3)

    def frame(n):
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(10, 80, (n, 2))
        cls = rng.choice([0, 2, 7, 15], n)  # 15 (cat) is no traffic class: ignored by both
        return np.column_stack([xy, xy + wh, rng.uniform(0.001, 1, n), cls]).astype(np.float32)

    ref = [frame(int(rng.integers(0, 12))) for _ in range(40)]
    jitter = [r + np.column_stack([rng.normal(0, 4, (len(r), 4)), rng.normal(0, 0.1, (len(r), 1)),
                                   np.zeros((len(r), 1))]).astype(np.float32) for r in ref]
    pred = [np.concatenate([j, frame(int(rng.integers(0, 3)))]) for j in jitter]
    ours = pooled_ap(ref, pred)
    assert 0.3 < ours < 0.99  # neither trivial end: the comparison below means something
    assert ours == pytest.approx(pooled_agreement(ref, pred, TRAFFIC_CLASSES), abs=1e-12)
    assert pooled_ap(ref, ref) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one entry per frame"):
        pooled_ap(ref, pred[:-1])


@pytest.mark.e2e
def test_int8_export_records_agreement_on_held_out_frames(tmp_path):
    yolov5s_ready()
    video = street_video()
    out = export_edge("yolov5s", 4, (320, 192), tmp_path / "ir-int8", int8=True, calibration=video,
                      calibration_frames=24)
    meta = json.loads((out / "edge.json").read_text())
    assert meta["precision"] == "int8" and 0.0 <= meta["agreement"] <= 1.0
    held = meta["agreement_frames"]
    calibrated = set(range(0, 3 * 24, 3))  # what NNCF saw
    scored = set(range(held["first"], held["first"] + held["stride"] * held["count"], held["stride"]))
    assert held["count"] >= 30 and not calibrated & scored and held["video"] == str(video)
    print(json.dumps({k: meta[k] for k in ("agreement", "agreement_frames", "agreement_measure")}))
    value, ok, reason = P.int8_admission(meta)
    assert (value, ok) == (meta["agreement"], meta["agreement"] >= P.INT8_AGREEMENT_FLOOR)
    assert ok or "below the floor" in reason
