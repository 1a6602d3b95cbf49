"""Metric names: the contract of split_infer/metrics.py, the Prometheus naming guide, the Grafana
dashboard against the exported names, and a real process's /metrics, /healthz and /readyz."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import redis
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from split_infer import __version__, metrics
from split_infer.api.http_metrics import UNMATCHED_ROUTE, HttpMetrics
from split_infer.apps.processes import free_port
from split_infer.keys import Keys
from split_infer.observability import ObservabilityServer, Probe
from support.analytics import LINE, feed, street_records
from support.data import ROOT
from support.http import http_get, probe
from support.processes import Services
from support.redisdb import RedisServer
from support.wait import wait_for

DASHBOARD = ROOT / "deploy/grafana/dashboards/split-infer.json"

# variable in split_infer/metrics.py -> (exported name, type, labels): what dashboards, alerts and the
# other services are written against. A rename here is a breaking change for every operator.
CONTRACT: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "INFERENCE_LATENCY": ("splitinfer_inference_latency_seconds", "histogram", ("camera", "model_version")),
    "QUEUE_DELAY": ("splitinfer_queue_delay_seconds", "histogram", ()),
    "HEAD_SECONDS": ("splitinfer_head_batch_seconds", "histogram", ()),
    "BATCH_SIZE": ("splitinfer_batch_frames", "histogram", ()),
    "BATCH_CHOICE": ("splitinfer_batch_frames_chosen", "gauge", ()),
    "QUEUE_DEPTH": ("splitinfer_queue_depth_frames", "gauge", ("camera",)),
    "FRAMES": ("splitinfer_frames_total", "counter", ("stage", "outcome")),
    "BYTES_RECEIVED": ("splitinfer_ingest_received_bytes_total", "counter", ("camera",)),
    "CAMERA_UP": ("splitinfer_camera_up", "gauge", ("camera",)),
    "CREDIT": ("splitinfer_ingest_credit_frames", "gauge", ("camera",)),
    "REDIS_UP": ("splitinfer_redis_up", "gauge", ("service",)),
    "ANALYTICS_CHECKPOINTS": ("splitinfer_analytics_checkpoints_total", "counter", ("outcome",)),
    "ANALYTICS_REJECTED": ("splitinfer_analytics_rejected_records_total", "counter", ("reason",)),
    "EDGE_FRAMES": ("splitinfer_edge_frames_total", "counter", ("camera", "outcome")),
    "EDGE_BYTES": ("splitinfer_edge_sent_bytes_total", "counter", ("camera", "kind")),
    "EDGE_STAGE": ("splitinfer_edge_stage_seconds", "histogram", ("stage",)),
    "EDGE_BUFFER": ("splitinfer_edge_buffer_frames", "gauge", ()),
    "EDGE_INFLIGHT": ("splitinfer_edge_inflight_frames", "gauge", ()),
    "EDGE_CONNECTED": ("splitinfer_edge_cloud_connected", "gauge", ()),
    "EDGE_RECONNECTS": ("splitinfer_edge_cloud_reconnects_total", "counter", ()),
    "EDGE_CAMERA_UP": ("splitinfer_edge_camera_up", "gauge", ("camera",)),
    "BUILD_INFO": ("splitinfer_build_info", "gauge", ("version", "model", "codec")),
    "LINE_CROSSINGS": ("splitinfer_line_crossings_total", "counter", ("camera", "line", "direction", "class")),
    "ZONE_OCCUPANCY": ("splitinfer_zone_occupancy_objects", "gauge", ("camera", "zone", "class")),
    "ZONE_DWELL": ("splitinfer_zone_dwell_seconds", "histogram", ("camera", "zone")),
    "HTTP_REQUESTS": ("splitinfer_http_requests_total", "counter", ("method", "route", "status")),
    "HTTP_DURATION": ("splitinfer_http_request_duration_seconds", "histogram", ("method", "route")),
    "SHADOW_AGREEMENT": ("splitinfer_shadow_agreement_ratio", "gauge", ("model_version", "stable_version")),
    "SHADOW_FRAMES": ("splitinfer_shadow_frames_total", "counter", ("model_version",)),
}

# Base units (https://prometheus.io/docs/practices/naming/) and the things we count in whole units.
UNIT_SUFFIXES = ("_seconds", "_bytes", "_ratio", "_frames", "_objects")
STATE_SUFFIXES = ("_up", "_connected", "_info")  # 0/1 gauges and the build-info gauge: no unit
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                   "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
# Contract names that break the unit-suffix rule, and why (kept for compatibility with dashboards).
NAMING_EXCEPTIONS = {"splitinfer_batch_frames_chosen": "the unit (frames) comes before the qualifier"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def defined() -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """Every metric object of split_infer/metrics.py: variable -> (exported family name, type, labels)."""
    out = {}
    for var, obj in vars(metrics).items():
        if isinstance(obj, MetricWrapperBase):
            (family,) = obj.describe()
            exported = family.name + ("_total" if family.type == "counter" else "")
            out[var] = (exported, family.type, tuple(obj._labelnames))
    return out


def series_of(metric: MetricWrapperBase) -> set[str]:
    """The series names PromQL may select of one metric (a histogram's _bucket, a counter's _total...)."""
    (family,) = metric.describe()
    return {family.name + s for s in SERIES_SUFFIXES[family.type]}


def series_names() -> set[str]:
    return set().union(*(series_of(m) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)))


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small parser, enough for our dashboards):
    Grafana's label_values(metric, label) is unwrapped; quoted strings, label matchers {...}, ranges
    [...] and `by (...)`/`without (...)` lists are dropped; what is left that is an identifier,
    not a function call, a keyword or a number, is a metric name."""
    expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


