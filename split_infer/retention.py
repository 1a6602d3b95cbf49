"""Time-based retention of the Redis streams: how long each kind of record is kept, and the MINID
below which a stream may be trimmed (docs/retention.md).

Redis stream ids start with the millisecond at which Redis wrote the entry, so "keep 7 days" is
`XADD/XTRIM ... MINID ~ <now - 7 d>` (Redis >= 6.2). `~` lets Redis drop only whole radix-tree
nodes: it may keep a few entries more than asked, never fewer.

One rule on top of the clock: a stream read by a consumer group (the detections, read by the
analytics group) is never trimmed past an entry that group still needs: its oldest pending
(delivered, not yet acknowledged) entry, else the first entry after its last-delivered id. A lagging
or stopped analytics thus keeps its backlog, however old (its lag is the stream's growth).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from typing import Annotated, Any

import redis
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, WithJsonSchema

from split_infer.keys import Keys

log = logging.getLogger(__name__)

# -- durations: "<whole number><unit>", nothing else (no "7", no "1.5d", no "P7D") -----------------

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_PATTERN = r"^[1-9][0-9]{0,6}[smhdw]$"
SWEEP_EVERY_S = 60.0  # idle streams are trimmed this often


def parse_duration(value: Any) -> timedelta:
    """'7d' -> 7 days. Units: s, m, h, d, w; a positive whole number; anything else is an error
    (a bare number would leave the unit to guesswork)."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"a retention must be positive, got {value}")
        return value
    if not isinstance(value, str) or re.fullmatch(DURATION_PATTERN, value) is None:
        raise ValueError(f"{value!r} is not a duration: write a positive whole number and a unit, "
                         "s, m, h, d or w (e.g. 30m, 12h, 7d)")
    return timedelta(seconds=int(value[:-1]) * DURATION_UNITS[value[-1]])


def format_duration(value: timedelta) -> str:
    """The largest whole unit up to days: 7 days -> '7d', 90 minutes -> '90m' (parse_duration's inverse)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds % DURATION_UNITS[unit] == 0:
            return f"{seconds // DURATION_UNITS[unit]}{unit}"
    return f"{seconds}s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                    "description": "a whole number and a unit: s, m, h, d or w (e.g. 7d)"}),
]


def kept_for(text: str) -> Any:
    """A Duration field's default, shown in the JSON Schema as written in YAML ('6h', not 'PT6H')."""
    return Field(default=parse_duration(text), json_schema_extra={"default": text})


class RetainedStream(str, Enum):
    """The streams under time-based retention (their keys: split_infer/keys.py)."""

    DETECTIONS = "detections"  # Keys.detections_stream(camera)
    EVENTS = "events"  # Keys.events_stream(camera)
    SHED = "shed"  # Keys.dropped
    DEAD_LETTERS = "dead_letters"  # Keys.dead_letter


class RetentionConfig(BaseModel):
    """`retention:` of the cloud config: how long each stream keeps its entries."""

    model_config = ConfigDict(extra="forbid")

    detections: Duration = kept_for("6h")  # ~170 MiB per camera at 10 fps (docs/retention.md)
    events: Duration = kept_for("30d")
    shed: Duration = kept_for("1d")
    dead_letters: Duration = kept_for("7d")
    # How often a writer recomputes its trim points (one TIME, and per consumer-group stream one
    # XINFO GROUPS and one XPENDING); retention may run this much late, never early.
    refresh_s: float = Field(default=10.0, gt=0, le=3600)

    def of(self, stream: RetainedStream) -> timedelta:
        return getattr(self, stream.value)


# -- stream ids ----------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class StreamId:
    """A Redis stream id, ordered as Redis orders them (numerically, ms then seq)."""

    ms: int
    seq: int = 0

    @classmethod
    def parse(cls, text: bytes | str) -> StreamId:
        s = text.decode() if isinstance(text, bytes) else text
        ms, _, seq = s.partition("-")
        return cls(int(ms), int(seq or 0))

    def successor(self) -> StreamId:
        return StreamId(self.ms, self.seq + 1)

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


