"""Analytics events to MQTT (`mqtt:` in the cloud config, or `split-infer analytics --mqtt`).

Topics under the configured prefix (`mqtt.prefix`, by default `split-infer`: the project's own, so
that on a broker shared with a real Frigate nothing of Frigate's, `frigate/available` above all, is
overwritten):
* `<prefix>/available`: `online` (retained; the broker sets `offline` when we vanish);
* `<prefix>/events`: one JSON message per analytics event (docs/analytics.md), plus Frigate's
  `label` (= class_name);
* `<prefix>/<camera>/<object>`: objects of that class tracked in the camera now (on change);
* `<prefix>/<camera>/zones/<zone>/<object>`: objects of that class in the zone now (on change);
  with `layout: frigate` (prefix `frigate` unless given), `<prefix>/<zone>/<object>` as Frigate does;
* `<prefix>/<camera>/lines/<line>/<in|out>/<object>`: crossings so far (retained, on change).
Redis stays the record; MQTT is a best-effort mirror (QoS 1, queued while the broker is away).
The broker is reached over TLS unless `mqtt.tls.insecure`, with `user` and `password` when given;
the password is registered with the redaction helper, so it never reaches a log line.
"""

from __future__ import annotations

import json
import logging
import threading

import paho.mqtt.client as mqtt

from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.mqtt_config import MqttConfig
from split_infer.config import TRAFFIC_CLASSES
from split_infer.records import AnalyticsEvent
from split_infer.redact import redact, register_secret

log = logging.getLogger(__name__)


class MqttError(RuntimeError):
    pass


class MqttPublisher:
    def __init__(self, cfg: MqttConfig, client_id: str | None = None) -> None:
        register_secret(cfg.password)
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self.where = f"{cfg.host}:{cfg.broker_port}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.client_id or client_id or "")
        if cfg.user:
            self.client.username_pw_set(cfg.user, cfg.password)
        if not cfg.tls.insecure:
            self.client.tls_set(ca_certs=_str(cfg.tls.ca), certfile=_str(cfg.tls.cert), keyfile=_str(cfg.tls.key))
        self.client.will_set(f"{self.prefix}/available", "offline", qos=1, retain=True)
        self._connected = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        try:
            self.client.connect(cfg.host, cfg.broker_port, keepalive=cfg.keepalive_s)
        except OSError as e:  # refused, unreachable, or the TLS handshake failed (ssl.SSLError)
            raise MqttError(redact(f"cannot reach the MQTT broker at {self.where}: {e}")) from None
        self.client.loop_start()
        if not self._connected.wait(cfg.connect_timeout_s) or self._refused:
            self.client.loop_stop()
            self.client.disconnect()
            why = self._refused or f"no answer to CONNECT within {cfg.connect_timeout_s:g} s"
            raise MqttError(redact(f"the MQTT broker at {self.where} refused the connection as user "
                                   f"{cfg.user or '(none)'}: {why}"))
        self.client.publish(f"{self.prefix}/available", "online", qos=1, retain=True)
        self._last: dict[str, str] = {}  # topic -> last payload, to publish changes only
        log.info("MQTT: publishing to %s (%s, user %s) under %s/ (%s layout)", self.where,
                 "PLAINTEXT (mqtt.tls.insecure)" if cfg.tls.insecure else "TLS", cfg.user or "(none)",
                 self.prefix, cfg.layout)

    def _on_connect(self, _client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            log.error("MQTT broker %s refused the connection: %s", self.where, reason)
        self._connected.set()

    def zone_topic(self, camera: str, zone: str, cls: str) -> str:
        if self.cfg.layout == "frigate":
            return f"{self.prefix}/{zone}/{cls}"
        return f"{self.prefix}/{camera}/zones/{zone}/{cls}"

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
                self._changed(self.zone_topic(camera, zone.name, cls), str(occ[cls]))
        for line in analytics.lines.values():
            for direction in ("in", "out"):
                for cls in sorted(line.classes):
                    self._changed(f"{self.prefix}/{camera}/lines/{line.name}/{direction}/{cls}",
                                  str(line.counts[direction][cls]), retain=True)

    def close(self) -> None:
        self.client.publish(f"{self.prefix}/available", "offline", qos=1, retain=True).wait_for_publish(5)
        self.client.loop_stop()
        self.client.disconnect()


def _str(path: object) -> str | None:
    return None if path is None else str(path)
