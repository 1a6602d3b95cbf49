"""Metrics wiring: every metric that deploy/ names (the HPA through the prometheus-adapter rules,
KEDA's Prometheus trigger, the Argo canary AnalysisTemplate, the Grafana dashboard) is exported by
a real process of a running pipeline, with samples and every label the queries use.

Labels that Prometheus adds at scrape time (job, instance; the Prometheus Operator's namespace,
pod...; the ServiceMonitors' podTargetLabels such as rollouts_pod_template_hash) are not the
processes' to export: they are derived from the ServiceMonitors and the compose Prometheus config,
and a process exporting one of them is a fault (Prometheus would rename its label exported_<name>),
unless every ServiceMonitor copies it back (splitinfer_redis_up{service}: metricRelabelings).
The dashboard runs on either Prometheus, so it may use only what both add.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from split_infer.apps.processes import free_port
from support.analytics import LINE, feed, street_records
from support.api import api_server
from support.data import ROOT, street_video
from support.http import http_get
from support.pipeline import Pipeline
from support.promql import Matcher, PromQLError, Selector, parse
from support.redisdb import RedisServer
from support.wait import wait_for
from test_metrics_names import DASHBOARD, dashboard_exprs, promql_metric_names

HPA = ROOT / "deploy/k8s/base/worker-hpa.yaml"
ADAPTER = ROOT / "deploy/k8s/prometheus-adapter/config.yaml"
KEDA = ROOT / "deploy/k8s/overlays/keda/scaledobject.yaml"
ANALYSIS = ROOT / "deploy/k8s/components/canary/analysistemplate.yaml"
SERVICE_MONITORS = ROOT / "deploy/k8s/components/monitoring/servicemonitors.yaml"
COMPOSE_PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"

# Prometheus puts these on every target it scrapes (https://prometheus.io/docs/concepts/jobs_instances/).
PROMETHEUS_TARGET_LABELS = frozenset({"job", "instance"})
# The scrape config the Prometheus Operator generates for a ServiceMonitor sets these on every target
# from Kubernetes service discovery (fixed by the operator, so not derivable from our files).
OPERATOR_TARGET_LABELS = frozenset({"namespace", "service", "pod", "container", "endpoint"})
# The family type each series suffix belongs to (PromQL selects series; a histogram has no series of its own name).
SUFFIX_FAMILY = {"_bucket": ("histogram",), "_count": ("histogram", "summary"), "_sum": ("histogram", "summary"),
                 "_total": ("counter",)}
PLACEHOLDER = "$placeholder"  # a value filled in by Argo or the adapter: not checked against samples


# -- where the metric names come from --------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A series a consumer queries, the labels it needs on it, and the labels its Prometheus adds."""

    source: str
    series: str
    labels: frozenset[str]
    matchers: tuple[Matcher, ...]
    range_function: str | None
    scrape_added: frozenset[str]


def references(source: str, expr: str, scrape_added: frozenset[str]) -> list[Reference]:
    return [reference(source, s, scrape_added) for s in parse(expr)]


