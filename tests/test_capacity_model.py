"""The capacity model's arithmetic (benchmarks/capacity_model.py) on hand-checked inputs."""

from __future__ import annotations

import copy
import json
import re
from datetime import timedelta

import pytest
import yaml

import shipped as base_manifests
from capacity_model import (
    GIB,
    Fleet,
    PerFrame,
    batch_ms,
    bill_of_materials,
    breaking_points,
    cameras_per_core,
    cores_for,
    extrapolated,
    gpu_worker_fps,
    gpu_worker_served,
)
from split_infer.retention import parse_duration
from support.data import ROOT

pytestmark = pytest.mark.unit

CURVE = {1: 4.0, 8: 6.0, 64: 8.0}
FRAME = PerFrame(ingest_cpu_ms=2.0, worker_cpu_ms=50.0, worker_host_ms_gpu=5.0, analytics_cpu_ms=1.0,
                 api_cpu_ms=0.1, redis_cpu_ms=0.7, wire_bytes=5000.0, queued_bytes=100_000.0,
                 redis_net_bytes=200_000.0, record_bytes=1000.0)
FLEET = Fleet(cameras=1000, fps=10.0, utilisation=0.5, redis_utilisation=0.7, retention_s=3600.0,
              memory_headroom=1.5, queue_delay_s=0.2, shard_maxmemory_gib=24.0, shard_link_gbit=10.0)


def test_cameras_per_core_and_cores_are_inverse() -> None:
    assert cameras_per_core(10.0, 10.0, 0.7) == pytest.approx(7.0)  # 100 ms of each core-second per camera
    assert cores_for(7 * 10.0, 10.0, 0.7) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cameras_per_core(0.0, 10.0, 0.7)


def test_gpu_curve_is_interpolated_and_extrapolated_along_its_last_slope() -> None:
    assert batch_ms(CURVE, 8) == 6.0
    assert batch_ms(CURVE, 4) == pytest.approx(4.0 + 2.0 * 3 / 7)
    assert batch_ms(CURVE, 128) == pytest.approx(8.0 + 2.0 / 56 * 64)
    assert extrapolated(CURVE, 128) and not extrapolated(CURVE, 64)


def test_gpu_worker_runs_host_and_gpu_one_after_the_other() -> None:
    assert gpu_worker_fps(CURVE, 8, 1.0) == pytest.approx(8000 / (8 * 1.0 + 6.0))
    light = gpu_worker_served(CURVE, 8, 10.0, 1.0, max_batch=64)  # 80 fps: a batch of one keeps up (200 fps)
    assert light["batch"] == 1 and light["served_fps"] == 80.0
    heavy = gpu_worker_served(CURVE, 256, 10.0, 1.0, max_batch=64)  # 2560 fps offered: more than any batch serves
    assert heavy["batch"] == 64 and heavy["served_fps"] == pytest.approx(64000 / (64 + 8.0), abs=0.1)
    assert heavy["served_fps"] < heavy["offered_fps"]


def test_bill_of_materials_from_given_costs() -> None:
    bom = bill_of_materials(FLEET, FRAME, CURVE)
    assert bom["ingest"] == {"cores": 40.0, "replicas": 40}  # 10 000 fps x 2 ms / 0.5
    assert bom["worker_cpu"]["cores"] == 1000
    assert bom["analytics"]["cores"] == 20
    assert bom["api"]["cores_per_process"] == 2.0 and not bom["api"]["fits_one_process"]
    red = bom["redis"]
    # cpu: 7 main-thread seconds a second at 0.7 each -> 10; memory: (36 GB of records + 0.2 GB of
    # queue) x 1.5 in 24 GiB shards -> 3; network: 16 Gbit/s over 7 Gbit/s -> 3
    assert red["shards_by"] == {"cpu": 10, "memory": 3, "network": 3} and red["shards"] == 10
    assert red["memory_gib"]["data"] == pytest.approx(36.2e9 / GIB, abs=0.1)
    assert red["memory_gib"]["backlog_per_s"] == pytest.approx(1e9 / GIB, abs=0.1)
    assert red["link_gbit_s"] == 16.0
    assert bom["wan_link_mbit_s"] == 400.0
    gpu = bom["worker_gpu"]
    assert gpu["gpus"] == 3 and gpu["host_cores"] == 100  # 8000 fps a GPU x 0.5 -> 2.5; 10 000 x 5 ms / 0.5


def test_breaking_points_put_the_scarcest_resource_first() -> None:
    per_unit = breaking_points(FLEET, FRAME, {})
    cams = [r["cameras"] for r in per_unit]
    assert cams == sorted(cams)
    assert per_unit[0] == {"resource": "worker (CPU head)", "cameras": 1.0}  # 500 ms of a core per camera-second
    shipped = {r["resource"]: r["cameras"] for r in breaking_points(FLEET, FRAME, {"worker_cores": 40,
                                                                                   "shard_maxmemory_gib": 1.0})}
    assert shipped["worker (CPU head)"] == 40.0
    # one camera: 36 MB of records + 0.2 MB of queue, x 1.5 -> 54.3 MB; 1 GiB holds 19.8 cameras
    assert shipped["redis shard: memory"] == pytest.approx(GIB / (1.5 * (36e6 + 2e5)), abs=0.1)


