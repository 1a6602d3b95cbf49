"""The sizes the Kubernetes base ships (deploy/k8s/base), read from its rendered manifests, for the
capacity model's "as shipped" breaking points (benchmarks/capacity.py, docs/scaling.md).

Rendered with `kubectl kustomize` (scripts/validate_k8s.py finds kubectl), so a patch in the base
counts as deployed. Every field must be there: a missing one raises, never falls back to a guess.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from split_infer.config import CloudConfig

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "deploy" / "k8s" / "base"
Manifest = dict[str, Any]

# redis.conf's memory units: k/m/g are powers of 1000, kb/mb/gb of 1024; no unit is bytes.
REDIS_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3, "gb": 1024**3}


@dataclass(frozen=True)
class Shipped:
    ingest_replicas: int
    ingest_cpu_limit: float
    worker_max_replicas: int  # the worker HPA's maxReplicas
    worker_cpu_limit: float
    analytics_replicas: int
    analytics_cpu_limit: float
    redis_maxmemory_bytes: int
    retention_detections_s: float
    max_queue: int  # frames per camera
    latency_slo_ms: float

    def units(self, ingest_cores_per_replica: float) -> dict[str, float]:
        """capacity_model.breaking_points' `units`: cores per role, the shard's maxmemory. An
        ingest replica uses at most `ingest_cores_per_replica` of its limit (one event loop, GIL)."""
        return {"ingest_cores": self.ingest_replicas * min(self.ingest_cpu_limit, ingest_cores_per_replica),
                "worker_cores": self.worker_max_replicas * self.worker_cpu_limit,
                "analytics_cores": self.analytics_replicas * self.analytics_cpu_limit,
                "shard_maxmemory_gib": self.redis_maxmemory_bytes / 1024**3}


def redis_bytes(text: str) -> int:
    """'7gb' -> 7 x 2^30, '500mb', '1g' -> 10^9 (redis.conf's units)."""
    m = re.fullmatch(r"(\d+)([a-z]*)", text.strip().lower())
    if m is None or m.group(2) not in REDIS_UNITS:
        raise ValueError(f"{text!r} is not a Redis memory size (e.g. 7gb, 512mb)")
    return int(m.group(1)) * REDIS_UNITS[m.group(2)]


def cpu_cores(value: str | int | float) -> float:
    """A Kubernetes CPU quantity: '2' -> 2.0, '500m' -> 0.5."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _validator() -> Any:
    """scripts/validate_k8s.py as a module (it is a script, not a package), loaded once."""
    if "validate_k8s" not in sys.modules:
        spec = importlib.util.spec_from_file_location("validate_k8s", ROOT / "scripts" / "validate_k8s.py")
        if spec is None or spec.loader is None:
            raise RuntimeError("scripts/validate_k8s.py is missing")
        module = importlib.util.module_from_spec(spec)
        sys.modules["validate_k8s"] = module
        spec.loader.exec_module(module)
    return sys.modules["validate_k8s"]


def render(target: Path = BASE) -> list[Manifest]:
    """`kubectl kustomize target`, parsed, with scripts/validate_k8s.py's kubectl and renderer."""
    objs: list[Manifest] = _validator().render(target)
    return objs


def _one(objs: list[Manifest], kind: str, name: str) -> Manifest:
    hits = [o for o in objs if o.get("kind") == kind and o.get("metadata", {}).get("name") == name]
    if len(hits) != 1:
        raise ValueError(f"the base renders {len(hits)} {kind}/{name}, expected one")
    return hits[0]


def _field(obj: Any, *path: str | int) -> Any:
    """obj[path[0]][path[1]]..., with the missing step named."""
    for i, step in enumerate(path):
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"missing in the base: {'.'.join(map(str, path[:i + 1]))}") from None
    return obj


def _container(obj: Manifest, name: str) -> Manifest:
    containers = _field(obj, "spec", "template", "spec", "containers")
    hits = [c for c in containers if c.get("name") == name]
    if len(hits) != 1:
        raise ValueError(f"{obj['kind']}/{obj['metadata']['name']}: {len(hits)} containers named {name!r}")
    return hits[0]


def maxmemory_arg(container: Manifest) -> str:
    """The value after `--maxmemory` on the container's command line (command + args, shell-split)."""
    words = shlex.split(" ".join(container.get("command", []) + container.get("args", [])))
    if "--maxmemory" not in words or words.index("--maxmemory") + 1 >= len(words):
        raise ValueError(f"container {container.get('name')!r}: no --maxmemory on its command line")
    return words[words.index("--maxmemory") + 1]


def cloud_yaml(objs: list[Manifest]) -> dict[str, Any]:
    """The cloud config the pods mount: the one ConfigMap with a cloud.yaml."""
    maps = [o for o in objs if o.get("kind") == "ConfigMap" and "cloud.yaml" in o.get("data", {})]
    if len(maps) != 1:
        raise ValueError(f"the base renders {len(maps)} ConfigMaps with a cloud.yaml, expected one")
    data: dict[str, Any] = yaml.safe_load(maps[0]["data"]["cloud.yaml"])
    return data


def read(objs: list[Manifest] | None = None) -> Shipped:
    """The shipped sizes, from `objs` (the rendered base; rendered here if not given)."""
    objs = render() if objs is None else objs
    hpa = _one(objs, "HorizontalPodAutoscaler", "worker")
    if _field(hpa, "spec", "scaleTargetRef", "name") != "worker":
        raise ValueError("the worker HPA does not scale the worker Deployment")
    ingest, worker = _one(objs, "Deployment", "ingest"), _one(objs, "Deployment", "worker")
    analytics, redis = _one(objs, "Deployment", "analytics"), _one(objs, "StatefulSet", "redis")
    cloud = cloud_yaml(objs)
    stated = {"max_queue": _field(cloud, "max_queue"), "latency_slo_ms": _field(cloud, "latency_slo_ms"),
              "retention": {"detections": _field(cloud, "retention", "detections")}}
    cfg = CloudConfig.model_validate(stated)  # the services' own parsing (durations: split_infer.retention)
    return Shipped(
        ingest_replicas=int(_field(ingest, "spec", "replicas")),
        ingest_cpu_limit=cpu_cores(_field(_container(ingest, "ingest"), "resources", "limits", "cpu")),
        worker_max_replicas=int(_field(hpa, "spec", "maxReplicas")),
        worker_cpu_limit=cpu_cores(_field(_container(worker, "worker"), "resources", "limits", "cpu")),
        analytics_replicas=int(_field(analytics, "spec", "replicas")),
        analytics_cpu_limit=cpu_cores(_field(_container(analytics, "analytics"), "resources", "limits", "cpu")),
        redis_maxmemory_bytes=redis_bytes(maxmemory_arg(_container(redis, "redis"))),
        retention_detections_s=cfg.retention.detections.total_seconds(),
        max_queue=cfg.max_queue, latency_slo_ms=cfg.latency_slo_ms)
