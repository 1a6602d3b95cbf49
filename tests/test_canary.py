"""Canary rollout of a worker model: the rule (promote, roll back, wait), the AnalysisTemplate
generated from the same thresholds, the shadow-agreement measure, and a degraded codec model run
on real frames through real workers, whose agreement falls and whose verdict is rollback."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import redis
import yaml
from prometheus_client import REGISTRY
from pydantic import ValidationError

from evaluation import f1_score
from split_infer.cloud.canary import (
    TEMPLATE_PATH,
    THRESHOLDS,
    CanaryMeasurement,
    CanaryThresholds,
    Decision,
    analysis_template,
    decide,
)
from split_infer.cloud.canary import main as canary_main
from split_infer.cloud.release import CodecModel, derive_version, load_release
from split_infer.cloud.shadow import MatchCounts, RollingAgreement, Shadow, match_counts
from split_infer.codec import make_encoder
from split_infer.codec.basis import SHIPPED_DIR, Basis
from split_infer.config import CloudConfig, ConfigError, ModelConfig
from split_infer.keys import Keys
from split_infer.records import DetectionResult
from support.data import ROOT, street_video, yolov5s_ready

SCHEMA = ROOT / "deploy" / "k8s" / "schemas" / "argoproj.io_v1alpha1_analysistemplate.json"
SHIPPED = "yolov5s-cut4-street"  # the shipped video-codec basis: the stable codec model


def measured(agreement, frames=1000, p95=0.2, latency_frames=1000) -> CanaryMeasurement:
    return CanaryMeasurement(agreement, frames, p95, latency_frames)


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("m", "want"), [
    (measured(THRESHOLDS.agreement_floor), Decision.PROMOTE),  # at the floor: holds
    (measured(1.0, p95=THRESHOLDS.latency_p95_ceiling_s), Decision.PROMOTE),  # at the ceiling: holds
    (measured(math.nextafter(THRESHOLDS.agreement_floor, 0)), Decision.ROLLBACK),
    (measured(1.0, p95=math.nextafter(THRESHOLDS.latency_p95_ceiling_s, 9)), Decision.ROLLBACK),
    (measured(0.5, p95=3.0), Decision.ROLLBACK),
    (measured(1.0, frames=THRESHOLDS.min_shadow_frames - 1), Decision.WAIT),
    (measured(1.0, latency_frames=THRESHOLDS.min_latency_frames - 1), Decision.WAIT),
    (measured(None), Decision.WAIT),
    (measured(float("nan")), Decision.WAIT),  # Argo: a NaN result is inconclusive
    (measured(1.0, p95=None), Decision.WAIT),
    # One metric worse than its threshold rolls back even while the other still waits for samples.
    (measured(0.6, latency_frames=0, p95=None), Decision.ROLLBACK),
    (measured(0.2, frames=THRESHOLDS.min_shadow_frames - 1, p95=0.9), Decision.ROLLBACK),
    # Too few shadowed frames: a low agreement on them is not judged yet.
    (measured(0.2, frames=THRESHOLDS.min_shadow_frames - 1), Decision.WAIT),
])
def test_the_rule_promotes_rolls_back_or_waits(m, want):
    verdict = decide(m)
    assert verdict.decision is want, verdict.reasons
    assert len(verdict.reasons) == 2  # one line per metric, for the operator


@pytest.mark.unit
@pytest.mark.parametrize("bad", [
    dict(shadow_agreement=1.5), dict(shadow_agreement=-0.1), dict(latency_p95_s=-1.0),
    dict(latency_p95_s=float("inf")), dict(shadow_frames=-1), dict(latency_frames=-5)])
def test_impossible_measurements_are_refused(bad):
    base = dict(shadow_agreement=0.99, shadow_frames=300, latency_p95_s=0.1, latency_frames=300)
    with pytest.raises(ValueError):
        CanaryMeasurement(**{**base, **bad})


@pytest.mark.unit
@pytest.mark.parametrize("bad", [dict(agreement_floor=0), dict(agreement_floor=1.2), dict(latency_p95_ceiling_s=0),
                                 dict(latency_p95_ceiling_s=float("nan")), dict(min_shadow_frames=0),
                                 dict(window="ten minutes")])
def test_impossible_thresholds_are_refused(bad):
    with pytest.raises(ValueError):
        CanaryThresholds(**bad)


@pytest.mark.unit
def test_the_reference_design_thresholds():
    assert THRESHOLDS.latency_p95_ceiling_s == 0.5  # the reference design's 500 ms, as the HPA's target
    assert THRESHOLDS.agreement_floor == 0.95  # justified in canary.py's docstring by measurement


@pytest.mark.unit
def test_decide_command_prints_the_verdict(capsys):
    assert canary_main(["decide", "--agreement", "0.5", "--shadow-frames", "500", "--latency-p95", "0.1",
                        "--latency-frames", "500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["decision"] == "rollback" and out["thresholds"]["agreement_floor"] == THRESHOLDS.agreement_floor
    with pytest.raises(SystemExit):
        canary_main(["decide", "--agreement", "7", "--shadow-frames", "500", "--latency-frames", "500"])


# -- the AnalysisTemplate: generated from the same thresholds --------------------------------------


def argo_condition(expr: str, value: float) -> bool:
    """Argo's expr condition on a one-element Prometheus result, for the subset the template uses
    (result[0], isNaN, !, &&, comparisons, numbers); anything else fails the test."""
    if not re.fullmatch(r"[!isNaN()\[\]result0-9.&<>= ]+", expr):
        pytest.fail(f"condition uses more than the checked subset: {expr!r}")
    py = expr.replace("&&", " and ").replace("!isNaN", " not isNaN")
    return bool(eval(py, {"__builtins__": {}}, {"isNaN": math.isnan, "result": [value]}))  # checked subset only


def argo_verdict(metric: dict, value: float) -> str:
    ok, bad = argo_condition(metric["successCondition"], value), argo_condition(metric["failureCondition"], value)
    assert not (ok and bad), f"{metric['name']}: both conditions hold for {value}"
    return "success" if ok else "failure" if bad else "inconclusive"


@pytest.mark.unit
def test_the_committed_analysis_template_is_the_generated_one():
    assert TEMPLATE_PATH.read_text() == analysis_template(), (
        f"{TEMPLATE_PATH} differs from split_infer/cloud/canary.py's THRESHOLDS: run "
        "`python -m split_infer.cloud.canary template`")
    assert canary_main(["template", "--check"]) == 0


@pytest.mark.unit
@pytest.mark.parametrize("t", [THRESHOLDS, CanaryThresholds(agreement_floor=0.9, latency_p95_ceiling_s=0.25,
                                                            min_shadow_frames=50, min_latency_frames=70,
                                                            window="5m")])
def test_the_template_applies_the_rule_of_decide(t):
    doc = yaml.safe_load(analysis_template(t))
    metrics = {m["name"]: m for m in doc["spec"]["metrics"]}
    assert set(metrics) == {"shadow-agreement", "latency-p95"}
    agreement, latency = metrics["shadow-agreement"], metrics["latency-p95"]
    # The queries name the worker's series, count the samples over the window, and yield NaN
    # while there are too few (the Wait of decide(): Argo's inconclusive).
    q = agreement["provider"]["prometheus"]["query"]
    assert "splitinfer_shadow_agreement_ratio{" in q and "splitinfer_shadow_frames_total{" in q
    assert f"[{t.window}])) >= {t.min_shadow_frames})" in q and q.rstrip().endswith("or on() vector(NaN)")
    q = latency["provider"]["prometheus"]["query"]
    assert "histogram_quantile(0.95," in q and "splitinfer_inference_latency_seconds_bucket{" in q
    assert f"[{t.window}])) >= {t.min_latency_frames})" in q and q.rstrip().endswith("or on() vector(NaN)")
    for m in metrics.values():
        assert m["failureLimit"] == 0  # one failed measurement rolls back
        assert m["inconclusiveLimit"] >= m["count"]  # waiting for samples never ends the run by itself
    enough = dict(shadow_frames=t.min_shadow_frames, latency_frames=t.min_latency_frames)
    for value in (0.0, 0.5, t.agreement_floor - 1e-6, t.agreement_floor, 0.999, 1.0, float("nan")):
        python = decide(CanaryMeasurement(value, latency_p95_s=0.0, **enough), t).decision
        assert {"success": Decision.PROMOTE, "failure": Decision.ROLLBACK,
                "inconclusive": Decision.WAIT}[argo_verdict(agreement, value)] is python, value
    for value in (0.0, t.latency_p95_ceiling_s / 2, t.latency_p95_ceiling_s, t.latency_p95_ceiling_s + 1e-6, 9.0,
                  float("nan")):
        python = decide(CanaryMeasurement(1.0, latency_p95_s=value, **enough), t).decision
        assert {"success": Decision.PROMOTE, "failure": Decision.ROLLBACK,
                "inconclusive": Decision.WAIT}[argo_verdict(latency, value)] is python, value


@pytest.mark.unit
def test_the_analysis_template_is_valid_for_argo_rollouts():
    doc = yaml.safe_load(TEMPLATE_PATH.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))  # the vendored CRD schema
    assert (doc["apiVersion"], doc["kind"]) == ("argoproj.io/v1alpha1", "AnalysisTemplate")
    args = {a["name"]: a.get("value") for a in doc["spec"]["args"]}
    assert "canary-hash" in args and args["canary-hash"] is None  # the Rollout must pass it
    component = yaml.safe_load((TEMPLATE_PATH.parent / "kustomization.yaml").read_text())
    assert component["kind"] == "Component" and component["resources"] == [TEMPLATE_PATH.name]


# -- the agreement measure -----------------------------------------------------------------------


def det(cls: str, box, score=0.9) -> dict:
    return {"class_id": {"car": 2, "person": 0, "bus": 5}[cls], "class_name": cls, "score": score, "box": list(box)}


def as_array(dets: list[dict]) -> np.ndarray:
    return np.array([[*d["box"], d["score"], d["class_id"]] for d in dets], np.float32).reshape(-1, 6)


@pytest.mark.unit
def test_match_counts_by_class_and_iou():
    stable = [det("car", (0, 0, 10, 10)), det("car", (20, 0, 30, 10)), det("person", (0, 20, 5, 30))]
    canary = [det("car", (1, 0, 11, 10)),  # IoU 0.82 with the first car
              det("bus", (20, 0, 30, 10)),  # right place, wrong class
              det("person", (0, 26, 5, 36))]  # IoU 0.25: a miss and a false box
    assert match_counts(stable, canary) == MatchCounts(tp=1, fp=2, fn=2)
    assert match_counts(stable, stable).f1 == 1.0
    assert match_counts([], []).f1 == 1.0 and match_counts(stable, []).f1 == 0.0


@pytest.mark.unit
def test_agreement_is_evaluations_f1_and_rolls_over_its_window():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(30):  # random scenes; the canary jitters, drops and invents boxes
        stable = [det(str(rng.choice(["car", "person", "bus"])), (x, y, x + w, y + h), float(rng.uniform(0.3, 1)))
                  for x, y, w, h in rng.uniform(0, 300, (int(rng.integers(0, 6)), 4))]
        canary = [dict(d, box=list(np.add(d["box"], rng.normal(0, 8, 4)))) for d in stable if rng.random() < 0.8]
        canary += [det("car", (5, 5, 50, 50), 0.5)] if rng.random() < 0.3 else []
        frames.append((stable, canary))
    window = RollingAgreement(10)
    for stable, canary in frames:
        window.add(match_counts(stable, canary))
    last = frames[-10:]
    want = f1_score([as_array(s) for s, _ in last], [as_array(c) for _, c in last], classes=(0, 2, 5), conf=0.0)
    assert window.frames == 10 and window.value == pytest.approx(want)
    assert 0.3 < want < 0.99  # the scenes do disagree, and not completely
    assert RollingAgreement(5).value is None
    with pytest.raises(ValueError):
        RollingAgreement(0)


@pytest.mark.unit
def test_a_failing_stable_model_costs_only_shadow_data():
    def broken(feats, sizes):
        raise RuntimeError("stable weights unreadable")

    shadow = Shadow(broken, "canary-unit-1", "stable-unit-1", sample_ratio=1.0)
    before = REGISTRY.get_sample_value("splitinfer_shadow_frames_total", {"model_version": "canary-unit-1"}) or 0
    assert shadow.observe({"x4": np.zeros((2, 1))}, [(640, 360)] * 2, [[], []]) == 0
    assert shadow.failures == 1 and shadow.agreement.value is None
    after = REGISTRY.get_sample_value("splitinfer_shadow_frames_total", {"model_version": "canary-unit-1"}) or 0
    assert after == before
    with pytest.raises(ValueError):
        Shadow(broken, "a", "b", sample_ratio=0)


@pytest.mark.unit
def test_shadow_samples_about_its_share_of_frames():
    calls = []

    def stable(feats, sizes):
        calls.append(len(sizes))
        return [[det("car", (0, 0, 10, 10))] for _ in sizes]

    shadow = Shadow(stable, "canary-unit-2", "stable-unit-2", sample_ratio=0.1, seed=1)
    for _ in range(250):
        shadow.observe({"x4": np.zeros((8, 1))}, [(640, 360)] * 8, [[det("car", (0, 0, 10, 10))]] * 8)
    assert 140 < sum(calls) < 260  # 10% of 2000 frames
    assert REGISTRY.get_sample_value("splitinfer_shadow_agreement_ratio",
                                     {"model_version": "canary-unit-2", "stable_version": "stable-unit-2"}) == 1.0


# -- model versions and codec models ---------------------------------------------------------------


@pytest.mark.unit
def test_the_version_changes_with_the_model_and_only_then(tmp_path):
    shipped = CodecModel.load(SHIPPED)
    m = ModelConfig()
    v = derive_version(m, shipped)
    assert v == derive_version(ModelConfig(), CodecModel.load(str(SHIPPED_DIR / f"{SHIPPED}.basis.npz")))
    assert re.fullmatch(r"yolov5s-[0-9a-f]{10}", v)
    others = {derive_version(m, None), derive_version(m.model_copy(update={"conf": 0.3}), shipped),
              derive_version(m.model_copy(update={"cut": 6}), shipped),
              derive_version(m, CodecModel.load(str(degraded_basis(tmp_path))))}
    assert v not in others and len(others) == 4


@pytest.mark.unit
def test_release_settings_are_checked():
    with pytest.raises(ValidationError):
        CloudConfig.model_validate({"worker": {"release": {"model_version": "has spaces"}}})
    with pytest.raises(ValidationError):
        CloudConfig.model_validate({"worker": {"release": {"shadow": {"sample_ratio": 0}}}})
    with pytest.raises(ValidationError):
        CloudConfig.model_validate({"worker": {"release": {"shadow": {"stable": "yolov5s"}}}})
    with pytest.raises(ConfigError, match="codec model 'no-such-basis'"):
        CodecModel.load("no-such-basis")


@pytest.mark.redis
def test_the_api_shows_each_records_model_version(r, keys):
    import asyncio

    import httpx

    from split_infer.api.app import create_app
    from support.redisdb import REDIS_URL

    cam, t0 = "cam-1", time.time() - 5
    old = DetectionResult(camera=cam, session="s1", seq=0, capture_ts=t0, width=640, height=360, detections=(),
                          done_ts=t0 + 0.1)
    new = DetectionResult(camera=cam, session="s1", seq=1, capture_ts=t0 + 1, width=640, height=360, detections=(),
                          done_ts=t0 + 1.1, model_version="yolov5s-canary01")
    r.sadd(keys.cameras, cam)
    for rec in (old, new):
        fields = {k: v for k, v in rec.to_fields().items() if rec.seq or k != "model_version"}  # seq 0: an old worker's
        r.xadd(keys.detections_stream(cam), fields)

    async def get() -> tuple[dict, dict, dict]:
        app = create_app(REDIS_URL, keys=keys)
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
                latest = (await c.get(f"/api/v1/cameras/{cam}/detections/latest")).json()
                history = (await c.get(f"/api/v1/cameras/{cam}/detections",
                                       params={"start": t0 - 1, "end": time.time() + 1})).json()
                cameras = (await c.get("/api/v1/cameras")).json()
                return latest, history, cameras
        finally:
            await app.state.store.r.aclose()
            await app.state.hub.store.r.aclose()

    latest, history, cameras = asyncio.run(get())
    assert latest["model_version"] == "yolov5s-canary01"
    assert [x["model_version"] for x in history["records"]] == ["unversioned", "yolov5s-canary01"]
    assert [c["model_version"] for c in cameras["cameras"] if c["id"] == cam] == ["yolov5s-canary01"]
    # The dashboard's tiles show it: the tile's `.model` field, set from the state and from live records.
    static = ROOT / "split_infer" / "api" / "static"
    assert 'class="model"' in (static / "index.html").read_text()
    script = (static / "dashboard.js").read_text()
    assert ".model_version" in script and 'querySelector(".model")' in script


def degraded_basis(tmp: Path) -> Path:
    """The shipped basis with a corrupted reconstruction layer: its four leading components zeroed."""
    b = Basis.load(SHIPPED_DIR / f"{SHIPPED}.basis.npz")
    decode = b.decode_matrix.copy()
    decode[:, :4] = 0.0
    return Basis.from_arrays(b.mean, b.encode_matrix, decode, {**b.meta, "corrupted": "decode[:, :4] = 0"}).save(
        tmp / "degraded.basis.npz")


# -- a degraded codec model on real frames, through real workers -------------------------------------

IMGSZ = (320, 192)  # small: CPU is scarce, and the basis reduces channels whatever the image size
N_FRAMES = 12


@pytest.fixture(scope="module")
def street_payloads() -> list[tuple[bytes, int, int]]:
    """(q8-zstd payload, width, height) of 12 street frames spread over the clip, from yolov5s's
    edge part at cut 4: what the ingest queues for the workers."""
    import torch  # heavy; only this fixture's tests pay for it

    from split_infer.model.loading import load_model
    from split_infer.model.partition import partition
    from split_infer.model.preprocess import letterbox

    yolov5s_ready()
    edge, _ = partition(load_model("yolov5s"), 4)
    cap = cv2.VideoCapture(str(street_video()))
    out, i = [], 0
    with torch.no_grad():
        while len(out) < N_FRAMES:
            ok, img = cap.read()
            assert ok, "street video ended early"
            if i % 50 == 0:
                x, _ = letterbox(img, IMGSZ)
                feats = {k: v.numpy() for k, v in edge(torch.from_numpy(x)[None]).items()}
                out.append((make_encoder("q8-zstd").encode(feats), img.shape[1], img.shape[0]))
            i += 1
    cap.release()
    return out


def run_canary(r: redis.Redis, keys: Keys, camera: str, release_cfg: dict, head, payloads) -> dict:
    """A canary worker with `release_cfg` on the frames, one at a time as a live camera sends them;
    returns its version, agreement, shadowed frames, latency p95 and the records' versions."""
    from split_infer.cloud.worker import Worker

    cfg = CloudConfig.model_validate({
        "model": {"name": "yolov5s", "cut": 4, "imgsz": list(IMGSZ)}, "head_runtime": "torch",
        "worker": {"block_ms": 20, "streams_refresh_s": 0.05, "max_batch": 1,
                   "release": release_cfg}})
    release = load_release(cfg, head, seed=0)
    assert release.shadow is not None
    labels = {"model_version": release.version}
    frames_before = REGISTRY.get_sample_value("splitinfer_shadow_frames_total", labels) or 0.0
    worker = Worker(cfg, r, release.head, name=f"canary-{camera}", keys=keys, model_version=release.version,
                    shadow=release.shadow)
    stream = keys.frames_stream(camera)
    r.xgroup_create(stream, keys.FRAMES_GROUP, id="0", mkstream=True)
    r.sadd(keys.cameras, camera)
    for seq, (payload, w, h) in enumerate(payloads):
        now = time.time()
        r.xadd(stream, {"camera": camera, "session": "s1", "seq": seq, "capture_ts": repr(now),
                        "ingest_ts": repr(now), "width": w, "height": h, "payload": payload, "timings": "{}"})
        deadline = time.time() + 60
        while r.xlen(stream):
            assert time.time() < deadline, "the worker did not take the frame"
            worker.step()
    records = [DetectionResult.from_fields(f) for _, f in r.xrange(keys.detections_stream(camera))]
    assert [x.seq for x in records] == list(range(len(payloads)))
    return {"version": release.version, "stable_version": release.shadow.stable_version,
            "agreement": REGISTRY.get_sample_value(
                "splitinfer_shadow_agreement_ratio",
                {"model_version": release.version, "stable_version": release.shadow.stable_version}),
            "shadow_frames": int((REGISTRY.get_sample_value("splitinfer_shadow_frames_total", labels) or 0)
                                 - frames_before),
            "latency_p95": float(np.percentile([x.done_ts - x.capture_ts for x in records], 95)),
            "record_versions": {x.model_version for x in records},
            "objects": sum(len(x.detections) for x in records)}


