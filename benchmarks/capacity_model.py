"""The capacity model's arithmetic: measured costs per frame in, cameras per core and a bill of
materials out (benchmarks/capacity.py measures the inputs; docs/scaling.md explains the model).

Pure Python: every function takes the figures it needs, so the derivation is testable on given
numbers (tests/test_capacity_model.py) and reproducible from the JSON the benchmark writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

DAY_S = 86400
GIB = 2**30


@dataclass(frozen=True)
class Fleet:
    """The load to size for, and the planning rules."""

    cameras: int = 1000
    fps: float = 10.0
    utilisation: float = 0.7  # CPU target per core (the worker HPA's averageUtilization)
    redis_utilisation: float = 0.7  # of a shard's main thread
    retention_s: float = 6 * 3600  # retention.detections (docs/retention.md, default 6h)
    memory_headroom: float = 1.5  # maxmemory = 1.5 x the data (docs/retention.md)
    queue_delay_s: float = 0.2  # frames held in the queue per camera = fps x this (the latency objective)
    shard_maxmemory_gib: float = 24.0  # a shard's maxmemory (a 32 GiB node)
    shard_link_gbit: float = 10.0  # a shard's network interface
    ingest_cores_per_replica: float = 1.0  # one asyncio process: its Python work holds one core (GIL)
    gpu_max_batch: int = 64

    @property
    def frames_per_s(self) -> float:
        return self.cameras * self.fps


def cameras_per_core(cpu_ms_per_frame: float, fps: float, utilisation: float) -> float:
    """Cameras at `fps` that one core carries at `utilisation`."""
    if cpu_ms_per_frame <= 0:
        raise ValueError("cpu_ms_per_frame must be positive")
    return utilisation * 1000.0 / (cpu_ms_per_frame * fps)


def cores_for(frames_per_s: float, cpu_ms_per_frame: float, utilisation: float) -> float:
    """Cores that serve `frames_per_s` at `utilisation`."""
    return frames_per_s * cpu_ms_per_frame / 1000.0 / utilisation


def batch_ms(curve: Mapping[int, float], b: int) -> float:
    """GPU ms for a batch of `b` from a measured curve {batch: ms}: linear between measured sizes,
    beyond the largest along the slope of the last two (marked as extrapolated by `extrapolated`)."""
    sizes = sorted(curve)
    if b < 1 or not sizes:
        raise ValueError("a batch of at least 1 and a non-empty curve")
    if b in curve:
        return curve[b]
    if b < sizes[0]:
        return curve[sizes[0]]
    if b > sizes[-1]:
        lo, hi = sizes[-2:] if len(sizes) > 1 else (sizes[0], sizes[0])
        slope = (curve[hi] - curve[lo]) / (hi - lo) if hi != lo else curve[hi] / hi
        return curve[hi] + slope * (b - hi)
    hi = next(s for s in sizes if s > b)
    lo = max(s for s in sizes if s < b)
    return curve[lo] + (curve[hi] - curve[lo]) * (b - lo) / (hi - lo)


def extrapolated(curve: Mapping[int, float], b: int) -> bool:
    return b > max(curve)


def gpu_worker_fps(curve: Mapping[int, float], batch: int, host_ms_per_frame: float) -> float:
    """Frames a second of one worker process on one GPU at batches of `batch`: its loop is
    synchronous, so each batch costs its host CPU time (decode, post-processing, Redis) plus the
    GPU's time, one after the other."""
    return 1000.0 * batch / (batch * host_ms_per_frame + batch_ms(curve, batch))


def gpu_worker_served(curve: Mapping[int, float], cameras: int, fps: float, host_ms_per_frame: float,
                      max_batch: int) -> dict[str, float]:
    """One worker process on one GPU offered `cameras` x `fps`: the smallest batch that keeps up
    (the queue makes batches grow with the load), else `max_batch` and what it serves then."""
    offered = cameras * fps
    for b in range(1, max_batch + 1):
        cap = gpu_worker_fps(curve, b, host_ms_per_frame)
        if cap >= offered:
            return {"offered_fps": offered, "served_fps": offered, "batch": b, "capacity_fps": round(cap, 1),
                    "gpu_busy": round(offered * batch_ms(curve, b) / b / 1000.0, 3)}
    cap = gpu_worker_fps(curve, max_batch, host_ms_per_frame)
    return {"offered_fps": offered, "served_fps": round(cap, 1), "batch": max_batch, "capacity_fps": round(cap, 1),
            "gpu_busy": round(cap * batch_ms(curve, max_batch) / max_batch / 1000.0, 3)}


@dataclass(frozen=True)
class PerFrame:
    """What one frame costs each role and Redis (the benchmark's measurements)."""

    ingest_cpu_ms: float
    worker_cpu_ms: float  # decode + head on a CPU + Redis client
    worker_host_ms_gpu: float  # with the head on a GPU: what stays on the host CPU per frame
    analytics_cpu_ms: float
    api_cpu_ms: float  # the live feed's work per frame for one API process
    redis_cpu_ms: float  # the shard's main thread, every command of the frame's path
    wire_bytes: float  # into the cloud per frame (payload + framing + snapshots, averaged)
    queued_bytes: float  # Redis memory per queued frame
    redis_net_bytes: float  # bytes in and out of Redis per frame, every role's commands together
    record_bytes: float  # Redis memory per detection record


