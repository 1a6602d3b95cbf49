"""The capacity model's arithmetic (benchmarks/capacity_model.py) on hand-checked inputs."""

from __future__ import annotations

import pytest

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
