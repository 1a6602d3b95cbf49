"""One typed configuration for every camera and service (Frigate style: unknown keys are errors).

The same YAML file configures an edge node's cameras and the analytics that read them, so a
line drawn for a camera lives next to that camera's URL.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from split_infer.analytics.mqtt_config import MqttConfig
from split_infer.analytics.scene_config import (  # noqa: F401  (re-exported: the lines and zones of a camera)
    TRAFFIC_CLASSES,
    AnalyticsSettings,
    LineConfig,
    SceneMixin,
    Units,
    ZoneConfig,
    check_zone_names,
)
from split_infer.cloud.release_config import ModelRelease
from split_infer.codec import DEFAULT_CODEC
from split_infer.keys import CAMERA_ID_PATTERN
from split_infer.redact import register_config
from split_infer.redisconn import check_redis_url
from split_infer.retention import RetentionConfig
from split_infer.secret_source import read_secret


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


S = TypeVar("S", bound=Strict)


class CameraConfig(SceneMixin):
    """A camera: its source (edge) and its lines and zones (analytics; units, frame_size: SceneMixin)."""

    id: str = Field(pattern=CAMERA_ID_PATTERN)
    url: str  # rtsp://, http(s)://, a file path, or a device index such as "0"
    fps: float | None = Field(default=None, gt=0)  # cap; None = as fast as the model allows
    loop: bool = False  # replay a file source forever (demo feeds)
    # File sources: True paces them at their native frame rate like a live camera (newest frame
    # wins, the rest are skipped); False yields every frame as fast as the edge takes them
    # (tests and benchmarks that must process a known set of frames).
    realtime: bool = True
    snapshot_interval_s: float = Field(default=2.0, gt=0)


class ModelConfig(Strict):
    name: str = "yolov5s"
    cut: int = Field(default=4, ge=0)
    imgsz: tuple[int, int] = (640, 384)  # width, height; multiples of 32
    conf: float = Field(default=0.25, ge=0, le=1)
    iou: float = Field(default=0.45, ge=0, le=1)

    @field_validator("imgsz")
    @classmethod
    def _stride_multiple(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] % 32 or v[1] % 32 or min(v) <= 0:
            raise ValueError(f"imgsz {v} must be positive multiples of 32")
        return v


# -- secrets: never on the command line (docs/security.md) ------------------------------------------
# A YAML value may be `${VAR}` or `${VAR:-default}` (the environment, as Frigate does), and each
# secret has a `*_file` twin (Docker and Kubernetes secrets) and a well-known variable read when the
# config gives neither: NAME holds the secret, NAME_FILE the path of a file holding it.
EDGE_TOKEN_ENV = "SPLIT_INFER_EDGE_TOKEN"  # a variable name, not a secret  # nosec B105
REDIS_PASSWORD_ENV = "SPLIT_INFER_REDIS_PASSWORD"  # a variable name  # nosec B105


def redis_url_with_password(url: str, password: str | None) -> str:
    """`url` with `password` (URL-quoted) as its password, keeping any ACL user (`redis://user@host`)."""
    if not password:
        return url
    parts = urlsplit(url)
    if parts.password is not None:
        raise ValueError("redis_url already holds a password: give it in one place only")
    user = parts.username or ""
    netloc = f"{user}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


# -- gRPC transport security between the edge and the ingest (split_infer/tls.py) ------------------


class EdgeTLS(Strict):
    """The edge's side of the link: TLS verifying the ingest, unless `insecure: true`."""

    insecure: bool = False  # plaintext gRPC: only on a network you trust (a loopback test)
    ca: Path | None = None  # CA bundle (PEM) that signed the ingest's certificate; None: the system roots
    cert: Path | None = None  # this node's client certificate (mutual TLS), with `key`
    key: Path | None = None
    server_name: str | None = None  # name checked in the ingest's certificate; None: the host of `cloud`

    @model_validator(mode="after")
    def _pair(self) -> EdgeTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together (the client certificate and its private key)")
        return self