def unread_floor(r: Any, stream: str, group: str) -> StreamId | None:
    """The oldest entry of `stream` that consumer group `group` still needs: its oldest pending
    entry (read, not acknowledged), else the first id after its last-delivered id. None: there is
    no such group (or stream), so nothing holds the stream back.

    XINFO GROUPS comes before XPENDING: anything delivered after the XINFO has an id above the
    last-delivered id it reported, so the floor is safe however the group moves in between."""
    try:
        groups: Any = r.xinfo_groups(stream)
    except redis.ResponseError as e:
        if "no such key" in str(e).lower():
            return None
        raise
    info = next((g for g in groups if _text(g["name"]) == group), None)
    if info is None:
        return None
    floor = StreamId.parse(info["last-delivered-id"]).successor()
    if int(info["pending"]):
        summary: Any = r.xpending(stream, group)
        if summary["pending"] and summary["min"] is not None:
            floor = min(floor, StreamId.parse(summary["min"]))
    return floor


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class Target:
    """A stream under retention: its key, its kind, and the consumer group it waits for (if any)."""

    stream: str
    kind: RetainedStream
    keep_for_group: str | None = None


def camera_targets(keys: Keys, camera: str) -> tuple[Target, ...]:
    """The streams a worker writes for `camera`: detections (held for the analytics group), shed
    records and dead letters."""
    return (Target(keys.detections_stream(camera), RetainedStream.DETECTIONS, keys.ANALYTICS_GROUP),
            Target(keys.dropped_stream(camera), RetainedStream.SHED),
            Target(keys.dead_letter_stream(camera), RetainedStream.DEAD_LETTERS))


def events_target(keys: Keys, camera: str) -> Target:
    return Target(keys.events_stream(camera), RetainedStream.EVENTS)


def target_of(keys: Keys, camera: str, stream: str) -> Target:
    """The Target of one of `camera`'s worker-written streams, by key."""
    for target in camera_targets(keys, camera):
        if target.stream == stream:
            return target
    raise ValueError(f"{stream!r} is not a stream the worker writes for camera {camera!r}")


class Trimmer:
    """Trim points for one writer, cached for `refresh_s`: `minid()` for `XADD ... MINID ~`, and
    `sweep()` for streams that get no writes (a camera gone quiet would keep its entries otherwise).

    The clock is this host's (`wall`): Redis dates entries by its own, so hosts should keep NTP time;
    a skew of a few seconds shifts retention by as much, and never touches the consumer-group rule."""

    def __init__(self, r: Any, config: RetentionConfig | None = None, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r, self.config, self.wall, self.clock = r, config or RetentionConfig(), wall, clock
        self._cache: dict[str, tuple[float, StreamId]] = {}
        self._next_sweep = 0.0

    def compute(self, target: Target) -> StreamId:
        """The MINID now: the clock minus the retention, held back to what the target's group still needs."""
        keep_ms = int(self.config.of(target.kind).total_seconds() * 1000)
        cutoff = StreamId(max(0, int(self.wall() * 1000) - keep_ms))
        if target.keep_for_group is None:
            return cutoff
        floor = unread_floor(self.r, target.stream, target.keep_for_group)
        return cutoff if floor is None else min(cutoff, floor)

    def minid(self, target: Target) -> str:
        """The cached MINID of the target (recomputed every refresh_s). A stale value only trims
        less: the clock and the group's floor both only move forward."""
        now = self.clock()
        cached = self._cache.get(target.stream)
        if cached is None or now - cached[0] >= self.config.refresh_s:
            cached = (now, self.compute(target))
            self._cache[target.stream] = cached
        return str(cached[1])

    def trim(self, target: Target) -> int:
        """XTRIM MINID ~ (a fresh trim point); returns the entries removed."""
        minid = self.compute(target)
        self._cache[target.stream] = (self.clock(), minid)
        removed = int(self.r.xtrim(target.stream, minid=str(minid), approximate=True))
        if removed:
            log.debug("retention: trimmed %d entries of %s below %s", removed, target.stream, minid)
        return removed

    def sweep(self, targets: Iterable[Target]) -> int:
        """trim() each target, at most once every SWEEP_EVERY_S (the writes trim the busy streams)."""
        now = self.clock()
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_EVERY_S
        return sum(self.trim(t) for t in targets)