def reference(source: str, s: Selector, scrape_added: frozenset[str], extra: Iterable[str] = ()) -> Reference:
    return Reference(source, s.name, frozenset(s.labels | set(extra)), s.matchers, s.range_function, scrape_added)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def sanitized(label: str) -> str:
    """A Kubernetes label key as Prometheus names it (what the operator does to podTargetLabels)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def target_relabel_labels(rules: list[dict], key: str) -> set[str]:
    """The labels target relabelings (relabelings / relabel_configs) add to every series of a target."""
    out = set()
    for rule in rules:
        if rule.get("action", "replace").lower() not in ("replace", "hashmod"):
            pytest.fail(f"relabel action {rule['action']}: extend tests/test_metrics_wiring.py to derive its labels")
        if key in rule:
            out.add(rule[key])
    return out


def restored_labels(rules: list[dict], source: str, target: str) -> set[str]:
    """The labels metric relabelings (metricRelabelings / metric_relabel_configs) give back to the
    process: where a target label renamed an exported one exported_<name>, its value copied back
    (replace) and the copy dropped (labeldrop). Any other metric relabeling fails: extend the test."""
    out = set()
    for rule in rules:
        action = rule.get("action", "replace").lower()
        if action == "replace" and len(rule.get(source, [])) == 1 and rule[source][0] == f"exported_{rule[target]}":
            out.add(rule[target])
        elif not (action == "labeldrop" and re.fullmatch(r"exported_\w+", rule.get("regex", ""))):
            pytest.fail(f"metric relabeling {rule}: extend tests/test_metrics_wiring.py to derive its labels")
    return out


def service_monitors() -> list[dict]:
    monitors = [d for d in yaml_docs(SERVICE_MONITORS) if d.get("kind") == "ServiceMonitor"]
    assert monitors, f"no ServiceMonitor in {SERVICE_MONITORS}"
    return monitors


def k8s_scrape_labels() -> frozenset[str]:
    """The labels Prometheus adds to the series of every split-infer target on Kubernetes: derived from
    the ServiceMonitors (podTargetLabels, targetLabels, relabelings), plus what every target gets."""
    labels = set(PROMETHEUS_TARGET_LABELS | OPERATOR_TARGET_LABELS)
    for mon in service_monitors():
        spec = mon["spec"]
        labels |= {sanitized(k) for k in spec.get("podTargetLabels", []) + spec.get("targetLabels", [])}
        for ep in spec["endpoints"]:
            labels |= target_relabel_labels(ep.get("relabelings", []), "targetLabel")
    return frozenset(labels)


def k8s_restored_labels() -> frozenset[str]:
    """Scrape-time labels whose exported value every ServiceMonitor gives back to the process."""
    per_endpoint = [restored_labels(ep.get("metricRelabelings", []), "sourceLabels", "targetLabel")
                    for mon in service_monitors() for ep in mon["spec"]["endpoints"]]
    return frozenset(set.intersection(*per_endpoint))


def compose_scrape_labels() -> frozenset[str]:
    """The labels the compose Prometheus adds: job and instance, and its relabel_configs' targets."""
    cfg = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    # Recording rules would define series no process exports: they would need parsing here.
    assert not cfg.get("rule_files"), "the compose Prometheus has rule_files: parse their rules in this test"
    labels = set(PROMETHEUS_TARGET_LABELS)
    for job in cfg["scrape_configs"]:
        labels |= target_relabel_labels(job.get("relabel_configs", []), "target_label")
        assert not restored_labels(job.get("metric_relabel_configs", []), "source_labels", "target_label")
    return frozenset(labels)


@dataclass(frozen=True)
class AdapterRule:
    where: str  # e.g. config.yaml externalRules[0]
    kind: str  # rules (custom metrics API) or externalRules (external metrics API)
    served: str  # the metric name the adapter serves
    series: Selector  # its seriesQuery's selector
    resource_labels: frozenset[str]  # labels resources.overrides maps to Kubernetes objects
    metrics_query: str  # with the adapter's template fields (<<.Series>>...)


def adapter_rules() -> list[AdapterRule]:
    cfg = yaml.safe_load(ADAPTER.read_text())
    unknown = set(cfg) - {"rules", "externalRules"}
    assert not unknown, f"adapter sections this test does not check: {unknown}"
    out = []
    for kind in ("rules", "externalRules"):
        for i, rule in enumerate(cfg.get(kind, [])):
            (series,) = parse(rule["seriesQuery"])
            resources = rule.get("resources", {})
            assert "template" not in resources, "resources.template: extend the test to derive its labels"
            # name.as, as the adapter applies it: a regex replacement, $1 by default ($0 without a group).
            pattern = rule.get("name", {}).get("matches", "^(.*)$")
            default = "$1" if re.compile(pattern).groups else "$0"
            as_ = re.sub(r"\$(\d+)", r"\\g<\1>", rule.get("name", {}).get("as", default))
            out.append(AdapterRule(f"{rel(ADAPTER)} {kind}[{i}]", kind, re.sub(pattern, as_, series.name), series,
                                   frozenset(resources.get("overrides", {})), rule["metricsQuery"]))
    return out


def metrics_query(rule: AdapterRule) -> str:
    """A rule's metricsQuery with the adapter's template fields filled in as the adapter does."""
    query = rule.metrics_query.replace("<<.Series>>", rule.series.name)
    query = query.replace("<<.LabelMatchers>>", ",".join(f'{k}="{PLACEHOLDER}"' for k in sorted(rule.resource_labels)))
    query = query.replace("<<.GroupBy>>", ",".join(sorted(rule.resource_labels)))
    assert "<<" not in query, f"an adapter template field this test does not fill: {query}"
    return query


