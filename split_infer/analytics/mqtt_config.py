"""The `mqtt` section of the cloud config: where analytics mirrors its events (docs/analytics.md, "MQTT").

Kept apart from `split_infer.analytics.mqtt` (which needs paho-mqtt) so that `split_infer.config`
can hold it without importing paho. The password comes from `password: ${VAR}`, `password_file`
(a Docker or Kubernetes secret) or `$SPLIT_INFER_MQTT_PASSWORD` / `$SPLIT_INFER_MQTT_PASSWORD_FILE`;
TLS is on unless `tls: {insecure: true}` says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from split_infer.secret_source import read_secret

MQTT_PASSWORD_ENV = "SPLIT_INFER_MQTT_PASSWORD"  # a variable name, not a secret  # nosec B105
# The project's own topic root: on a broker shared with a real Frigate, `frigate/available` and the
# rest of Frigate's topics are left alone unless `layout: frigate` (or `prefix: frigate`) is asked for.
DEFAULT_PREFIX = {"split-infer": "split-infer", "frigate": "frigate"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttTLS(_Strict):
    """TLS to the broker (paho's `tls_set`), verifying it against `ca`; plaintext only with `insecure`."""

    insecure: bool = False  # plaintext MQTT: only on a network you trust (loopback)
    ca: Path | None = None  # CA bundle (PEM) that signed the broker's certificate; None: the system roots
    cert: Path | None = None  # client certificate (PEM), with `key`, for brokers that require one
    key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> MqttTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mqtt.tls.cert and mqtt.tls.key go together (the client certificate and its key)")
        if self.insecure and (self.ca or self.cert):
            raise ValueError("mqtt.tls.insecure turns TLS off: drop ca/cert/key, or insecure")
        return self


class MqttConfig(_Strict):
    """Analytics' MQTT mirror: broker, credentials, TLS and topic layout."""

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)  # None: 8883 with TLS, 1883 without
    user: str | None = None
    password: str | None = None  # better `${VAR}`, password_file or $SPLIT_INFER_MQTT_PASSWORD
    password_file: Path | None = None
    tls: MqttTLS = Field(default_factory=MqttTLS)
    # split-infer: <prefix>/<camera>/zones/<zone>/<object>; frigate: Frigate's <prefix>/<zone>/<object>
    layout: Literal["split-infer", "frigate"] = "split-infer"
    prefix: str | None = Field(default=None, pattern=r"^[^#+/\s][^#+\s]*[^#+/\s]$|^[^#+/\s]$")  # None: the layout's
    client_id: str | None = None  # None: the analytics consumer name
    keepalive_s: int = Field(default=30, ge=5)
    connect_timeout_s: float = Field(default=10.0, gt=0)  # wait this long for the broker's CONNACK

    @model_validator(mode="after")
    def _secrets_and_defaults(self) -> MqttConfig:
        self.password = read_secret(self.password, self.password_file, MQTT_PASSWORD_ENV, "mqtt.password")
        if self.password and not self.user:
            raise ValueError("mqtt.password needs mqtt.user")
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (1883 if self.tls.insecure else 8883)

    @property
    def topic_prefix(self) -> str:
        return self.prefix or DEFAULT_PREFIX[self.layout]

