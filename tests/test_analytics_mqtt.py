"""Analytics events mirrored to a real Mosquitto on loopback (127.0.0.1:1883, or a private one
started from the mosquitto binary when none runs there), the project's topic layout. Credentials,
TLS, the default prefix and the Frigate layout: tests/test_mqtt_security.py."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from split_infer.analytics.mqtt import MqttError, MqttPublisher
from split_infer.analytics.mqtt_config import MqttConfig
from split_infer.analytics.service import AnalyticsService, Settings
from split_infer.apps.processes import free_port
from split_infer.config import CameraConfig, CloudConfig
from support.analytics import LINE, feed, street_records
from support.processes import Services, require_binary
from support.wait import wait_for


@pytest.fixture(scope="module")
def broker():
    """The Mosquitto at 127.0.0.1:1883; where none answers, a private one on a free port."""
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 1883)) == 0:
            yield ("127.0.0.1", 1883)
            return
    exe = require_binary("mosquitto", "no MQTT broker at 127.0.0.1:1883 either; apt-get install -y mosquitto")
    port = free_port()
    services = Services()
    services.spawn("mosquitto", [exe, "-p", str(port)])
    try:
        wait_for(lambda: _accepts(port), 5, f"the private mosquitto on port {port}")
        yield ("127.0.0.1", port)
    finally:
        services.stop_all()


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def subscriber(broker: tuple[str, int], topic: str) -> tuple[mqtt.Client, list[tuple[str, str]]]:
    got: list[tuple[str, str]] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    subscribed = threading.Event()
    c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload.decode()))
    c.on_subscribe = lambda *a: subscribed.set()
    try:
        c.connect(*broker)
    except OSError as e:
        pytest.fail(f"Mosquitto is not reachable at {broker} ({e})")
    c.loop_start()
    c.subscribe(topic, qos=1)
    assert subscribed.wait(5), "MQTT subscribe not acknowledged"
    return c, got


@pytest.mark.redis
@pytest.mark.e2e
def test_events_and_counts_reach_mosquitto(broker, r, keys):
    topic_prefix = f"test-{uuid.uuid4().hex[:8]}"
    sub, got = subscriber(broker, f"{topic_prefix}/#")
    pub = MqttPublisher(MqttConfig(host=broker[0], port=broker[1], prefix=topic_prefix, tls={"insecure": True}))
    try:
        zone = {"name": f"lane{uuid.uuid4().hex[:4]}", "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}
        cfg = CloudConfig(cameras=[CameraConfig(id="street", url="x", lines=[LINE], zones=[zone])])
        svc = AnalyticsService(r, cfg, Settings(consumer="m", reorder_wait_s=0.1, block_ms=20, discover=False),
                               mqtt=pub, keys=keys)
        feed(r, keys, street_records()[:320])
        end = time.monotonic() + 60
        while time.monotonic() < end and r.hget(keys.counts("street"), "seq") != b"319":
            svc.step()
        # A marker after everything the service published, on the same connection: once it has
        # arrived, so has everything before it (the broker keeps one client's messages in order).
        marker = (f"{topic_prefix}/test-marker", "end")
        pub.client.publish(*marker, qos=1)
        wait_for(lambda: marker in got, 10, "the QoS 1 deliveries to land")
        events = [json.loads(p) for t, p in got if t == f"{topic_prefix}/events"]
        crossings = sorted((e["seq"], e["direction"]) for e in events if e["type"] == "line_cross")
        assert crossings == [(42, "out"), (121, "in"), (139, "out"), (250, "out"), (291, "out")]
        assert all(e["label"] == e["class_name"] and e["camera"] == "street" for e in events)
        topics = dict(got)  # last value per topic
        assert topics[f"{topic_prefix}/available"] == "online"
        assert topics[f"{topic_prefix}/street/lines/road/out/car"] == "4"
        assert topics[f"{topic_prefix}/street/lines/road/in/car"] == "1"
        assert f"{topic_prefix}/street/car" in topics and f"{topic_prefix}/street/zones/{zone['name']}/car" in topics
        assert any(e["type"] == "zone_enter" and e["zone"] == zone["name"] for e in events)
    finally:
        pub.close()
        wait_for(lambda: (f"{topic_prefix}/available", "offline") in got, 5, "the broker to pass on 'offline'")
        # Clear what was retained, so the shared broker keeps nothing of this test.
        for t in {t for t, _ in got if "/lines/" in t or t.endswith("/available")}:
            sub.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
        sub.loop_stop()
        sub.disconnect()
    assert (f"{topic_prefix}/available", "offline") in got  # said on close


@pytest.mark.unit
def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(MqttError, match="cannot reach the MQTT broker at 127.0.0.1:1"):
        MqttPublisher(MqttConfig(host="127.0.0.1", port=1, tls={"insecure": True}))