def adapter_references() -> list[Reference]:
    added = k8s_scrape_labels()
    out = []
    for rule in adapter_rules():
        where = f"{rule.where} ({rule.served})"
        out.append(reference(f"{where} seriesQuery", rule.series, added, rule.resource_labels))
        out += references(f"{where} metricsQuery", metrics_query(rule), added)
    return out


def hpa_references() -> tuple[list[Reference], list[str]]:
    """The series behind each Pods/Object/External metric of the HPA (through the adapter rule that
    serves it, with the HPA's selector labels), and the HPA metrics no adapter rule serves."""
    (hpa,) = yaml_docs(HPA)
    rules = adapter_rules()
    added = k8s_scrape_labels()
    out, unserved = [], []
    for i, m in enumerate(hpa["spec"]["metrics"]):
        kind = m["type"]
        if kind in ("Resource", "ContainerResource"):
            continue
        section = {"External": "external", "Pods": "pods", "Object": "object"}[kind]
        metric = m[section]["metric"]
        selector = metric.get("selector", {})
        labels = set(selector.get("matchLabels", {})) | {e["key"] for e in selector.get("matchExpressions", [])}
        wanted = "externalRules" if kind == "External" else "rules"
        served = [r for r in rules if r.kind == wanted and r.served == metric["name"]]
        if not served:
            unserved.append(f"{rel(HPA)} metrics[{i}]: {kind} {metric['name']} is served by no {wanted} "
                            f"rule of {rel(ADAPTER)}")
        out += [reference(f"{rel(HPA)} metrics[{i}] ({metric['name']})", r.series, added, labels) for r in served]
    return out, unserved


def keda_references() -> list[Reference]:
    added = k8s_scrape_labels()
    out = []
    for doc in yaml_docs(KEDA):
        for i, trigger in enumerate(doc["spec"]["triggers"]):
            if trigger["type"] == "prometheus":
                out += references(f"{rel(KEDA)} triggers[{i}]", trigger["metadata"]["query"], added)
    return out


def analysis_references() -> list[Reference]:
    added = k8s_scrape_labels()
    out = []
    for doc in yaml_docs(ANALYSIS):
        for m in doc["spec"]["metrics"]:
            # {{args.x}}: Argo's arguments, filled in before the query reaches Prometheus.
            query = re.sub(r"\{\{\s*args\.[\w-]+\s*\}\}", PLACEHOLDER, m["provider"]["prometheus"]["query"])
            out += references(f"{rel(ANALYSIS)} {m['name']}", query, added)
    return out


def dashboard_references() -> list[Reference]:
    both = k8s_scrape_labels() & compose_scrape_labels()  # the dashboard runs on either Prometheus
    return [r for i, e in enumerate(dashboard_exprs()) for r in references(f"{rel(DASHBOARD)} expr[{i}]", e, both)]


def all_references() -> list[Reference]:
    return (hpa_references()[0] + adapter_references() + keda_references() + analysis_references()
            + dashboard_references())


def series(refs: list[Reference]) -> set[str]:
    return {r.series for r in refs}


# -- the checker ----------------------------------------------------------------------------------


def literal(value: str) -> bool:
    """A matcher value that is itself (no Grafana $variable, no Argo or adapter placeholder)."""
    return "$" not in value