# -- the sizes deploy/k8s/base ships (benchmarks/shipped.py) ------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    return base_manifests.render()  # kubectl missing: ToolMissing, a failure, not a skip


def _raw(kind: str, name: str) -> dict:
    """An object as written in deploy/k8s/base/*.yaml, read without kustomize."""
    docs = [d for f in sorted(base_manifests.BASE.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1
    return hits[0]


def _limit_cpu(obj: dict) -> str:
    return obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]


def test_shipped_sizes_are_the_manifests(rendered) -> None:
    got = base_manifests.read(rendered)
    cloud = yaml.safe_load((base_manifests.BASE / "config" / "cloud.yaml").read_text())
    redis_text = (base_manifests.BASE / "redis.yaml").read_text()
    maxmemory = re.search(r"--maxmemory (\d+)gb\b", redis_text)
    assert maxmemory, "redis.yaml states maxmemory in gb"
    assert got.ingest_replicas == _raw("Deployment", "ingest")["spec"]["replicas"]
    assert got.worker_max_replicas == _raw("HorizontalPodAutoscaler", "worker")["spec"]["maxReplicas"]
    assert got.analytics_replicas == _raw("Deployment", "analytics")["spec"]["replicas"]
    for role, limit in (("ingest", got.ingest_cpu_limit), ("worker", got.worker_cpu_limit),
                        ("analytics", got.analytics_cpu_limit)):
        text = str(_limit_cpu(_raw("Deployment", role)))
        assert limit == (float(text[:-1]) / 1000 if text.endswith("m") else float(text)), role
    assert got.redis_maxmemory_bytes == int(maxmemory.group(1)) * 2**30
    assert got.max_queue == cloud["max_queue"] and got.latency_slo_ms == cloud["latency_slo_ms"]
    assert timedelta(seconds=got.retention_detections_s) == parse_duration(cloud["retention"]["detections"])
    units = got.units(ingest_cores_per_replica=1.0)  # the GIL: one core per ingest replica, whatever its limit
    assert units == {"ingest_cores": got.ingest_replicas * min(1.0, got.ingest_cpu_limit),
                     "worker_cores": got.worker_max_replicas * got.worker_cpu_limit,
                     "analytics_cores": got.analytics_replicas * got.analytics_cpu_limit,
                     "shard_maxmemory_gib": int(maxmemory.group(1))}


def _cloud_map(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "ConfigMap" and "cloud.yaml" in o.get("data", {}))


def _drop_retention(objs: list[dict]) -> None:
    cm = _cloud_map(objs)
    cloud = yaml.safe_load(cm["data"]["cloud.yaml"])
    del cloud["retention"]
    cm["data"]["cloud.yaml"] = yaml.safe_dump(cloud)


def _drop_maxmemory(objs: list[dict]) -> None:
    redis = next(o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "redis")
    c = redis["spec"]["template"]["spec"]["containers"][0]
    c["args"] = [re.sub(r"--maxmemory \S+ ", "", a) for a in c["args"]]


def _drop_hpa_max(objs: list[dict]) -> None:
    next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler")["spec"].pop("maxReplicas")


def _drop_cpu_limit(objs: list[dict]) -> None:
    worker = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "worker")
    worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].pop("cpu")


@pytest.mark.parametrize(("drop", "named"), [
    (_drop_retention, "retention"), (_drop_maxmemory, "--maxmemory"), (_drop_hpa_max, "maxReplicas"),
    (_drop_cpu_limit, "limits.cpu")])
def test_a_missing_shipped_size_fails_loudly(rendered, drop, named) -> None:
    objs = copy.deepcopy(rendered)
    drop(objs)
    with pytest.raises(ValueError, match=re.escape(named)):
        base_manifests.read(objs)


def test_redis_memory_units_are_redis_conf_s() -> None:
    assert base_manifests.redis_bytes("7gb") == 7 * 2**30 and base_manifests.redis_bytes("1g") == 10**9
    assert base_manifests.redis_bytes("512MB") == 512 * 2**20 and base_manifests.redis_bytes("100") == 100
    with pytest.raises(ValueError):
        base_manifests.redis_bytes("1.5gb")


def test_shipped_redis_holds_what_the_shipped_workers_carry(rendered) -> None:
    """The base is coherent on the recorded figures: its Redis (retention, a full queue per camera,
    x1.5) does not break before the workers at the HPA's maximum (docs/scaling.md)."""
    result = json.loads((ROOT / "benchmarks/results/capacity.json").read_text())
    model = next(iter(result["models"].values()))  # the default codec, today's queue form
    pf = PerFrame(**model["per_frame"])
    base = base_manifests.read(rendered)
    fleet = Fleet(fps=10.0, retention_s=base.retention_detections_s, queue_delay_s=base.max_queue / 10.0)
    rows = {r["resource"]: r["cameras"] for r in breaking_points(fleet, pf, base.units(1.0))}
    assert rows["redis shard: memory"] >= rows["worker (CPU head)"], rows
