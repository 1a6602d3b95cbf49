"""MQTT credentials, TLS and topic prefix (docs/security.md, "MQTT"), against a private Mosquitto
that requires a user name and password (a `mosquitto_passwd` file) on a plaintext port and on a TLS
port signed by the tests' development CA."""

from __future__ import annotations

import getpass
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
import yaml

from split_infer.analytics.mqtt import MqttError, MqttPublisher
from split_infer.analytics.mqtt_config import MQTT_PASSWORD_ENV, MqttConfig
from split_infer.analytics.service import AnalyticsService, Settings
from split_infer.apps.processes import free_port
from split_infer.config import CameraConfig, CloudConfig, ConfigError, load_config
from split_infer.redact import redact
from support.analytics import LINE, feed, street_records
from support.processes import Services, require_binary
from support.tls import dev_certs
from support.wait import wait_for

USER, PASSWORD = "analytics", "mq-P@ss/w0rd-7"


class Broker:
    """A private mosquitto: `plain` and `tls` ports on 127.0.0.1, both requiring USER/PASSWORD."""

    def __init__(self, tmp) -> None:
        exe = require_binary("mosquitto", "apt-get install -y mosquitto")
        passwd = tmp / "passwd"
        subprocess.run([require_binary("mosquitto_passwd", "apt-get install -y mosquitto-clients"),
                        "-b", "-c", str(passwd), USER, PASSWORD], check=True, capture_output=True)
        certs = dev_certs()
        self.ca = certs.ca
        self.plain, self.tls = free_port(), free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"user {getpass.getuser()}\npersistence false\nper_listener_settings false\n"
                        f"allow_anonymous false\npassword_file {passwd}\n"
                        f"listener {self.plain} 127.0.0.1\n"
                        f"listener {self.tls} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.server_cert}\n"
                        f"keyfile {certs.server_key}\n")
        self.services = Services(tmp)
        self.services.spawn("mosquitto", [exe, "-c", str(conf)])
        wait_for(self._up, 10, "the private mosquitto")

    def _up(self) -> bool:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set(USER, PASSWORD)
        try:
            c.connect("127.0.0.1", self.plain)
        except OSError:
            return False
        c.disconnect()
        return True

    def config(self, **kw) -> MqttConfig:
        base = {"host": "127.0.0.1", "port": self.plain, "user": USER, "password": PASSWORD, "tls": {"insecure": True}}
        return MqttConfig.model_validate(base | kw)

    def subscribe_all(self) -> tuple[mqtt.Client, list[tuple[str, str, bool]]]:
        """A client of `#` (everything, retained messages too): [(topic, payload, retained)]."""
        got: list[tuple[str, str, bool]] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.username_pw_set(USER, PASSWORD)
        done = threading.Event()
        c.on_message = lambda _c, _u, m: got.append((m.topic, m.payload.decode(), bool(m.retain)))
        c.on_subscribe = lambda *a: done.set()
        c.connect("127.0.0.1", self.plain)
        c.loop_start()
        c.subscribe("#", qos=1)
        assert done.wait(5), "MQTT subscribe not acknowledged"
        return c, got


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("mosquitto"))
    yield b
    b.services.stop_all()


def _drive(pub: MqttPublisher, r, keys, camera: str, zone: str) -> None:
    zone_cfg = {"name": zone, "polygon": [(0, 150), (640, 150), (640, 235), (0, 235)]}
    cfg = CloudConfig(cameras=[CameraConfig(id=camera, url="x", lines=[LINE], zones=[zone_cfg])])
    svc = AnalyticsService(r, cfg, Settings(consumer="m", reorder_wait_s=0.1, block_ms=20, discover=False),
                           mqtt=pub, keys=keys)
    feed(r, keys, [{**rec, "camera": camera} for rec in street_records()[:160]])
    end = time.monotonic() + 60
    while time.monotonic() < end and r.hget(keys.counts(camera), "seq") != b"159":
        svc.step()


@pytest.mark.redis
@pytest.mark.e2e
def test_default_prefix_leaves_a_real_frigates_topics_alone_and_frigate_layout_is_explicit(broker, r, keys, tmp_path):
    sub, got = broker.subscribe_all()
    # A real Frigate on the same broker: its retained availability must survive us.
    sub.publish("frigate/available", "online", qos=1, retain=True).wait_for_publish(5)
    wait_for(lambda: ("frigate/available", "online", False) in got, 5, "the Frigate's availability")
    got.clear()
    secret = tmp_path / "mqtt_password"
    secret.write_text(PASSWORD + "\n")
    camera, zone = f"cam{uuid.uuid4().hex[:6]}", f"lane{uuid.uuid4().hex[:4]}"
    pub = MqttPublisher(broker.config(password=None, password_file=secret))  # user + password from a file
    try:
        _drive(pub, r, keys, camera, zone)
        pub.client.publish("split-infer/test-marker", "end", qos=1)
        wait_for(lambda: ("split-infer/test-marker", "end", False) in got, 10, "our messages to land")
    finally:
        pub.close()
    wait_for(lambda: ("split-infer/available", "offline", False) in got, 5, "'offline' on close")
    ours = [t for t, _, retained in got if not retained]
    assert ours and all(t.startswith("split-infer/") for t in ours), sorted(set(ours))
    assert f"split-infer/{camera}/zones/{zone}/car" in ours and f"split-infer/{camera}/lines/road/out/car" in ours
    assert not any(t.startswith("frigate/") for t in ours)
    # The Frigate layout, asked for: Frigate's prefix and its zone topics.
    got.clear()
    pub = MqttPublisher(broker.config(layout="frigate"))
    try:
        _drive(pub, r, keys, camera + "f", zone)
        pub.client.publish("frigate/test-marker", "end", qos=1)
        wait_for(lambda: ("frigate/test-marker", "end", False) in got, 10, "the Frigate-layout messages")
        topics = {t for t, _, _ in got}
        assert ("frigate/available", "online", False) in got and f"frigate/{zone}/car" in topics
        assert f"frigate/{camera}f/lines/road/out/car" in topics
    finally:
        pub.close()
        for t in {t for t, _, _ in got if "/lines/" in t or t.endswith("/available")} | {"split-infer/available"}:
            sub.publish(t, b"", qos=1, retain=True).wait_for_publish(5)
        sub.loop_stop()
        sub.disconnect()