def check(refs: list[Reference], scrapes: dict[str, list[Metric]]) -> list[str]:
    """What each reference misses in the scraped processes' metrics (empty: all wired)."""
    problems = []
    for ref in refs:
        found = [(proc, fam, s) for proc, fams in scrapes.items() for fam in fams for s in fam.samples
                 if s.name == ref.series]
        if not found:
            problems.append(f"{ref.source}: {ref.series} has no samples in any process ({', '.join(scrapes)})")
            continue
        need = ref.labels - ref.scrape_added
        carrying = [(proc, fam, s) for proc, fam, s in found if need <= s.labels.keys()]
        if not carrying:
            have = sorted({k for _, _, s in found for k in s.labels})
            problems.append(f"{ref.source}: {ref.series} lacks label(s) {sorted(need)} (exported: {have}; added at "
                            f"scrape time: {sorted(ref.scrape_added)})")
            continue
        for m in ref.matchers:
            if m.op == "=" and m.label not in ref.scrape_added and literal(m.value) \
                    and not any(s.labels.get(m.label) == m.value for _, _, s in carrying):
                problems.append(f"{ref.source}: no {ref.series} sample has {m.label}={m.value!r}")
        if ref.range_function in ("rate", "irate", "increase", "resets"):
            kinds = {fam.type for _, fam, _ in carrying}
            if not kinds <= {"counter", "histogram", "summary"}:
                problems.append(f"{ref.source}: {ref.range_function}() of {ref.series}, a {sorted(kinds)}")
        suffix = next((s for s in SUFFIX_FAMILY if ref.series.endswith(s)), None)
        if suffix is not None and not {fam.type for _, fam, _ in carrying} <= set(SUFFIX_FAMILY[suffix]):
            problems.append(f"{ref.source}: {ref.series} is not the {suffix} series of a {SUFFIX_FAMILY[suffix]}")
    return problems


def scrape_label_collisions(scrapes: dict[str, list[Metric]], added: frozenset[str]) -> list[str]:
    """Exported labels that Prometheus also adds at scrape time (it would rename them exported_<name>)."""
    return sorted({f"{proc}: {s.name} exports {k}" for proc, fams in scrapes.items() for fam in fams
                   for s in fam.samples if fam.name.startswith("splitinfer_") for k in s.labels if k in added})


