"""Line crossings, zone occupancy and dwell as Prometheus series (split_infer.metrics).

Called once per camera commit, after the events are in Redis: a replay from the checkpoint (after
a crash or a lost lease) re-creates events that were never committed, so counting here, not in
`CameraAnalytics.process`, counts each crossing once per process. Counters restart at zero with
the process, as Prometheus counters do (`rate()`/`increase()` handle the reset).
"""

from __future__ import annotations

from collections.abc import Iterable

from split_infer import metrics
from split_infer.analytics.camera import CameraAnalytics
from split_infer.records import AnalyticsEvent

LINE_CROSS = "line_cross"
ZONE_EXIT = "zone_exit"


def export_commit(camera: str, events: Iterable[AnalyticsEvent], analytics: CameraAnalytics) -> None:
    """Count the committed events; set every configured zone's occupancy per class (0 included, so
    an emptied zone reads 0 rather than its last value)."""
    for ev in events:
        if ev.type == LINE_CROSS and ev.line is not None and ev.direction is not None:
            metrics.LINE_CROSSINGS.labels(camera, ev.line, ev.direction, ev.class_name).inc()
        elif ev.type == ZONE_EXIT and ev.zone is not None and ev.dwell_s is not None:
            metrics.ZONE_DWELL.labels(camera, ev.zone).observe(ev.dwell_s)
    for zone in analytics.zones.values():
        occupancy = zone.occupancy()
        for class_name in sorted(zone.classes):
            metrics.ZONE_OCCUPANCY.labels(camera, zone.name, class_name).set(occupancy[class_name])
