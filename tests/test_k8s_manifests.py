"""The Kubernetes manifests (deploy/k8s) render with `kubectl kustomize`, validate offline against
the Kubernetes and vendored CRD schemas (scripts/validate_k8s.py), and keep the deployment's
rules: requests, limits and both probes on every container, the HPA's thresholds, disruption
budgets, network isolation, secrets only from Secret objects, and configs the services accept."""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from split_infer import metrics
from split_infer.config import ApiConfig, CloudConfig, EdgeConfig, EdgeToken
from split_infer.keys import Keys
from support.data import ROOT

pytestmark = pytest.mark.unit

# Secrets the manifests reference but never carry (private keys and certificates): docs/deploy.md
# says how to create each.
EXTERNAL_SECRETS = {"split-infer-ingest-tls", "split-infer-edge-tls", "split-infer-api-tls"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
METRICS_PORTS = {"ingest": 9100, "worker": 9101, "analytics": 9102, "edge": 9103}
Manifest = dict[str, Any]


def _load_validator():
    spec = importlib.util.spec_from_file_location("validate_k8s", ROOT / "scripts" / "validate_k8s.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["validate_k8s"] = module
    spec.loader.exec_module(module)
    return module


vk = _load_validator()


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[list[Manifest], list[Any]]]:
    """Every target rendered and validated once: {"base": (objects, problems), "overlays/gpu": ...}."""
    try:
        return {str(t.relative_to(vk.K8S_DIR)): (objs, problems) for t, objs, problems in vk.validate_all()}
    except vk.ToolMissing as e:
        pytest.fail(f"cannot validate the Kubernetes manifests: {e}")


def objects(rendered, target: str) -> list[Manifest]:
    return rendered[target][0]


def find(objs: list[Manifest], kind: str, name: str) -> Manifest:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_spec(obj: Manifest) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number (the forms these manifests use: 500m, 2, 1.5)."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def component(obj: Manifest) -> str:
    return obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def test_every_target_renders_and_validates(rendered):
    assert set(rendered) == {"base", "overlays/cpu", "overlays/gpu", "overlays/keda", "overlays/rollouts",
                             "overlays/edge", "overlays/external-redis"}
    for target, (objs, problems) in rendered.items():
        assert not problems, "\n".join(str(p) for p in problems)
        assert len(objs) >= 25, f"{target} rendered only {len(objs)} objects"
        namespaced = [o for o in objs if o["kind"] != "Namespace"]
        assert {o["metadata"].get("namespace") for o in namespaced} == {"split-infer"}, target


def test_validation_rejects_unknown_fields_and_unknown_kinds(rendered):
    # The checks are strict: a misspelt field fails for built-in kinds and for custom resources.
    worker = find(objects(rendered, "base"), "Deployment", "worker")
    deployment = dict(worker, spec=dict(worker["spec"], replica=2))
    assert any("replica" in p for p in vk.validate_object(deployment))
    scaled = find(objects(rendered, "overlays/keda"), "ScaledObject", "worker")
    typo = dict(scaled, spec=dict(scaled["spec"], minReplicas=2))
    assert any("minReplicas" in p for p in vk.validate_object(typo))
    rollout = find(objects(rendered, "overlays/rollouts"), "Rollout", "worker")
    misspelt = {"spec": {"containers": [{"name": "w", "imagee": "x"}]}}
    bad_template = dict(rollout, spec=dict(rollout["spec"], template=misspelt))
    assert any("imagee" in p for p in vk.validate_object(bad_template))
    assert vk.validate_object({"apiVersion": "example.com/v1", "kind": "Unknown", "metadata": {"name": "x"}})


def test_every_container_has_requests_limits_and_both_probes(rendered):
    for target, (objs, _) in rendered.items():
        for obj in (o for o in objs if o["kind"] in POD_KINDS):
            for c in pod_spec(obj)["containers"]:
                where = f"{target} {obj['kind']}/{obj['metadata']['name']} container {c['name']}"
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})), f"{where}: no {kind}"
                assert "readinessProbe" in c and "livenessProbe" in c, f"{where}: needs both probes"
                security = pod_spec(obj).get("securityContext", {})
                assert security.get("runAsNonRoot") is True, f"{where}: must run as non-root"