class IngestTLS(Strict):
    """The ingest's side: serves TLS with `cert` and `key`, unless `insecure: true`."""

    insecure: bool = False  # plaintext gRPC: only on a network you trust (a loopback test)
    cert: Path | None = None  # server certificate chain (PEM); `split-infer certs dev` makes one
    key: Path | None = None
    client_ca: Path | None = None  # given: every edge must present a client certificate signed by it (mTLS)

    @model_validator(mode="after")
    def _pair(self) -> IngestTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together (the server certificate and its private key)")
        return self


class EdgeConfig(Strict):
    node_id: str = "edge-0"
    cloud: str = "127.0.0.1:50051"  # ingest address host:port
    tls: EdgeTLS = Field(default_factory=EdgeTLS)
    token: str | None = None  # shared secret the ingest checks; better `${VAR}`, token_file or the env
    token_file: Path | None = None  # read the token from this file (a Docker or Kubernetes secret)
    model_dir: Path | None = None  # exported edge IR (split-infer export); None = default cache
    device: str = "AUTO"  # OpenVINO device string
    codec: str = DEFAULT_CODEC  # split_infer.codec spec; see docs/codec.md
    # Also code each frame with x264 at this CRF and report its bytes (split_infer/edge/anchor.py):
    # what the camera's own stream would cost. CPU-costly; None = off.
    anchor_x264_crf: int | None = Field(default=None, ge=0, le=51)
    buffer_frames: int = Field(default=64, ge=1)  # frames kept while the cloud is unreachable
    inflight_frames: int = Field(default=16, ge=1)  # gRPC window
    # OpenVINO's hint: auto = latency for one camera, throughput (one stream per core) for more.
    performance_hint: Literal["auto", "latency", "throughput"] = "auto"
    infer_requests: int | None = Field(default=None, ge=1)  # in flight across cameras; None: OpenVINO's optimum
    threads: int | None = Field(default=None, ge=1)  # OpenVINO CPU threads for the edge; None: all cores
    # FFmpeg decode threads per camera: 1 decodes in the camera's reader thread (no frame held back
    # by frame threading, the decode's CPU measurable); raise it for one camera too heavy for a core.
    decode_threads: int = Field(default=1, ge=1)
    # OpenVINO inference precision; auto: the fastest within tolerance, measured once per device and
    # model at start-up and cached (split_infer/edge/precision.py).
    precision: Literal["auto", "f32", "bf16", "int8"] = "auto"
    metrics_port: int | None = None  # serve Prometheus /metrics here; None = off
    metrics_addr: str = "127.0.0.1"
    cameras: list[CameraConfig] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)

    @field_validator("cameras")
    @classmethod
    def _unique_ids(cls, v: list[CameraConfig]) -> list[CameraConfig]:
        return checked_cameras(v)

    @model_validator(mode="after")
    def _secret_token(self) -> EdgeConfig:
        self.token = read_secret(self.token, self.token_file, EDGE_TOKEN_ENV, "token")
        return self