@pytest.mark.e2e
def test_a_wrong_or_missing_password_is_refused_clearly_and_never_shown(broker, caplog):
    wrong = "not-the-Passw0rd"
    with pytest.raises(MqttError, match="refused the connection as user analytics: Not authorized") as e:
        MqttPublisher(broker.config(password=wrong, connect_timeout_s=5))
    assert wrong not in str(e.value) and wrong not in caplog.text
    with pytest.raises(MqttError, match=r"refused the connection as user \(none\)"):
        MqttPublisher(broker.config(user=None, password=None, connect_timeout_s=5))


@pytest.mark.e2e
def test_tls_verifies_the_broker_against_the_configured_ca(broker):
    pub = MqttPublisher(broker.config(port=broker.tls, tls={"ca": str(broker.ca)}))
    assert pub.client.is_connected()
    pub.close()
    with pytest.raises(MqttError, match="cannot reach the MQTT broker.*(CERTIFICATE_VERIFY_FAILED|certificate verify)"):
        MqttPublisher(broker.config(port=broker.tls, tls={}))  # the system roots do not know the dev CA
    with pytest.raises(MqttError, match="cannot reach the MQTT broker"):
        MqttPublisher(broker.config(tls={"ca": str(broker.ca)}))  # TLS to the plaintext port


@pytest.mark.redis
@pytest.mark.e2e
def test_analytics_service_reads_the_mqtt_section_and_its_password_never_reaches_the_log(broker, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD)
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"id": "street", "url": "x"}],
                                      "mqtt": {"port": broker.plain, "user": USER, "tls": {"insecure": True}}}))
    services = Services(tmp_path)
    try:
        services.start("analytics", "analytics", "--config", str(config), "--consumer", "mq1",
                       env={f"{MQTT_PASSWORD_ENV}_FILE": str(secret), "LOG_LEVEL": "DEBUG",
                            "SPLIT_INFER_PREFIX": f"test-{uuid.uuid4().hex[:8]}"})
        wait_for(lambda: "MQTT: publishing" in services.log("analytics") or services.exited("analytics"), 60,
                 "analytics to connect to the broker")
        log = services.log("analytics")
        assert f"MQTT: publishing to 127.0.0.1:{broker.plain} (PLAINTEXT (mqtt.tls.insecure), user analytics) " \
               "under split-infer/" in log, log[-3000:]
        assert PASSWORD not in log
    finally:
        services.kill_all()


@pytest.mark.unit
def test_mqtt_config_secrets_tls_and_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv(MQTT_PASSWORD_ENV, "from-the-env-42")
    cfg = MqttConfig(user="u")
    assert cfg.password == "from-the-env-42" and cfg.broker_port == 8883 and cfg.topic_prefix == "split-infer"
    assert MqttConfig(user="u", tls={"insecure": True}).broker_port == 1883
    assert MqttConfig(user="u", layout="frigate").topic_prefix == "frigate"
    for bad, why in [({"password": "x", "password_file": str(tmp_path)}, "not both"),
                     ({"prefix": "a/#"}, "prefix"), ({"prefix": "/abs"}, "prefix"),
                     ({"tls": {"insecure": True, "ca": "ca.pem"}}, "insecure"),
                     ({"tls": {"cert": "c.pem"}}, "go together")]:
        with pytest.raises(ValueError, match=why):
            MqttConfig.model_validate({"user": "u"} | bad)
    monkeypatch.delenv(MQTT_PASSWORD_ENV)
    with pytest.raises(ValueError, match="needs mqtt.user"):
        MqttConfig(password="lonely-pw")
    # ${VAR} in the YAML; load_config registers the password with the redaction helper.
    monkeypatch.setenv("MQ_PW", "Yaml-mqtt-pw-99")
    path = tmp_path / "cloud.yaml"
    path.write_text("mqtt: {user: u, password: '${MQ_PW}'}\n")
    assert load_config(path, CloudConfig).mqtt.password == "Yaml-mqtt-pw-99"
    assert redact("connect failed for Yaml-mqtt-pw-99") == "connect failed for ***"
    # a misspelt key is an error, not a silently ignored setting (extra="forbid")
    path.write_text("mqtt: {user: u, pass_word: x}\n")
    with pytest.raises(ConfigError, match="mqtt.pass_word"):
        load_config(path, CloudConfig)