def test_probes_and_metrics_ports_follow_the_services(rendered):
    objs = objects(rendered, "overlays/edge")
    for name, port in METRICS_PORTS.items():
        obj = next(o for o in objs if o["kind"] == "Deployment" and component(o) == name)
        c = pod_spec(obj)["containers"][0]
        assert {"name": "metrics", "containerPort": port} in c["ports"], name
        if "--metrics-port" in c["args"]:
            assert c["args"][c["args"].index("--metrics-port") + 1] == str(port), name
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}, name
        if name != "ingest":
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}, name
    # The ingest's readiness is its gRPC health service over mutual TLS (kubelet's grpc probe
    # cannot present a client certificate).
    ingest = pod_spec(find(objs, "Deployment", "ingest"))["containers"][0]
    check = " ".join(ingest["readinessProbe"]["exec"]["command"])
    assert "HealthStub" in check and "localhost:50051" in check and "client-healthcheck" in check
    api = pod_spec(find(objs, "Deployment", "api"))["containers"][0]
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    api_cfg = yaml.safe_load((vk.K8S_DIR / "base/config/api.yaml").read_text())
    assert api_cfg["listen"].endswith(":8080") and {"name": "http", "containerPort": 8080} in api["ports"]



def test_service_monitors_scrape_every_process(rendered):
    objs = objects(rendered, "overlays/edge")
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    scraped: dict[str, set[int]] = {}
    for svc in (o for o in objs if o["kind"] == "Service"):
        labels = svc["metadata"]["labels"]
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        for monitor in monitors:
            if monitor["spec"]["selector"]["matchLabels"].items() <= labels.items():
                for endpoint in monitor["spec"]["endpoints"]:
                    if endpoint["port"] in ports:
                        assert endpoint.get("path", "/metrics") == "/metrics"
                        scraped.setdefault(labels["app.kubernetes.io/component"], set()).add(ports[endpoint["port"]])
    assert scraped == {**{name: {port} for name, port in METRICS_PORTS.items()}, "api": {8080}}