class IngestSettings(Strict):
    """Limits and flow control of the cloud ingest (split_infer.cloud.ingest)."""

    max_payload_bytes: int = Field(default=8 << 20, gt=0)  # one frame's feature payload
    max_snapshot_bytes: int = Field(default=512 << 10, ge=0)
    max_dim: int = Field(default=16384, gt=0)  # original frame width/height bound
    credit_window: int = Field(default=16, ge=1)  # credit granted while the queue is shallow
    camera_timeout_s: float = Field(default=5.0, gt=0)  # no frame for this long: camera offline
    # Codec the ingest re-encodes stateful (temporal) frames into so that the queue holds only
    # self-contained frames; stateless payloads pass through unchanged.
    queue_codec: str = "q8-zstd"
    # Codec model files that edges may use: learned bottlenecks (.npz, `split-infer codec train`)
    # and video codec bases (.basis.npz, `split-infer codec calibrate`; the shipped ones are always
    # found). The ingest reconstructs their frames and queues them self-contained, so workers never
    # need the models.
    codec_models: Path | None = None
    # Expected per-frame feature shapes without the batch axis, e.g. {"x4": [128, 48, 80]};
    # None: derived from `model` (name, cut, imgsz) at start-up.
    feature_shapes: dict[str, list[int]] | None = None
    # A frame whose capture_ts is further ahead of the ingest's clock than this is rejected.
    max_clock_skew_s: float = Field(default=300.0, gt=0)
    # Limits against abuse (docs/security.md): concurrent streams per peer host and per token (an
    # edge node holds one), then RESOURCE_EXHAUSTED; a stream closed when its first frame does not
    # come within first_frame_timeout_s (also the bound on a connection's TLS/HTTP2 handshake) or
    # nothing comes for idle_timeout_s; all calls at once; HTTP/2 streams per connection.
    max_streams_per_peer: int = Field(default=8, ge=1)
    max_streams_per_token: int = Field(default=16, ge=1)
    first_frame_timeout_s: float = Field(default=10.0, gt=0)
    idle_timeout_s: float = Field(default=120.0, gt=0)
    max_concurrent_rpcs: int = Field(default=512, ge=1)
    max_streams_per_connection: int = Field(default=16, ge=1)


class WorkerSettings(Strict):
    """Consumer-group behaviour of the cloud workers (split_infer.cloud.worker)."""

    max_batch: int = Field(default=8, ge=1)
    block_ms: int = Field(default=200, ge=1)  # XREADGROUP wait when the queue is empty
    claim_idle_ms: int = Field(default=15000, ge=1)  # pending this long: its worker is presumed dead
    claim_interval_s: float = Field(default=2.0, gt=0)
    max_deliveries: int = Field(default=5, ge=1)  # then the frame goes to the dead-letter stream
    done_ttl_s: int = Field(default=3600, ge=1)  # how long (camera, session, seq) stays deduplicated
    streams_refresh_s: float = Field(default=2.0, gt=0)  # how often new cameras are discovered
    # Batching policy (split_infer.batching.policy): adaptive picks each batch from the measured
    # cost per batch size and the latency objective (latency_slo_ms); fixed/triton/aimd for comparison.
    batching: Literal["adaptive", "fixed", "triton", "aimd"] = "adaptive"
    cost_file: Path | None = None  # head cost per batch size (JSON); None: profiled at start-up
    profile_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8])
    overload: Literal["shed", "late"] = "shed"  # a frame that can no longer meet the objective
    prefetch: int = Field(default=0, ge=0)  # frames read ahead for the policy to see; 0: 2 x max_batch
    # CPU threads for the head (torch and OpenVINO); None = the runtime's default (every core).
    # On a machine shared with an edge node, 1 avoids two runtimes fighting over the same cores.
    head_threads: int | None = Field(default=None, ge=1)
    # Its model_version, codec model and, on a canary, the stable model it shadows (docs/canary.md).
    release: ModelRelease = Field(default_factory=ModelRelease)


