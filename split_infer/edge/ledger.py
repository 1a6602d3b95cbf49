"""Every frame's outcome on the edge, counted once: per-camera counters, metrics, the sent log.

The scheduler reports extractions, encode failures and frames dropped from a full buffer; the
transport reports Acks, rejections and frames a retry overtook. The lock is there because the
OpenVINO callback thread counts extractions while the event loop counts everything else.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from split_infer import metrics
from split_infer.edge.outbox import Item

INTERNAL_FIELDS = ("stage_ms", "last_snapshot", "pending_dropped")  # not reported as they are


@dataclass
class CameraCounters:
    seq: int = 0  # next sequence number
    extracted: int = 0
    acked: int = 0
    rejected: int = 0
    dropped_buffer: int = 0
    dropped_superseded: int = 0
    errors: int = 0  # encode failures
    payload_bytes: int = 0  # bytes of acknowledged payloads
    snapshot_bytes: int = 0
    snapshots: int = 0
    pending_dropped: int = 0  # drops since the last sent frame (FeatureFrame.dropped_before)
    last_snapshot: float = 0.0
    last_error: str | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)  # moving averages
    ack_latency_ms: float = 0.0  # capture -> Ack, moving average

    def observe(self, name: str, ms: float) -> None:
        old = self.stage_ms.get(name)
        self.stage_ms[name] = ms if old is None else 0.9 * old + 0.1 * ms


class Ledger:
    """Counters per camera, plus one JSON line per final outcome in `sent_log` (tests, benchmarks).

    `on_loss(camera)` is called for every frame that will never reach the cloud: a stateful
    codec's stream must restart with a key frame after such a gap.
    """

    def __init__(self, cameras: Iterable[str], session: str, sent_log: Path | None,
                 on_loss: Callable[[str], None]) -> None:
        self.session = session
        self.cams = {c: CameraCounters() for c in cameras}
        self._on_loss = on_loss
        self._lock = threading.Lock()
        self._sent_log = open(sent_log, "a", buffering=1) if sent_log else None  # closed by close()

    def __contains__(self, camera: object) -> bool:
        return camera in self.cams

    # -- the scheduler's side --------------------------------------------------------------------
    def extracted(self, camera: str, timings_ms: dict[str, float]) -> int:
        """Count an extracted frame and its stage times; returns its sequence number."""
        with self._lock:
            c = self.cams[camera]
            seq = c.seq
            c.seq += 1
            c.extracted += 1
            for name, ms in timings_ms.items():
                c.observe(name, ms)
                metrics.EDGE_STAGE.labels(name).observe(ms / 1000.0)
        return seq

    def encode_failed(self, camera: str, error: Exception) -> None:
        with self._lock:
            self.cams[camera].errors += 1
            self.cams[camera].last_error = f"encode: {type(error).__name__}: {error}"

    def snapshot_due(self, camera: str, interval_s: float) -> bool:
        """True at most once per `interval_s` per camera: this frame carries a thumbnail."""
        now = time.monotonic()
        with self._lock:
            c = self.cams[camera]
            if now - c.last_snapshot < interval_s:
                return False
            c.last_snapshot = now
            return True

    def dropped(self, item: Item, outcome: str) -> None:
        """`item` will never be sent: `dropped_buffer` (buffer full) or `dropped_superseded`."""
        with self._lock:
            c = self.cams[item.camera]
            setattr(c, outcome, getattr(c, outcome) + 1)
            c.pending_dropped += 1
        self._on_loss(item.camera)
        metrics.EDGE_FRAMES.labels(item.camera, outcome).inc()
        self._record(item, outcome)

    # -- the transport's side --------------------------------------------------------------------
    def take_dropped_before(self, camera: str) -> int:
        """Frames of `camera` lost since its last sent frame (told to the ingest), then zero."""
        with self._lock:
            c = self.cams[camera]
            n, c.pending_dropped = c.pending_dropped, 0
            return n

    def acked(self, item: Item) -> None:
        frame = item.frame
        latency_ms = (time.time() - frame.capture_ts) * 1000.0
        with self._lock:
            c = self.cams[item.camera]
            c.acked += 1
            c.payload_bytes += len(frame.payload)
            c.ack_latency_ms = latency_ms if not c.ack_latency_ms else 0.9 * c.ack_latency_ms + 0.1 * latency_ms
            if frame.snapshot_jpeg:
                c.snapshots += 1
                c.snapshot_bytes += len(frame.snapshot_jpeg)
        if frame.snapshot_jpeg:
            metrics.EDGE_BYTES.labels(item.camera, "snapshot").inc(len(frame.snapshot_jpeg))
        metrics.EDGE_BYTES.labels(item.camera, "payload").inc(len(frame.payload))
        metrics.EDGE_FRAMES.labels(item.camera, "acked").inc()
        self._record(item, "acked")

    def rejected(self, item: Item, error: str) -> None:
        with self._lock:
            c = self.cams[item.camera]
            c.rejected += 1
            c.last_error = error
            c.pending_dropped += 1
        metrics.EDGE_FRAMES.labels(item.camera, "rejected").inc()
        self._record(item, "rejected", error)

    # -- reporting -------------------------------------------------------------------------------
    def camera_stats(self, camera: str) -> dict[str, Any]:
        with self._lock:
            c = self.cams[camera]
            stats = {k: v for k, v in c.__dict__.items() if k not in INTERNAL_FIELDS}
            stats["stage_ms"] = {k: round(v, 3) for k, v in c.stage_ms.items()}
        stats["bytes_per_frame"] = round(c.payload_bytes / c.acked, 1) if c.acked else None
        return stats

    def close(self) -> None:
        if self._sent_log is not None:
            self._sent_log.close()

    def _record(self, item: Item, outcome: str, error: str = "") -> None:
        if self._sent_log is None:
            return
        rec = {"camera": item.camera, "session": self.session, "seq": item.seq, "outcome": outcome,
               "index": item.info.get("index"), "connection": item.info.get("connection"),
               "bytes": len(item.frame.payload)}
        if error:
            rec["error"] = error
        self._sent_log.write(json.dumps(rec) + "\n")