def redis_memory_bytes(fleet: Fleet, pf: PerFrame) -> dict[str, float]:
    """Data Redis holds: detection records under retention, plus the frames in the queues."""
    retained = fleet.cameras * fleet.fps * fleet.retention_s * pf.record_bytes
    queued = fleet.cameras * fleet.fps * fleet.queue_delay_s * pf.queued_bytes
    data = retained + queued
    return {"retained_detections": retained, "queued_frames": queued, "data": data,
            "maxmemory": data * fleet.memory_headroom,
            # what each second of backlog adds (workers down or behind): the queue holds whole frames
            "backlog_per_s": fleet.cameras * fleet.fps * pf.queued_bytes}


def redis_link_bits_per_s(fleet: Fleet, pf: PerFrame) -> float:
    """Bits a second through the shards' interfaces (what the roles' commands move, measured)."""
    return fleet.frames_per_s * pf.redis_net_bytes * 8


def bill_of_materials(fleet: Fleet, pf: PerFrame, gpu_curve: Mapping[int, float] | None = None) -> dict:
    """What `fleet` needs, role by role, from the per-frame costs (rounded up to whole units)."""
    fps = fleet.frames_per_s
    u = fleet.utilisation
    ingest_cores = cores_for(fps, pf.ingest_cpu_ms, u)
    mem = redis_memory_bytes(fleet, pf)
    link = redis_link_bits_per_s(fleet, pf)
    shards_cpu = math.ceil(cores_for(fps, pf.redis_cpu_ms, fleet.redis_utilisation))
    shards_mem = math.ceil(mem["maxmemory"] / (fleet.shard_maxmemory_gib * GIB))
    shards_link = math.ceil(link / (fleet.shard_link_gbit * 1e9 * fleet.redis_utilisation))
    out: dict = {
        "fleet": asdict(fleet) | {"frames_per_s": fps},
        "ingest": {"cores": round(ingest_cores, 2),
                   "replicas": math.ceil(ingest_cores / fleet.ingest_cores_per_replica)},
        "worker_cpu": {"cores": math.ceil(cores_for(fps, pf.worker_cpu_ms, u))},
        "analytics": {"cores": math.ceil(cores_for(fps, pf.analytics_cpu_ms, u))},
        # Every API process follows every camera's records (one LiveHub), on one event loop.
        "api": {"cores_per_process": round(cores_for(fps, pf.api_cpu_ms, u), 2),
                "fits_one_process": cores_for(fps, pf.api_cpu_ms, u) <= 1.0},
        "redis": {"shards": max(shards_cpu, shards_mem, shards_link),
                  "shards_by": {"cpu": shards_cpu, "memory": shards_mem, "network": shards_link},
                  "memory_gib": {k: round(v / GIB, 1) for k, v in mem.items()},
                  "link_gbit_s": round(link / 1e9, 2)},
        "wan_link_mbit_s": round(fps * pf.wire_bytes * 8 / 1e6, 1),
    }
    if gpu_curve:
        b = fleet.gpu_max_batch
        per_gpu = gpu_worker_fps(gpu_curve, b, 0.0) * u  # the GPU alone, fed by enough host cores
        out["worker_gpu"] = {"gpus": math.ceil(fps / per_gpu), "batch": b,
                             "gpu_ms_per_frame": round(batch_ms(gpu_curve, b) / b, 4),
                             "host_cores": math.ceil(cores_for(fps, pf.worker_host_ms_gpu, u)),
                             "batch_extrapolated": extrapolated(gpu_curve, b)}
    return out


def breaking_points(fleet: Fleet, pf: PerFrame, units: Mapping[str, float]) -> list[dict]:
    """Cameras at `fleet.fps` one unit of each resource carries (cores per unit in `units` for the
    CPU roles), fewest first: the head of the list is what breaks first as cameras are added to
    one unit of everything."""
    cam_rate = fleet.fps
    mem_per_cam = redis_memory_bytes(Fleet(cameras=1, fps=cam_rate, retention_s=fleet.retention_s,
                                           queue_delay_s=fleet.queue_delay_s,
                                           memory_headroom=fleet.memory_headroom), pf)["maxmemory"]
    link_per_cam = redis_link_bits_per_s(Fleet(cameras=1, fps=cam_rate), pf)
    rows = [
        ("ingest replica", units.get("ingest_cores", fleet.ingest_cores_per_replica)
         * cameras_per_core(pf.ingest_cpu_ms, cam_rate, fleet.utilisation)),
        ("worker (CPU head)", units.get("worker_cores", 1.0)
         * cameras_per_core(pf.worker_cpu_ms, cam_rate, fleet.utilisation)),
        ("analytics", units.get("analytics_cores", 1.0)
         * cameras_per_core(pf.analytics_cpu_ms, cam_rate, fleet.utilisation)),
        # one process whatever the replicas: each API process's live feed reads every camera
        ("api live feed (one process)", cameras_per_core(pf.api_cpu_ms, cam_rate, fleet.utilisation)),
        ("redis shard: main thread", cameras_per_core(pf.redis_cpu_ms, cam_rate, fleet.redis_utilisation)),
        ("redis shard: memory", units.get("shard_maxmemory_gib", fleet.shard_maxmemory_gib) * GIB / mem_per_cam),
        ("redis shard: network", fleet.shard_link_gbit * 1e9 * fleet.redis_utilisation / link_per_cam),
    ]
    return sorted(({"resource": name, "cameras": round(n, 1)} for name, n in rows), key=lambda r: r["cameras"])