@pytest.mark.e2e
@pytest.mark.redis
def test_a_degraded_codec_model_loses_agreement_and_is_rolled_back(r, keys, tmp_path, street_payloads):
    from split_infer.cloud.head import yolo_head

    head = yolo_head(CloudConfig.model_validate({"model": {"name": "yolov5s", "cut": 4, "imgsz": list(IMGSZ)},
                                                 "head_runtime": "torch", "worker": {"head_threads": 1}}))
    stable = {"codec_model": SHIPPED, "sample_ratio": 1.0, "window_frames": N_FRAMES}
    healthy = run_canary(r, keys, "cam-healthy", {"codec_model": SHIPPED, "shadow": stable}, head, street_payloads)
    degraded = run_canary(r, keys, "cam-degraded", {"codec_model": str(degraded_basis(tmp_path)), "shadow": stable},
                          head, street_payloads)

    assert healthy["objects"] >= N_FRAMES  # real traffic: the stable model sees things to agree on
    assert healthy["stable_version"] == degraded["stable_version"] == healthy["version"]  # same model as stable
    assert degraded["version"] != healthy["version"]
    for run in (healthy, degraded):
        assert run["record_versions"] == {run["version"]}  # every record names its model
        assert run["shadow_frames"] == N_FRAMES  # sample_ratio 1: every frame shadowed
        assert REGISTRY.get_sample_value("splitinfer_inference_latency_seconds_count",
                                         {"camera": "cam-healthy" if run is healthy else "cam-degraded",
                                          "model_version": run["version"]}) == N_FRAMES
    assert healthy["agreement"] == 1.0
    assert degraded["agreement"] < THRESHOLDS.agreement_floor - 0.2, degraded["agreement"]

    # The rule, with minimum sample counts scaled down to this short run.
    t = CanaryThresholds(min_shadow_frames=N_FRAMES, min_latency_frames=N_FRAMES)
    verdicts = {name: decide(CanaryMeasurement(run["agreement"], run["shadow_frames"], run["latency_p95"],
                                               N_FRAMES), t)
                for name, run in (("healthy", healthy), ("degraded", degraded))}
    assert verdicts["degraded"].decision is Decision.ROLLBACK, verdicts["degraded"].reasons
    assert verdicts["healthy"].decision is Decision.PROMOTE, (verdicts["healthy"].reasons, healthy["latency_p95"])