def test_worker_hpa_scales_on_cpu_latency_and_backlog(rendered):
    hpa = find(objects(rendered, "base"), "HorizontalPodAutoscaler", "worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    assert 1 < hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for m in hpa["spec"]["metrics"]:
        by_type.setdefault(m["type"], []).append(m)
    cpu = by_type["Resource"][0]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"] == {"type": "Utilization", "averageUtilization": 70}
    external = {m["external"]["metric"]["name"]: m["external"]["target"] for m in by_type["External"]}
    latency = external["splitinfer_inference_latency_p95_seconds"]
    assert latency["type"] == "Value" and quantity(latency["value"]) == 0.5
    backlog = external["splitinfer_queue_backlog_frames"]
    assert backlog["type"] == "AverageValue" and quantity(backlog["averageValue"]) > 0
    # prometheus-adapter serves exactly those external metrics, from metrics the code exports.
    adapter = yaml.safe_load((vk.K8S_DIR / "prometheus-adapter/config.yaml").read_text())
    rules = {r["name"]["as"]: r for r in adapter["externalRules"]}
    assert set(rules) == set(external)
    latency_rule = rules["splitinfer_inference_latency_p95_seconds"]
    assert f"{metrics.INFERENCE_LATENCY._name}_bucket" in latency_rule["seriesQuery"]
    assert latency_rule["metricsQuery"].startswith("histogram_quantile(0.95,")
    backlog_rule = rules["splitinfer_queue_backlog_frames"]
    assert metrics.QUEUE_DEPTH._name in backlog_rule["seriesQuery"]
    assert "max by (camera)" in backlog_rule["metricsQuery"] and "camera" in metrics.QUEUE_DEPTH._labelnames


def test_disruption_budgets_cover_every_replicated_workload(rendered):
    for target, (objs, _) in rendered.items():
        budgets = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
        autoscaled = {o["spec"]["scaleTargetRef"]["name"] for o in objs if o["kind"] == "HorizontalPodAutoscaler"}
        for obj in (o for o in objs if o["kind"] in POD_KINDS | {"Rollout"}):
            replicated = obj["spec"].get("replicas", 1) > 1 or obj["metadata"]["name"] in autoscaled
            if obj["kind"] == "Deployment" and obj["spec"].get("replicas") == 0:
                continue  # the rollouts overlay's template holder; the Rollout runs the pods
            labels = (obj["spec"].get("template") or {}).get("metadata", {}).get("labels") \
                or obj["spec"]["selector"]["matchLabels"]
            covered = [b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
            if replicated:
                assert covered, f"{target}: {obj['kind']}/{obj['metadata']['name']} runs >1 replica without a PDB"


def _selects(policy: Manifest, labels: dict[str, str]) -> bool:
    selector = policy["spec"]["podSelector"]
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policies_isolate_redis_and_open_only_the_ingest(rendered):
    for target, (objs, _) in rendered.items():
        policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
        deny = [p for p in policies if p["spec"]["podSelector"] == {}
                and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
                and not p["spec"].get("ingress") and not p["spec"].get("egress")]
        assert deny, f"{target}: no default-deny NetworkPolicy"
        pods = {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["metadata"]["labels"]
                for o in objs if o["kind"] in POD_KINDS}
        redis = pods.get("StatefulSet/redis")
        if redis is None:  # an external Redis: the pipeline may reach it, nothing else changes
            assert target == "overlays/external-redis", f"{target}: no Redis"
            assert find(objs, "Service", "redis")["spec"]["type"] == "ExternalName"
            pipeline = {"matchLabels": {"split-infer/pipeline": "true"}}
            egress = [p for p in policies if p["spec"]["podSelector"] == pipeline
                      for rule in p["spec"].get("egress", []) if {"protocol": "TCP", "port": 6379} in rule["ports"]]
            assert egress, f"{target}: the pipeline cannot reach the external Redis"
            redis = {}
        redis_rules = [rule for p in policies if redis and _selects(p, redis) for rule in p["spec"].get("ingress", [])]
        assert redis_rules or not redis, f"{target}: no NetworkPolicy for Redis"
        for rule in redis_rules:
            assert rule.get("from"), f"{target}: Redis open to anyone"
            for peer in rule["from"]:
                in_namespace = peer.get("podSelector", {}).get("matchLabels") == {"split-infer/pipeline": "true"}
                keda = peer.get("namespaceSelector", {}).get("matchLabels") == {"kubernetes.io/metadata.name": "keda"}
                assert in_namespace or (keda and target == "overlays/keda"), f"{target}: Redis reachable from {peer}"
        for name, labels in pods.items():
            talks_to_redis = labels["app.kubernetes.io/component"] in {"ingest", "worker", "analytics", "api"}
            assert (labels.get("split-infer/pipeline") == "true") == talks_to_redis, f"{target}: {name}"
            open_rules = [rule for p in policies if _selects(p, labels) for rule in p["spec"].get("ingress", [])
                          if not rule.get("from") or any("ipBlock" in peer for peer in rule["from"])]
            if labels["app.kubernetes.io/component"] == "ingest":
                assert [r["ports"] for r in open_rules] == [[{"protocol": "TCP", "port": 50051}]]
            else:
                assert not open_rules, f"{target}: {name} is reachable from outside"


def test_secrets_are_referenced_never_committed(rendered):
    for target, (objs, _) in rendered.items():
        secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
        examples = {p.read_bytes() for p in vk.K8S_DIR.rglob("*.example")}
        for name, secret in secrets.items():
            for key, value in secret.get("data", {}).items():
                assert base64.b64decode(value) in examples, \
                    f"{target}: Secret {name}.{key} is not an *.example placeholder"
        referenced = set()
        for obj in (o for o in objs if o["kind"] in POD_KINDS):
            spec = pod_spec(obj)
            referenced |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            for c in spec["containers"]:
                referenced |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                               if "secretKeyRef" in e.get("valueFrom", {})}
                assert not any("value" in e and "PASSWORD" in e["name"] and "FILE" not in e["name"]
                               for e in c.get("env", [])), f"{target}: a literal password in {obj['metadata']['name']}"
        for ta in (o for o in objs if o["kind"] == "TriggerAuthentication"):
            referenced |= {ref["name"] for ref in ta["spec"]["secretTargetRef"]}
        referenced |= {t["secretName"] for o in objs if o["kind"] == "Ingress" for t in o["spec"].get("tls", [])}
        missing = referenced - set(secrets) - EXTERNAL_SECRETS
        assert not missing, f"{target}: references Secrets that neither exist nor are documented: {missing}"
    deploy_doc = (ROOT / "docs" / "deploy.md").read_text()
    assert all(name in deploy_doc for name in EXTERNAL_SECRETS), \
        "docs/deploy.md must say how to create each external Secret"


def _with_secret_files(data: dict[str, Any], tmp_path: Path, **files: str) -> dict[str, Any]:
    """The config with each *_file field pointing at a temporary file holding a test value."""
    for field, value in files.items():
        path = tmp_path / field
        path.write_text(value)
        data[field] = str(path)
    return data


def test_configs_are_accepted_by_the_services(tmp_path, monkeypatch):
    for var in ("SPLIT_INFER_REDIS_PASSWORD", "SPLIT_INFER_REDIS_PASSWORD_FILE", "SPLIT_INFER_EDGE_TOKEN",
                "SPLIT_INFER_EDGE_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    cloud_data = yaml.safe_load((vk.K8S_DIR / "base/config/cloud.yaml").read_text())
    assert cloud_data["redis_password_file"] == "/run/secrets/split-infer/redis/password"
    cloud = CloudConfig.model_validate(_with_secret_files(cloud_data, tmp_path, redis_password_file="pw"))
    assert cloud.redis_url == "redis://:pw@redis:6379/0" and not cloud.tls.insecure and cloud.tls.client_ca
    api_data = yaml.safe_load((vk.K8S_DIR / "base/config/api.yaml").read_text())
    ApiConfig.model_validate(_with_secret_files(api_data, tmp_path, redis_password_file="pw"))
    edge_path = vk.K8S_DIR / "overlays/edge/site-a/edge-config.yaml"
    token = (vk.K8S_DIR / "overlays/edge/secrets/edge-token-site-a.example").read_text()
    edge_data = yaml.safe_load(edge_path.read_text())
    assert edge_data["token_file"] == "/run/secrets/split-infer/edge/token" and "token" not in edge_data
    edge = EdgeConfig.model_validate(_with_secret_files(edge_data, tmp_path, token_file=token))
    assert edge.metrics_port == METRICS_PORTS["edge"] and edge.cloud.split(":")[0] == "ingest"
    cloud_ids = {c.id for c in cloud.cameras}
    assert {c.id for c in edge.cameras} <= cloud_ids
    # The example token is accepted by the cloud for every camera of the site.
    assert any(t == EdgeToken.for_secret(t.name, edge.token or "", t.cameras)
               and all(t.covers(c.id) for c in edge.cameras) for t in cloud.tokens)


def test_keda_scales_on_every_cameras_frame_backlog(rendered):
    objs = objects(rendered, "overlays/keda")
    assert not [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"], "KEDA owns the HPA in this overlay"
    scaled = find(objs, "ScaledObject", "worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "worker"
    triggers = scaled["spec"]["triggers"]
    cloud = yaml.safe_load((vk.K8S_DIR / "base/config/cloud.yaml").read_text())
    keys = Keys()
    streams = [t["metadata"] for t in triggers if t["type"] == "redis-streams"]
    assert sorted(s["stream"] for s in streams) == sorted(keys.frames_stream(c["id"]) for c in cloud["cameras"])
    assert {s["consumerGroup"] for s in streams} == {Keys.FRAMES_GROUP}
    # The backlog target must be reachable: a camera's queue never holds more than max_queue frames.
    assert all(0 < int(s["streamLength"]) < cloud["max_queue"] for s in streams)
    auth = find(objs, "TriggerAuthentication", "redis")
    secret = next(o for o in objs if o["kind"] == "Secret" and o["metadata"]["name"].startswith("split-infer-redis"))
    assert auth["spec"]["secretTargetRef"][0]["name"] == secret["metadata"]["name"]  # hash suffix followed
    cpu = next(t for t in triggers if t["type"] == "cpu")
    assert cpu["metricType"] == "Utilization" and cpu["metadata"]["value"] == "70"
    latency = next(t for t in triggers if t["type"] == "prometheus")
    assert latency["metricType"] == "Value" and float(latency["metadata"]["threshold"]) == 0.5
    assert metrics.INFERENCE_LATENCY._name in latency["metadata"]["query"]


def test_rollout_runs_the_workers_with_a_canary_analysis(rendered):
    objs = objects(rendered, "overlays/rollouts")
    rollout = find(objs, "Rollout", "worker")
    assert find(objs, "Deployment", "worker")["spec"]["replicas"] == 0  # the Rollout runs the pods
    assert rollout["spec"]["workloadRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"}
    hpa = find(objs, "HorizontalPodAutoscaler", "worker")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "worker"}
    canary = rollout["spec"]["strategy"]["canary"]
    weights = [s["setWeight"] for s in canary["steps"] if "setWeight" in s]
    assert weights == sorted(weights) and 0 < weights[0] < 50
    uses = [canary["analysis"]] + [s["analysis"] for s in canary["steps"] if "analysis" in s]
    templates = {o["metadata"]["name"]: o for o in objs if o["kind"] == "AnalysisTemplate"}
    for use in uses:
        for ref in use["templates"]:
            template = templates.get(ref["templateName"])
            assert template, f"AnalysisTemplate {ref['templateName']} is not in the overlay"
            declared = {a["name"] for a in template["spec"].get("args", [])}
            needed = {a["name"] for a in template["spec"].get("args", []) if "value" not in a and "valueFrom" not in a}
            given = {a["name"] for a in use.get("args", [])}
            assert needed <= given, f"the Rollout does not pass {needed - given} to {ref['templateName']}"
            assert given <= declared, f"the Rollout passes {given - declared}, unknown to {ref['templateName']}"


def test_gpu_overlay_gives_each_worker_a_gpu(rendered):
    worker = find(objects(rendered, "overlays/gpu"), "Deployment", "worker")
    resources = pod_spec(worker)["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert pod_spec(worker)["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(worker)["tolerations"])
    assert "nvidia.com/gpu" not in str(find(objects(rendered, "base"), "Deployment", "worker"))


def test_edge_runs_per_site_on_labelled_nodes(rendered):
    objs = objects(rendered, "overlays/edge")
    edges = [o for o in objs if o["kind"] in POD_KINDS and component(o) == "edge"]
    assert edges
    for edge in edges:
        site = edge["metadata"]["labels"]["split-infer/edge-site"]
        assert pod_spec(edge)["nodeSelector"] == {"split-infer/edge-site": site}
        env_or_config = str(pod_spec(edge)["volumes"])
        assert f"split-infer-edge-token-{site}" in env_or_config and f"split-infer-edge-{site}" in env_or_config


def _entrypoint(dockerfile: Path) -> list[str]:
    line = next(ln for ln in dockerfile.read_text().splitlines() if ln.startswith("ENTRYPOINT"))
    return yaml.safe_load(line.removeprefix("ENTRYPOINT"))


def test_container_command_lines_are_accepted_by_the_cli(rendered, tmp_path):
    # Each container's command line, parsed by the real `split-infer` argument parsers: only the
    # config file (replaced by a missing one) may be the problem, never a flag.
    entrypoints = {"split-infer-cloud": _entrypoint(ROOT / "deploy/cloud/Dockerfile"),
                   "split-infer-edge": _entrypoint(ROOT / "deploy/edge/Dockerfile")}
    missing = tmp_path / "missing.yaml"
    checked = set()
    for obj in (o for o in objects(rendered, "overlays/edge") if o["kind"] in POD_KINDS):
        for c in pod_spec(obj)["containers"]:
            image = c["image"].split(":")[0]
            if image not in entrypoints:
                continue
            argv = (c.get("command") or entrypoints[image]) + c.get("args", [])
            argv[argv.index("--config") + 1] = str(missing)
            assert argv[0] == "split-infer"
            out = subprocess.run([str(Path(sys.executable).parent / "split-infer"), *argv[1:]],
                                 capture_output=True, text=True, timeout=120, check=False)
            assert f"{missing}: config file not found" in out.stderr, f"{argv}: {out.stderr}"
            checked.add(component(obj))
    assert checked == {"ingest", "worker", "analytics", "api", "edge"}