# -- unit: names ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_metric_is_the_contracts_name_type_and_labels():
    assert defined() == CONTRACT


@pytest.mark.unit
def test_every_name_follows_the_naming_guide():
    problems, excused = [], set()
    for var, (name, kind, labels) in defined().items():
        base = name.removesuffix("_total")
        if not re.fullmatch(r"splitinfer_[a-z][a-z0-9_]*[a-z0-9]", name) or "__" in name:
            problems.append(f"{var}: {name} is not splitinfer_ + snake_case")
        if (kind == "counter") != name.endswith("_total"):
            problems.append(f"{var}: {name}: counters, and only counters, end in _total")
        if kind != "counter" and not base.endswith(UNIT_SUFFIXES + STATE_SUFFIXES):
            if name in NAMING_EXCEPTIONS:
                excused.add(name)
                continue
            problems.append(f"{var}: {name} ({kind}) has no unit suffix {UNIT_SUFFIXES}")
        if kind == "histogram" and not base.endswith(UNIT_SUFFIXES):
            problems.append(f"{var}: histogram {name} has no unit")
        if re.search(r"_(milliseconds|ms|kb|mb|percent)(_|$)", name):
            problems.append(f"{var}: {name} is not in base units")
        problems += [f"{var}: label {label!r} is reserved or not snake_case" for label in labels
                     if label.startswith("__") or not re.fullmatch(r"[a-z][a-z0-9_]*", label)]
    assert not problems, "\n".join(problems)
    assert excused == set(NAMING_EXCEPTIONS), "an exception that no longer applies: remove it"


@pytest.mark.unit
def test_the_promql_parser_finds_metric_names_and_only_them():
    expr = ('histogram_quantile(0.95, sum by (le, camera) (rate(splitinfer_x_bucket{camera=~"$camera",a="b(c)"}'
            '[$__rate_interval]))) / ignoring (camera) sum(splitinfer_y) * 60 and on (job) up offset 5m')
    assert promql_metric_names(expr) == {"splitinfer_x_bucket", "splitinfer_y", "up"}
    assert promql_metric_names("label_values(splitinfer_camera_up, camera)") == {"splitinfer_camera_up"}