class EdgeToken(Strict):
    """An edge token the ingest accepts, bound to the cameras it may send (docs/security.md). The
    config holds only the secret's SHA-256, never the secret: `printf %s "$TOKEN" | sha256sum`.
    Several entries may cover the same cameras (a new token before the old one is withdrawn)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # in logs and errors, instead of the secret
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")  # hex digest of the token's UTF-8 bytes
    cameras: list[str] = Field(min_length=1)  # camera ids, or ["*"]: every camera

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()

    @field_validator("cameras")
    @classmethod
    def _camera_ids(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c != "*" and re.fullmatch(CAMERA_ID_PATTERN, c) is None]
        if bad:
            raise ValueError(f"camera ids {bad} are not valid ids (or '*' for every camera)")
        return v

    @classmethod
    def for_secret(cls, name: str, secret: str, cameras: list[str]) -> EdgeToken:
        return cls(name=name, sha256=hashlib.sha256(secret.encode()).hexdigest(), cameras=cameras)

    def covers(self, camera: str) -> bool:
        return "*" in self.cameras or camera in self.cameras


def with_redis_secret(redis_url: str, password_file: Path | None) -> str:
    """`redis_url` with the password from `password_file` or $SPLIT_INFER_REDIS_PASSWORD put in."""
    check_redis_url(redis_url)  # one server or a Redis Cluster (split_infer/redisconn.py)
    password = read_secret(None, password_file, REDIS_PASSWORD_ENV, "redis_password")
    if password and urlsplit(redis_url).password is None:
        return redis_url_with_password(redis_url, password)
    if password_file is not None:
        raise ValueError("redis_url already holds a password: give it in one place only")
    return redis_url


class CloudConfig(Strict):
    # redis:// or rediss:// (TLS: ?ssl_ca_certs=/path/ca.pem), ACL user as redis://user@host; the
    # password from redis_password_file or $SPLIT_INFER_REDIS_PASSWORD, never in the YAML.
    # redis+cluster://host:port[,host:port...] (rediss+cluster://): a Redis Cluster (docs/redis.md).
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: Path | None = None
    listen: str = "127.0.0.1:50051"
    tls: IngestTLS = Field(default_factory=IngestTLS)  # gRPC from the edges
    tokens: list[EdgeToken] = Field(default_factory=list)  # accepted edge tokens; empty = no auth
    cameras: list[CameraConfig] = Field(default_factory=list)  # known cameras (and their analytics)
    # Edge configs (or any YAML with a `cameras:` list) whose cameras join `cameras`: one camera list
    # for the edge and the cloud. Relative paths are relative to this file (docs/analytics.md).
    camera_files: list[Path] = Field(default_factory=list, exclude=True)
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    head_runtime: Literal["auto", "torch", "openvino"] = "auto"
    max_queue: int = Field(default=2000, ge=1)  # per-camera stream length before push-back
    latency_slo_ms: float = Field(default=200.0, gt=0)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    mqtt: MqttConfig | None = None  # analytics mirrors its events to this broker (docs/analytics.md, "MQTT")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)  # per stream, by time (docs/retention.md)

    @field_validator("tokens", mode="before")
    @classmethod
    def _token_entries(cls, v: Any) -> Any:
        # The message never repeats the entry: an old-style entry is the secret itself.
        if isinstance(v, list) and any(isinstance(t, str) for t in v):
            raise ValueError("each token is an entry {name, sha256, cameras} (docs/cloud.md), not the secret "
                             "itself: sha256 = printf %s \"$TOKEN\" | sha256sum")
        return v

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, v: list[EdgeToken]) -> list[EdgeToken]:
        if len({t.name for t in v}) != len(v) or len({t.sha256 for t in v}) != len(v):
            raise ValueError("token names and digests must be unique")
        return v

    @model_validator(mode="after")
    def _secret_redis_password(self) -> CloudConfig:
        self.redis_url = with_redis_secret(self.redis_url, self.redis_password_file)
        return self

    @model_validator(mode="after")
    def _camera_list(self, info: ValidationInfo) -> CloudConfig:
        base = Path((info.context or {}).get("config_dir", "."))
        for path in self.camera_files:
            self.cameras += cameras_of_file(path if path.is_absolute() else base / path)
        self.camera_files = []  # taken in; a re-validated dump must not take them twice
        self.cameras = checked_cameras(self.cameras)
        return self


class ApiKey(Strict):
    """A read-API key, kept as the sha256 of the key (hex), never the key (`split-infer api --new-key`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # shown in logs instead of the key
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["read"]] = Field(default=["read"], min_length=1)  # read: every /api/... endpoint


