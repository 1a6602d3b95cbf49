"""The demo's live table: per-camera figures read incrementally from the detection streams."""

from __future__ import annotations

import statistics
import time
from typing import Any, Literal

from rich.table import Table

from split_infer.keys import Keys
from split_infer.records import DetectionResult, RecordError

VEHICLES = {"car", "truck", "bus", "motorcycle", "bicycle"}
WINDOW_S = 5.0


class Board:
    """Per-camera figures from the detection streams, read incrementally (XRANGE after the last id)."""

    def __init__(self, r: Any, keys: Keys, cams: list[str]) -> None:  # a redis.Redis (its stubs type replies loosely)
        self.r, self.keys, self.cams = r, keys, cams
        self.last = {c: "0-0" for c in cams}
        self.frames = {c: 0 for c in cams}
        self.vehicles_now: dict[str, int | None] = {c: None for c in cams}
        self.vehicles_max = {c: 0 for c in cams}
        self.recent: dict[str, list[tuple[float, float]]] = {c: [] for c in cams}  # (done_ts, latency)

    def poll(self) -> None:
        now = time.time()
        for cam in self.cams:
            while True:
                entries = self.r.xrange(self.keys.detections_stream(cam), f"({self.last[cam]}", "+", count=500)
                if not entries:
                    break
                for eid, f in entries:
                    self.last[cam] = eid.decode()
                    try:
                        rec = DetectionResult.from_fields(f)
                    except RecordError:
                        continue  # not a worker's record: nothing to show
                    done = rec.done_ts or now
                    self.recent[cam].append((done, done - rec.capture_ts))
                    n = sum(1 for d in rec.detections if d.class_name in VEHICLES)
                    self.vehicles_now[cam] = n
                    self.vehicles_max[cam] = max(self.vehicles_max[cam], n)
                    self.frames[cam] += 1
            self.recent[cam] = [x for x in self.recent[cam] if now - x[0] <= WINDOW_S]

    def rows(self, edge: dict) -> list[dict[str, Any]]:
        rows = []
        for cam in self.cams:
            e = edge.get("cameras", {}).get(cam, {})
            lat = [x[1] for x in self.recent[cam]]
            now = self.vehicles_now[cam]
            rows.append({
                "camera": cam,
                "state": e.get("capture", {}).get("state", "?"),
                "fps": len(lat) / WINDOW_S,
                "bytes_per_frame": e.get("bytes_per_frame"),
                "x264_bytes_per_frame": (e.get("x264_bytes_per_frame") or {}).get("bytes"),
                "latency_ms": statistics.median(lat) * 1000 if lat else None,
                "vehicles": None if now is None else f"{now} / {self.vehicles_max[cam]}",
                "frames": self.frames[cam],
                "dropped": (e.get("dropped_buffer", 0) + e.get("dropped_superseded", 0)
                            + e.get("capture", {}).get("skipped", 0)),
            })
        return rows


COLUMNS: tuple[tuple[str, Literal["left", "right"]], ...] = (
    ("camera", "left"), ("state", "left"), ("fps", "right"), ("bytes/frame", "right"),
    ("x264 same agreement", "right"), ("latency p50", "right"), ("vehicles now/max", "right"),
    ("frames", "right"), ("skipped", "right"),
)


def render(rows: list[dict], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for col, justify in COLUMNS:
        t.add_column(col, justify=justify)
    for row in rows:
        t.add_row(row["camera"], row["state"], f"{row['fps']:.1f}",
                  f"{row['bytes_per_frame']:,.0f}" if row["bytes_per_frame"] else "-",
                  f"{row['x264_bytes_per_frame']:,.0f}" if row.get("x264_bytes_per_frame") else "-",
                  f"{row['latency_ms']:.0f} ms" if row["latency_ms"] is not None else "-",
                  row["vehicles"] or "-", str(row["frames"]), str(row["dropped"]))
    return t