def families(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


# -- unit: the configs are read, and the checker can fail ------------------------------------------


@pytest.mark.unit
def test_every_consumer_file_yields_its_references():
    """A renamed file, a moved query or a parser that reads nothing fails here, not silently."""
    hpa, unserved = hpa_references()
    assert not unserved, "\n".join(unserved)
    assert series(hpa) >= {"splitinfer_inference_latency_seconds_bucket", "splitinfer_queue_depth_frames"}
    rules = adapter_rules()
    assert {r.served for r in rules} >= {"splitinfer_inference_latency_p95_seconds", "splitinfer_queue_backlog_frames"}
    assert all(r.resource_labels >= {"namespace"} for r in rules)
    adapter = adapter_references()
    assert series(adapter) >= {"splitinfer_inference_latency_seconds_bucket", "splitinfer_queue_depth_frames"}
    assert any(r.series == "splitinfer_queue_depth_frames" and "camera" in r.labels for r in adapter)
    assert any(r.series == "splitinfer_inference_latency_seconds_bucket" and "le" in r.labels for r in adapter)
    assert series(keda_references()) >= {"splitinfer_inference_latency_seconds_bucket"}
    analysis = analysis_references()
    assert series(analysis) >= {"splitinfer_shadow_agreement_ratio", "splitinfer_shadow_frames_total",
                                "splitinfer_inference_latency_seconds_bucket",
                                "splitinfer_inference_latency_seconds_count"}
    assert all({"namespace", "rollouts_pod_template_hash", "model_version"} <= r.labels for r in analysis)
    dash = dashboard_references()
    assert len(dash) >= 20 and series(dash) >= {"splitinfer_frames_total", "splitinfer_camera_up",
                                                "splitinfer_shadow_agreement_ratio", "splitinfer_http_requests_total"}
    # The parser finds the names test_metrics_names' name scanner finds, expression by expression.
    for expr in dashboard_exprs():
        assert {s.name for s in parse(expr)} == promql_metric_names(expr), expr


@pytest.mark.unit
def test_scrape_time_labels_come_from_the_servicemonitors_and_the_compose_config():
    k8s, compose = k8s_scrape_labels(), compose_scrape_labels()
    # rollouts-pod-template-hash, a podTargetLabel, is what the AnalysisTemplate selects the canary by.
    assert {"rollouts_pod_template_hash", "split_infer_track", "namespace", "pod", "job", "instance"} <= k8s
    assert compose >= {"job", "instance"} and "namespace" not in compose
    assert sanitized("split-infer/track") == "split_infer_track"
    # splitinfer_redis_up{service}: the operator's `service` target label renames it exported_service;
    # every ServiceMonitor copies it back.
    assert k8s_restored_labels() == {"service"} and "service" in k8s


@pytest.mark.unit
def test_the_parser_reads_what_the_configs_write_and_refuses_the_rest():
    (s,) = parse('sum by (le) (rate(x_bucket{a="1",b=~"$v"}[$__rate_interval])) > bool 0')
    assert (s.name, s.labels, s.range_function) == ("x_bucket", {"le", "a", "b"}, "rate")
    a, b = parse("max by (camera) (a) * on (job) group_left (model) b offset 5m")
    assert a.labels == {"camera", "job", "model"} and b.labels == {"job", "model"}
    (c,) = parse("label_values(splitinfer_camera_up, camera)")
    assert c.labels == {"camera"}
    assert parse('{__name__="y", k!="v"}')[0].name == "y"
    assert [x.name for x in parse("(a and on() (sum(increase(b[10m])) >= 200)) or on() vector(NaN)")] == ["a", "b"]
    for bad in ('label_replace(x, "a", "$1", "b", "(.*)")', "sum(x", 'x{a=b}', '{__name__=~"split.*"}',
                "label_values(camera)", "x $y"):
        with pytest.raises(PromQLError):
            parse(bad)


SCRAPE = """\
# HELP splitinfer_inference_latency_seconds latency
# TYPE splitinfer_inference_latency_seconds histogram
splitinfer_inference_latency_seconds_bucket{camera="c",model_version="v",le="0.5"} 1.0
splitinfer_inference_latency_seconds_bucket{camera="c",model_version="v",le="+Inf"} 1.0
splitinfer_inference_latency_seconds_count{camera="c",model_version="v"} 1.0
splitinfer_inference_latency_seconds_sum{camera="c",model_version="v"} 0.2
# HELP splitinfer_queue_depth_frames depth
# TYPE splitinfer_queue_depth_frames gauge
splitinfer_queue_depth_frames{camera="c"} 3.0
# HELP splitinfer_redis_up up
# TYPE splitinfer_redis_up gauge
splitinfer_redis_up{service="worker",pod="p"} 1.0
"""


@pytest.mark.unit
def test_the_checker_reports_what_is_not_exported():
    scrapes = {"worker": families(SCRAPE)}
    added = frozenset({"namespace", "pod", "job"})
    good = references("ok", 'histogram_quantile(0.95, sum by (le, camera) (rate('
                      'splitinfer_inference_latency_seconds_bucket{namespace="n",model_version=~".+"}[2m])))', added)
    good += references("ok", 'sum(max by (camera) (splitinfer_queue_depth_frames{camera="c"}))', added)
    assert check(good, scrapes) == []
    cases = {
        "splitinfer_no_such_series": "has no samples in any process",
        "splitinfer_queue_depth_frames{zone=\"z\"}": "lacks label(s) ['zone']",
        "max by (model_version) (splitinfer_queue_depth_frames)": "lacks label(s) ['model_version']",
        "splitinfer_queue_depth_frames{camera=\"elsewhere\"}": "camera='elsewhere'",
        "rate(splitinfer_queue_depth_frames[5m])": "rate() of splitinfer_queue_depth_frames, a ['gauge']",
        "sum by (le) (splitinfer_inference_latency_seconds_count)": "lacks label(s) ['le']",
        "splitinfer_inference_latency_seconds": "has no samples",  # the family name is no series
        # `namespace` is added at scrape time only where the config says so.
        "splitinfer_queue_depth_frames{namespace=\"n\"}": "lacks label(s) ['namespace']",
    }
    for expr, complaint in cases.items():
        problems = check(references(expr, expr, frozenset({"job"})), scrapes)
        assert len(problems) == 1 and complaint in problems[0], (expr, problems)
    assert scrape_label_collisions(scrapes, added) == ["worker: splitinfer_redis_up exports pod"]


# -- a real pipeline: every process's /metrics ---------------------------------------------------

LIVE = "wiring-live"  # the edge's camera (the street footage at 5 fps)
RECORDED = "street"  # detection records of the whole clip, fed to analytics as a worker writes them
ZONE = {"name": "lower", "polygon": [[0, 150], [640, 150], [640, 235], [0, 235]]}
CANARY_VERSION = "wiring-canary"


@dataclass
class Running:
    pipe: Pipeline
    ports: dict[str, int]
    api: str

    def scrape(self) -> dict[str, list[Metric]]:
        urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in self.ports.items()}
        urls["api"] = self.api + "/metrics"
        out = {}
        for name, url in urls.items():
            status, text = http_get(url)
            assert status == 200, (name, status, text[:500])
            out[name] = families(text)
        return out


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Running]:
    """Edge, ingest, a canary worker (shadow mode on), analytics and the API as processes, mutual TLS
    between the edge and the ingest, on a private Redis."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    line = json.loads(json.dumps(LINE))  # tuples: not YAML for safe_dump
    scene = {"lines": [line], "zones": [ZONE]}
    ports = {name: free_port() for name in ("ingest", "worker", "analytics", "edge")}
    worker = {"overload": "late", "claim_idle_ms": 3000, "claim_interval_s": 1.0,
              # A canary: its own version on every record and sample, every frame shadowed by the
              # stable model (here the same head: a config-only rollout, agreement 1).
              "release": {"model_version": CANARY_VERSION, "shadow": {"sample_ratio": 1.0, "window_frames": 50}}}
    cameras = [{"id": LIVE, "url": str(street_video()), "realtime": True, "loop": True, "fps": 5}]
    pipe = Pipeline(tmp_path, db=0, cameras=cameras, redis_url=server.url,
                    edge_extra={"codec": "q8-zstd", "precision": "f32", "metrics_port": ports["edge"]},
                    cloud_extra={"worker": worker,
                                 "cameras": [{"id": c, "url": "x", **scene} for c in (LIVE, RECORDED)]})
    cfg = str(pipe.cloud_yaml)
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        stack.callback(pipe.stop)
        pipe.services.start("ingest", "cloud", "ingest", "--config", cfg, "--metrics-port", str(ports["ingest"]))
        pipe.services.start("worker", "cloud", "worker", "--config", cfg, "--name", "canary-1",
                            "--metrics-port", str(ports["worker"]))
        pipe.services.start("analytics", "analytics", "--config", cfg, "--consumer", "wiring", "--reorder-wait", "0.2",
                            "--metrics-port", str(ports["analytics"]))
        pipe.wait_ingest()
        api = stack.enter_context(api_server(pipe.keys.prefix, server.url, workdir=tmp_path))
        pipe.wait_worker("worker")
        pipe.start_edge()
        yield Running(pipe, ports, api)


@pytest.mark.unit
@pytest.mark.e2e
def test_every_referenced_metric_is_exported_with_its_labels(pipeline: Running):
    refs = all_references()
    pipe = pipeline.pipe
    feed(pipe.r, pipe.keys, street_records()[:320])  # crossings and zone exits within the first 320 frames
    wait_for(lambda: len(pipe.records(LIVE)) >= 10 or pipe.services.dead(), 90, "10 live frames through the worker")
    assert not pipe.services.dead(), {n: pipe.log(n)[-2000:] for n in pipe.services.dead()}
    wait_for(lambda: pipe.r.hget(pipe.keys.counts(RECORDED), "seq") == b"319", 60, "analytics to reach seq 319")
    with httpx.Client(base_url=pipeline.api, timeout=10) as client:  # requests for the API's own metrics
        assert client.get("/api/v1/cameras").status_code == 200
        assert client.get(f"/api/v1/cameras/{LIVE}/detections/latest").status_code == 200

    # Labels a process must not export: Prometheus adds them (unless the ServiceMonitors give them back).
    scrape_added = (k8s_scrape_labels() - k8s_restored_labels()) | compose_scrape_labels()
    # Gauges and counters follow the work within a moment: poll until the check holds, then report.
    last: list[str] = []

    def wired() -> bool:
        nonlocal last
        scrapes = pipeline.scrape()
        last = check(refs, scrapes) + scrape_label_collisions(scrapes, scrape_added)
        return not last

    try:
        wait_for(wired, 20, "every referenced metric", every=1.0)
    except AssertionError:
        pytest.fail("metrics the deploy configs use and no process exports:\n" + "\n".join(last))
    scrapes = pipeline.scrape()
    shadow = [s for f in scrapes["worker"] if f.name == "splitinfer_shadow_frames" for s in f.samples
              if s.name.endswith("_total")]
    assert shadow and shadow[0].labels == {"model_version": CANARY_VERSION} and shadow[0].value >= 10
    assert not pipe.services.dead(), {n: pipe.log(n)[-2000:] for n in pipe.services.dead()}
