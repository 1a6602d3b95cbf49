"""Every Prometheus metric of every service, defined once here (services import, never redefine).

Each process exposes the ones it updates on its own port (`start_metrics_server`); a metric a
process never touches simply stays at zero there. Labels are kept to camera ids and small enums
so that cardinality stays bounded by the number of cameras.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# Capture on the edge -> detection record written in Redis, per camera (the number users feel).
INFERENCE_LATENCY = Histogram(
    "inference_latency_seconds", "Capture-to-detection latency per frame", ["camera"],
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0),
)
# Time a frame waited in the Redis queue (ingest append -> worker read).
QUEUE_DELAY = Histogram(
    "queue_delay_seconds", "Ingest-to-worker queueing delay per frame",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
)
HEAD_SECONDS = Histogram(
    "head_seconds", "Detection head time per batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2),
)
BATCH_SIZE = Histogram("batch_size", "Frames per head batch", buckets=(1, 2, 4, 8, 16, 32, 64))
BATCH_CHOICE = Gauge("batch_size_chosen", "Batch size the batching policy chose last")
QUEUE_DEPTH = Gauge("queue_depth", "Frames queued or in flight in Redis per camera", ["camera"])
# stage: ingest | worker | edge ...; outcome: ok, rejected_<reason>, duplicate, dead_letter, retry...
FRAMES = Counter("frames_total", "Frames by pipeline stage and outcome", ["stage", "outcome"])
BYTES_RECEIVED = Counter("bytes_received_total", "Feature payload bytes accepted by the ingest", ["camera"])
CAMERA_UP = Gauge("camera_up", "1 while the camera delivers frames to the ingest", ["camera"])
CREDIT = Gauge("ingest_credit", "Flow-control credit last granted per camera", ["camera"])
REDIS_UP = Gauge("redis_up", "1 while this process can reach Redis", ["service"])
# -- analytics: outcome loaded, absent, unreadable (started afresh), unwritable (kept the last one)
ANALYTICS_CHECKPOINTS = Counter("analytics_checkpoints_total", "Analytics checkpoints read or written, by outcome",
                                ["outcome"])
# reason: malformed (a RecordError: bad field, not UTF-8, nested too deeply...), foreign_camera,
# deleted, future (capture_ts too far ahead of the clock), bad_box
ANALYTICS_REJECTED = Counter("analytics_rejected_records_total", "Detection records analytics rejected, by reason",
                             ["reason"])


def start_metrics_server(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on addr:port (port 0 or None: metrics stay in-process only)."""
    if port:
        start_http_server(port, addr=addr)

# -- edge node (split_infer.edge.node) ------------------------------------------------------------
# outcome: acked (queued by the ingest), rejected (ingest said invalid), dropped_buffer (oldest
# dropped while the cloud was unreachable or slow), dropped_superseded (a RETRY overtaken by a later
# frame of its camera), skipped (newest-frame policy at capture), capped (fps cap).
EDGE_FRAMES = Counter("edge_frames_total", "Edge frames by camera and outcome", ["camera", "outcome"])
EDGE_BYTES = Counter("edge_bytes_sent_total", "Bytes the edge sent per camera (payload or snapshot)",
                     ["camera", "kind"])
EDGE_STAGE = Histogram(
    "edge_stage_seconds", "Edge time per frame and stage (capture, preprocess, extract, encode)", ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0),
)
EDGE_BUFFER = Gauge("edge_buffer_frames", "Encoded frames waiting for the cloud")
EDGE_INFLIGHT = Gauge("edge_inflight_frames", "Frames sent and not yet acknowledged")
EDGE_CONNECTED = Gauge("edge_cloud_connected", "1 while the edge has a stream open to the ingest")
EDGE_RECONNECTS = Counter("edge_cloud_reconnects_total", "Streams the edge re-opened after a failure")
EDGE_CAMERA_UP = Gauge("edge_camera_up", "1 while the camera delivers frames to the edge", ["camera"])
