"""Every Prometheus metric of every service, defined once here (services import, never redefine).

Names follow the Prometheus naming guide: a `splitinfer_` prefix (no collisions on a shared
Prometheus), base units in the name (`_seconds`, `_bytes`, `_frames`, `_objects`), `_total` on
counters. Each series has exactly ONE owner process (the table in docs/metrics.md); a metric a
process never touches stays absent or at zero there. Labels are camera ids, configured line/zone
names, detector class names and small enums, so cardinality stays bounded by the configuration.

Each process serves its registry with `start_metrics_server` (split_infer.observability), which
also answers /healthz and /readyz.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from split_infer.observability import HealthCheck, ObservabilityServer

PREFIX = "splitinfer_"

# -- worker (split_infer.cloud.worker) --------------------------------------------------------------
# Capture on the edge -> detection record written in Redis, per camera and model version (the
# number users feel; model_version lets a canary be compared with the stable model).
INFERENCE_LATENCY = Histogram(
    "splitinfer_inference_latency_seconds", "Capture-to-detection latency per frame",
    ["camera", "model_version"],
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
)
# Time a frame waited in the Redis queue (ingest append -> worker read).
QUEUE_DELAY = Histogram(
    "splitinfer_queue_delay_seconds", "Ingest-to-worker queueing delay per frame",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
)
HEAD_SECONDS = Histogram(
    "splitinfer_head_batch_seconds", "Detection head time per batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2),
)
BATCH_SIZE = Histogram("splitinfer_batch_frames", "Frames per head batch", buckets=(1, 2, 4, 8, 16, 32, 64))
BATCH_CHOICE = Gauge("splitinfer_batch_frames_chosen", "Batch size the batching policy chose last")
# Owner: the worker's consumer, the one process that reads the per-camera streams on every poll
# (it sees what is queued AND what is in flight). The ingest and the API used to set it too, which
# made three processes export three different values for one series.
QUEUE_DEPTH = Gauge("splitinfer_queue_depth_frames", "Frames queued or in flight in Redis per camera",
                    ["camera"])
# stage: ingest | worker (each stage label is set by one process only); outcome: ok,
# rejected_<reason>, duplicate, dead_letter, retry_<reason>, shed_<reason>, claimed, head_error ...
FRAMES = Counter("splitinfer_frames_total", "Frames by pipeline stage and outcome", ["stage", "outcome"])
SHADOW_AGREEMENT = Gauge(
    "splitinfer_shadow_agreement_ratio",
    "Agreement (0-1) of a shadow (canary) model's detections with the stable model's",
    ["model_version", "stable_version"],
)
SHADOW_FRAMES = Counter("splitinfer_shadow_frames_total", "Frames also run through a shadow (canary) model",
                        ["model_version"])

# -- ingest (split_infer.cloud.ingest / admission) -------------------------------------------------
BYTES_RECEIVED = Counter("splitinfer_ingest_received_bytes_total", "Feature payload bytes accepted by the ingest",
                         ["camera"])
CAMERA_UP = Gauge("splitinfer_camera_up", "1 while the camera delivers frames to the ingest", ["camera"])
CREDIT = Gauge("splitinfer_ingest_credit_frames", "Flow-control credit last granted per camera", ["camera"])

# -- every process ---------------------------------------------------------------------------------
REDIS_UP = Gauge("splitinfer_redis_up", "1 while this process can reach Redis", ["service"])
BUILD_INFO = Gauge("splitinfer_build_info", "Always 1; the labels say what this process runs",
                   ["version", "model", "codec"])

# -- analytics (split_infer.analytics) -------------------------------------------------------------
# outcome: loaded, absent, unreadable (started afresh), unwritable (kept the last one)
ANALYTICS_CHECKPOINTS = Counter("splitinfer_analytics_checkpoints_total",
                                "Analytics checkpoints read or written, by outcome", ["outcome"])
# reason: malformed (a RecordError: bad field, not UTF-8, nested too deeply...), foreign_camera,
# deleted, future (capture_ts too far ahead of the clock), bad_box
ANALYTICS_REJECTED = Counter("splitinfer_analytics_rejected_records_total",
                             "Detection records analytics rejected, by reason", ["reason"])
# direction: the line's configured direction names (e.g. in / out); class: detector class name.
LINE_CROSSINGS = Counter("splitinfer_line_crossings_total", "Tracked objects that crossed a counting line",
                         ["camera", "line", "direction", "class"])
ZONE_OCCUPANCY = Gauge("splitinfer_zone_occupancy_objects", "Tracked objects inside a zone now",
                       ["camera", "zone", "class"])
ZONE_DWELL = Histogram(
    "splitinfer_zone_dwell_seconds", "Time a tracked object stayed in a zone (observed when it leaves)",
    ["camera", "zone"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)

# -- api (split_infer.api) -------------------------------------------------------------------------
# route: the route template (/api/cameras/{camera}/detections), never the raw path (bounded labels).
HTTP_REQUESTS = Counter("splitinfer_http_requests_total", "HTTP requests the API answered",
                        ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "splitinfer_http_request_duration_seconds", "HTTP request handling time", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)

# -- edge node (split_infer.edge.node) ------------------------------------------------------------
# outcome: acked (queued by the ingest), rejected (ingest said invalid), dropped_buffer (oldest
# dropped while the cloud was unreachable or slow), dropped_superseded (a RETRY overtaken by a later
# frame of its camera), skipped (newest-frame policy at capture), capped (fps cap).
EDGE_FRAMES = Counter("splitinfer_edge_frames_total", "Edge frames by camera and outcome", ["camera", "outcome"])
EDGE_BYTES = Counter("splitinfer_edge_sent_bytes_total", "Bytes the edge sent per camera (payload or snapshot)",
                     ["camera", "kind"])
EDGE_STAGE = Histogram(
    "splitinfer_edge_stage_seconds",
    "Edge time per frame and stage (capture: wall time reading, waiting for the camera included; decode: "
    "the reader's CPU time; preprocess, extract, encode; sent_after_capture: capture to first send)",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0),
)
EDGE_BUFFER = Gauge("splitinfer_edge_buffer_frames", "Encoded frames waiting for the cloud")
EDGE_INFLIGHT = Gauge("splitinfer_edge_inflight_frames", "Frames sent and not yet acknowledged")
EDGE_CONNECTED = Gauge("splitinfer_edge_cloud_connected", "1 while the edge has a stream open to the ingest")
EDGE_RECONNECTS = Counter("splitinfer_edge_cloud_reconnects_total", "Streams the edge re-opened after a failure")
EDGE_CAMERA_UP = Gauge("splitinfer_edge_camera_up", "1 while the camera delivers frames to the edge", ["camera"])

UNVERSIONED = "unversioned"  # model_version label value when no version is configured


def set_build_info(model: str | None, codec: str | None) -> None:
    """Publish splitinfer_build_info{version,model,codec} = 1 for this process (call once at start)."""
    from split_infer import __version__

    BUILD_INFO.labels(__version__, model or "none", codec or "none").set(1)


def start_metrics_server(port: int | None, addr: str = "127.0.0.1", *,
                         live: HealthCheck | None = None,
                         ready: HealthCheck | None = None) -> ObservabilityServer | None:
    """Serve /metrics, /healthz and /readyz on addr:port (port 0 or None: metrics stay in-process).

    `live` answers /healthz (default: alive while the process runs); `ready` answers /readyz
    (default: ready). Each returns a `split_infer.observability.Health`.
    """
    if not port:
        return None
    from split_infer.observability import ObservabilityServer

    return ObservabilityServer.start(port, addr, live=live, ready=ready)
