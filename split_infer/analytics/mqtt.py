"""Analytics events to MQTT in the topic layout Frigate users know (`split-infer analytics --mqtt`).

Topics (prefix default `frigate`):
* `<prefix>/available`: `online` (retained; the broker sets `offline` when we vanish);
* `<prefix>/events`: one JSON message per analytics event (docs/analytics.md), plus Frigate's
  `label` (= class_name);
* `<prefix>/<camera>/<object>`: objects of that class tracked in the camera now (on change);
* `<prefix>/<zone>/<object>`: objects of that class in the zone now (on change), as Frigate does;
* `<prefix>/<camera>/lines/<line>/<in|out>/<object>`: crossings so far (retained, on change).
Redis stays the record; MQTT is a best-effort mirror (QoS 1, queued while the broker is away).
"""

from __future__ import annotations

import json
import logging

import paho.mqtt.client as mqtt

from split_infer.analytics.camera import CameraAnalytics
from split_infer.config import TRAFFIC_CLASSES
from split_infer.records import AnalyticsEvent

log = logging.getLogger(__name__)


class MqttError(RuntimeError):
    pass


class MqttPublisher:
    def __init__(self, host: str, port: int = 1883, prefix: str = "frigate", client_id: str | None = None) -> None:
        self.prefix = prefix.rstrip("/")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "")
        self.client.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as e:
            raise MqttError(f"cannot reach the MQTT broker at {host}:{port}: {e}") from None
        self.client.loop_start()
        self.client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        self._last: dict[str, str] = {}  # topic -> last payload, to publish changes only

    def _changed(self, topic: str, payload: str, retain: bool = False) -> None:
        if self._last.get(topic) != payload:
            self._last[topic] = payload
            self.client.publish(topic, payload, qos=1, retain=retain)

    def publish(self, camera: str, events: list[AnalyticsEvent], analytics: CameraAnalytics) -> None:
        for ev in events:
            body = ev.as_dict() | {"label": ev.class_name}
            self.client.publish(f"{self.prefix}/events", json.dumps(body), qos=1)
        tracks = analytics.counts().tracks
        for cls in TRAFFIC_CLASSES:
            self._changed(f"{self.prefix}/{camera}/{cls}", str(tracks[cls]))
        for zone in analytics.zones.values():
            occ = zone.occupancy()
            for cls in sorted(zone.classes):
                self._changed(f"{self.prefix}/{zone.name}/{cls}", str(occ[cls]))
        for line in analytics.lines.values():
            for direction in ("in", "out"):
                for cls in sorted(line.classes):
                    self._changed(f"{self.prefix}/{camera}/lines/{line.name}/{direction}/{cls}",
                                  str(line.counts[direction][cls]), retain=True)

    def close(self) -> None:
        self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()