class ApiConfig(Strict):
    """The read API (split_infer.api): its Redis, API keys, CORS, rate limit and live-feed bounds."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: Path | None = None  # as CloudConfig's; or $SPLIT_INFER_REDIS_PASSWORD
    listen: str = "127.0.0.1:8080"
    stale_after_s: float = Field(default=5.0, gt=0)
    api_keys: list[ApiKey] = Field(default_factory=list)  # empty: no authentication (logged loudly)
    cors_origins: list[str] = Field(default_factory=list)  # origins allowed cross-origin; empty: none
    rate_per_s: float = Field(default=20.0, gt=0)  # requests per second per key (token bucket)
    rate_burst: int = Field(default=120, ge=1)
    max_live: int = Field(default=50, ge=1)  # concurrent /api/live connections; beyond: 503
    live_max_s: float = Field(default=3600.0, gt=0)  # a live connection is closed after this long
    live_queue: int = Field(default=256, ge=1)  # events waiting for a slow live client before it is closed

    @model_validator(mode="after")
    def _secret_redis_password(self) -> ApiConfig:
        self.redis_url = with_redis_secret(self.redis_url, self.redis_password_file)
        return self


def checked_cameras(cameras: list[CameraConfig]) -> list[CameraConfig]:
    ids = [c.id for c in cameras]
    if len(ids) != len(set(ids)):
        raise ValueError(f"camera ids must be unique, got {sorted(i for i in set(ids) if ids.count(i) > 1)} twice")
    check_zone_names(cameras)
    return cameras


def cameras_of_file(path: Path) -> list[CameraConfig]:
    """The `cameras:` list of another config file (an edge's), validated as here."""
    try:
        data = substitute_env(_read_mapping(path), str(path))
        return [CameraConfig.model_validate(c) for c in data.get("cameras") or []]
    except ConfigError as e:
        raise ValueError(f"camera_files: {e}") from None
    except ValidationError as e:
        raise ValueError(f"camera_files: {path}: cameras: {describe_errors(e)}") from None


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file, the field and the problem."""


def load_config(path: str | Path | None, kind: type[S], overrides: dict[str, Any] | None = None) -> S:
    """`kind` from a YAML file (None: the defaults), with the command line's `overrides` on top
    (None values are not given). Every problem is one ConfigError, never a traceback."""
    source = str(path) if path else "defaults"
    data = substitute_env(_read_mapping(Path(path)), str(path)) if path else {}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if given:
        data.update(given)
        source += " with command-line overrides"
    try:
        cfg = kind.model_validate(data, context={"config_dir": Path(path).parent if path else Path(".")})
    except ValidationError as e:
        raise ConfigError(f"{source}: invalid configuration: {describe_errors(e)}") from None
    register_config(cfg)  # its tokens, passwords and URL credentials never reach a log line
    return cfg


def describe_errors(error: ValidationError) -> str:
    """pydantic's errors on one line: `cameras.0.fps: Input should be greater than 0 (got -1)`."""
    parts = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = err.get("input")
        shown = f" (got {repr(got)[:60]})" if isinstance(got, (str, int, float, bool)) or got is None else ""
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


_ENV_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(data: Any, source: str) -> Any:
    """Every `${VAR}` (or `${VAR:-default}`) in the YAML's strings replaced by the environment's
    value; `$$` is a literal `$`. A variable that is unset, with no default, is a ConfigError."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name, default)
        if value is None:
            raise ConfigError(f"{source}: ${{{name}}} is used but the environment variable {name} is not set")
        return value

    if isinstance(data, str):
        return _ENV_REF.sub(one, data) if "$" in data else data
    if isinstance(data, dict):
        return {k: substitute_env(v, source) for k, v in data.items()}
    if isinstance(data, list):
        return [substitute_env(v, source) for v in data]
    return data


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: invalid configuration: expected a mapping of settings, got {type(data).__name__}")
    return data