@pytest.mark.unit
def test_the_grafana_dashboard_uses_only_defined_metrics_and_shows_the_key_ones():
    dash = json.loads(DASHBOARD.read_text())
    used = set().union(*map(promql_metric_names, dashboard_exprs()))
    unknown = used - series_names()
    assert not unknown, f"the dashboard names metrics split_infer/metrics.py does not define: {sorted(unknown)}"
    for panel in ("FRAMES", "INFERENCE_LATENCY", "QUEUE_DEPTH", "BATCH_SIZE", "LINE_CROSSINGS", "ZONE_OCCUPANCY",
                  "EDGE_BYTES", "HTTP_REQUESTS", "HTTP_DURATION", "SHADOW_AGREEMENT"):
        assert used & series_of(getattr(metrics, panel)), f"the dashboard has no panel on {panel}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)) and all(t["expr"].strip() for t in p.get("targets", [])), p["title"]


# -- unit: the shared server and the API's middleware --------------------------------------------


@pytest.mark.unit
def test_the_observability_server_answers_metrics_health_and_readiness():
    p = Probe(stale_after_s=0.5, starting="loading the model")
    server = ObservabilityServer.start(0, live=p.live, ready=p.ready)
    base = f"http://127.0.0.1:{server.port}"
    try:
        metrics.set_build_info("yolov5s", "q8-zstd")
        status, text = http_get(base + "/metrics")
        assert status == 200
        assert f'splitinfer_build_info{{codec="q8-zstd",model="yolov5s",version="{__version__}"}} 1.0' in text
        assert probe(base + "/healthz") == (200, {"status": "ok"})  # starting: alive
        assert probe(base + "/readyz") == (503, {"status": "unavailable", "reason": "loading the model"})
        p.beat()
        p.set_ready(True)
        assert probe(base + "/readyz") == (200, {"status": "ok"})
        p.set_ready(False, "Redis unreachable (ConnectionError)")
        assert probe(base + "/readyz") == (503, {"status": "unavailable",
                                                 "reason": "Redis unreachable (ConnectionError)"})
        status, body = wait_for(lambda: (s := probe(base + "/healthz"))[0] == 503 and s, 5, "a silent loop")
        assert body["status"] == "unavailable" and "silent" in body["reason"]
        assert http_get(base + "/nope")[0] == 404
    finally:
        server.close()


@pytest.mark.unit
def test_http_requests_are_labelled_by_route_template():
    """Labels are templates, also for a router included under two prefixes (as /api/v1 and the /api
    alias are); a raw path never becomes a label; an unhandled error counts as a 500."""
    app = FastAPI()
    app.add_middleware(HttpMetrics)
    router = APIRouter()

    @router.get("/things/{thing}")
    async def thing(thing: str) -> dict:
        if thing == "boom":
            raise RuntimeError("boom")
        return {"thing": thing}

    app.include_router(router, prefix="/t/v1")
    app.include_router(router, prefix="/t")

    @app.get("/plain/{name}")
    async def plain(name: str) -> dict:
        return {"name": name}

    def count(route: str, status: str) -> float:
        return REGISTRY.get_sample_value("splitinfer_http_requests_total",
                                         {"method": "GET", "route": route, "status": status}) or 0.0

    expected = {("/t/v1/things/{thing}", "200"): 2, ("/t/things/{thing}", "200"): 1,
                ("/t/v1/things/{thing}", "500"): 1, ("/plain/{name}", "200"): 1, (UNMATCHED_ROUTE, "404"): 1}
    before = {k: count(*k) for k in expected}

    async def requests() -> list[int]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            paths = ["/t/v1/things/a", "/t/v1/things/b", "/t/things/c", "/t/v1/things/boom", "/plain/x",
                     "/random/path/1234"]
            return [(await client.get(path)).status_code for path in paths]

    assert asyncio.run(requests()) == [200, 200, 200, 500, 200, 404]
    assert {k: count(*k) - before[k] for k in expected} == expected
    exported = REGISTRY.get_sample_value
    for raw in ("/t/v1/things/a", "/things/{thing}", "/plain/x", "/random/path/1234"):
        assert exported("splitinfer_http_requests_total", {"method": "GET", "route": raw, "status": "200"}) is None
        assert exported("splitinfer_http_requests_total", {"method": "GET", "route": raw, "status": "404"}) is None


# -- a real process ------------------------------------------------------------------------------


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


@pytest.mark.unit
@pytest.mark.e2e
def test_the_analytics_process_serves_metrics_health_and_readiness(tmp_path: Path):
    """`split-infer analytics` on a private Redis: its counts as metrics (the same as its events in
    Redis), /healthz and /readyz; then Redis stops: not ready, with the reason, and still alive."""
    server = RedisServer(tmp_path, appendonly=False)
    server.start()
    prefix, keys = "metrics-test", Keys("metrics-test")
    zone = {"name": "lower", "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(json.dumps({"cameras": [{"id": "street", "url": "x", "lines": [LINE], "zones": [zone]}]}))
    records = street_records()[:320]
    rr = redis.Redis.from_url(server.url)
    feed(rr, keys, records)
    services = Services(tmp_path)
    mport = free_port()
    services.start("analytics", "analytics", "--config", str(cfg), "--redis-url", server.url, "--consumer", "m",
                   "--reorder-wait", "0.2", "--no-discover", "--metrics-port", str(mport),
                   env={"SPLIT_INFER_PREFIX": prefix})
    base = f"http://127.0.0.1:{mport}"
    try:
        wait_for(lambda: rr.hget(keys.counts("street"), "seq") == b"319", 90, "the analytics to reach seq 319")
        assert probe(base + "/healthz") == (200, {"status": "ok"})
        assert probe(base + "/readyz") == (200, {"status": "ok"})
        events = [{k.decode(): v.decode() for k, v in f.items()} for _, f in rr.xrange(keys.events_stream("street"))]
        want_crossings: dict[tuple, float] = {}
        for ev in events:
            if ev["type"] == "line_cross":
                key = ("street", ev["line"], ev["direction"], ev["class_name"])
                want_crossings[key] = want_crossings.get(key, 0) + 1
        assert sum(want_crossings.values()) == 5
        exits = sum(ev["type"] == "zone_exit" for ev in events)
        assert exits > 0

        def exported() -> tuple[dict, float, dict]:
            fams = _families(http_get(base + "/metrics")[1])
            crossings = {(s.labels["camera"], s.labels["line"], s.labels["direction"], s.labels["class"]): s.value
                         for s in fams.get("splitinfer_line_crossings", []) if s.name.endswith("_total")}
            dwells = sum(s.value for s in fams.get("splitinfer_zone_dwell_seconds", []) if s.name.endswith("_count"))
            return crossings, dwells, fams

        # The metrics follow the commit (counts hash first, then ack and metrics): poll until the last one is in.
        got_crossings, dwell_count, fams = wait_for(lambda: (e := exported())[:2] == (want_crossings, exits) and e,
                                                    10, "the metrics of the last commit")
        assert got_crossings == want_crossings and dwell_count == exits
        occupancy = {s.labels["class"]: s.value for s in fams["splitinfer_zone_occupancy_objects"]}
        counts = {k.decode(): v.decode() for k, v in rr.hgetall(keys.counts("street")).items()}
        assert occupancy and occupancy == {c: float(counts[f"zone:lower:occupancy:{c}"]) for c in occupancy}
        (build,) = fams["splitinfer_build_info"]
        assert build.labels == {"version": __version__, "model": "yolov5s", "codec": "none"} and build.value == 1.0
        assert [s.value for s in fams["splitinfer_redis_up"] if s.labels == {"service": "analytics"}] == [1.0]
        server.stop()
        status, body = wait_for(lambda: (s := probe(base + "/readyz"))[0] == 503 and s, 15, "/readyz to say 503")
        assert "Redis unreachable" in body["reason"]
        assert probe(base + "/healthz") == (200, {"status": "ok"})  # alive: no restart for a Redis outage
    finally:
        returncode = services.terminate("analytics", timeout=20)
        server.stop()
    assert returncode == 0, services.log("analytics")[-3000:]
