"""The hashes rewritten in place: the ingest's camera state and the analytics' counts. Read field
by field: what is missing or unreadable is None, or left out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from split_infer.records.encoding import (
    Fields,
    RawFields,
    compact,
    count_or_none,
    lenient,
    number_or_none,
    parse_json,
    whole_number,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraStatus:
    """A camera as the ingest last saw it: its state hash, rewritten while frames come. Read field
    by field: what is missing or unreadable is None."""

    online: bool = False
    fps: float | None = None  # frames per second received (recent window)
    bytes_per_s: float | None = None
    last_frame_ts: float | None = None  # capture time of the last frame (edge clock)
    last_seen_ts: float | None = None  # when the ingest received it
    last_seq: int | None = None  # highest seq queued in this session
    session: str | None = None
    frames: int | None = None
    bytes: int | None = None
    rejected: int | None = None
    dropped_edge: int | None = None
    peer: str | None = None

    def to_fields(self) -> Fields:
        numbers = {"fps": None if self.fps is None else round(self.fps, 3),
                   "bytes_per_s": None if self.bytes_per_s is None else round(self.bytes_per_s, 1),
                   "last_frame_ts": None if self.last_frame_ts is None else repr(self.last_frame_ts),
                   "last_seen_ts": None if self.last_seen_ts is None else repr(self.last_seen_ts),
                   "last_seq": -1 if self.last_seq is None else self.last_seq}  # -1: none yet
        counts = {"frames": self.frames, "bytes": self.bytes, "rejected": self.rejected,
                  "dropped_edge": self.dropped_edge}
        out: Fields = {"online": int(self.online)}
        out |= {k: v for k, v in numbers.items() if v is not None}
        out["session"] = self.session or ""
        out |= {k: v for k, v in counts.items() if v is not None}
        out["peer"] = self.peer or ""
        return out

    @classmethod
    def from_fields(cls, raw: RawFields) -> CameraStatus:
        g = lenient(raw)
        last_seq = count_or_none(g.get("last_seq"))
        return cls(online=g.get("online") == "1", fps=number_or_none(g.get("fps")),
                   bytes_per_s=number_or_none(g.get("bytes_per_s")),
                   last_frame_ts=number_or_none(g.get("last_frame_ts")),
                   last_seen_ts=number_or_none(g.get("last_seen_ts")),
                   last_seq=None if last_seq is None or last_seq < 0 else last_seq, session=g.get("session") or None,
                   frames=count_or_none(g.get("frames")), bytes=count_or_none(g.get("bytes")),
                   rejected=count_or_none(g.get("rejected")), dropped_edge=count_or_none(g.get("dropped_edge")),
                   peer=g.get("peer") or None)


@dataclass(frozen=True)
class ZoneTally:
    """One zone's figures, per class: objects in it now, entries, exits, seconds spent by objects
    that left, and the longest stay of an object now inside."""

    occupancy: dict[str, int] = field(default_factory=dict)
    entries: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    dwell_s: dict[str, float] = field(default_factory=dict)
    dwell_max_s: dict[str, float] = field(default_factory=dict)


_ZONE_FIGURES = tuple(f.name for f in fields(ZoneTally))
_ZONE_SECONDS = ("dwell_s", "dwell_max_s")


@dataclass(frozen=True)
class MinuteTally:
    minute: int  # unix seconds of the minute's start
    crossings: dict[str, int]
    tracks: dict[str, int]


def _per_class(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return {str(k): whole_number(v) for k, v in value.items()}


def _history(text: str | None) -> tuple[MinuteTally, ...]:
    try:
        return tuple(MinuteTally(whole_number(m["minute"]), _per_class(m["crossings"]), _per_class(m["tracks"]))
                     for m in parse_json(text or "[]"))
    except (ValueError, TypeError, KeyError) as e:
        log.warning("unreadable per_minute_history: %s", e)
        return ()


_SCALARS: dict[str, Callable[[str | None], Any]] = {
    "updated_ts": number_or_none, "seq": count_or_none, "frames": count_or_none, "skipped_frames": count_or_none,
    "rejected_records": count_or_none, "congestion": lambda v: v or None, "congestion_score": number_or_none,
    "vehicles": count_or_none, "median_speed": number_or_none}
_THREE_DECIMALS = ("updated_ts", "congestion_score", "median_speed")


@dataclass(frozen=True)
class AnalyticsCounts:
    """The analytics aggregates of one camera (its counts hash, docs/analytics.md). Read field by
    field: unknown or unreadable fields are left out, so a newer analytics cannot break a reader."""

    updated_ts: float | None = None  # capture time of the last frame analysed
    seq: int | None = None
    frames: int | None = None
    skipped_frames: int | None = None
    rejected_records: int | None = None
    congestion: str | None = None
    congestion_score: float | None = None
    vehicles: int | None = None
    median_speed: float | None = None  # box heights per second
    lines: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # line -> in/out -> class -> n
    zones: dict[str, ZoneTally] = field(default_factory=dict)
    per_minute_basis: str | None = None  # crossings (the camera has lines) or tracks
    per_minute: dict[str, int] = field(default_factory=dict)
    tracks: dict[str, int] = field(default_factory=dict)  # objects tracked in the frame now
    per_minute_history: tuple[MinuteTally, ...] = ()

    def to_fields(self) -> Fields:
        out: Fields = {}
        for name in _SCALARS:
            value = getattr(self, name)
            if value is not None:
                out[name] = f"{value:.3f}" if name in _THREE_DECIMALS else str(value)
        for line, directions in self.lines.items():
            for direction, per_class in directions.items():
                out |= {f"line:{line}:{direction}:{cls}": str(n) for cls, n in per_class.items()}
        for zone, tally in self.zones.items():
            figures = {name: getattr(tally, name) for name in _ZONE_FIGURES}
            for cls in dict.fromkeys(c for per_class in figures.values() for c in per_class):
                for name, per_class in figures.items():
                    if cls in per_class:
                        value = per_class[cls]
                        out[f"zone:{zone}:{name}:{cls}"] = f"{value:.3f}" if name in _ZONE_SECONDS else str(value)
        if self.per_minute_basis is not None:
            out["per_minute_basis"] = self.per_minute_basis
        out |= {f"per_minute:{cls}": str(n) for cls, n in self.per_minute.items()}
        out |= {f"tracks:{cls}": str(n) for cls, n in self.tracks.items()}
        out["per_minute_history"] = compact([asdict(m) for m in self.per_minute_history])
        return out

    @classmethod
    def from_fields(cls, raw: RawFields) -> AnalyticsCounts:
        g = lenient(raw)
        counts = cls(**{name: parse(g.get(name)) for name, parse in _SCALARS.items()},
                     per_minute_basis=g.get("per_minute_basis") or None,
                     per_minute_history=_history(g.get("per_minute_history")))
        for name, text in g.items():
            counts._add(name.split(":"), number_or_none(text))
        return counts

    def _add(self, parts: list[str], value: float | None) -> None:
        """One per-class field (line:<name>:in:<class>, zone:..., per_minute:<class>, tracks:<class>)."""
        if value is None:
            return
        if len(parts) == 4 and parts[0] == "line" and parts[2] in ("in", "out"):
            self.lines.setdefault(parts[1], {}).setdefault(parts[2], {})[parts[3]] = int(value)
        elif len(parts) == 4 and parts[0] == "zone" and parts[2] in _ZONE_FIGURES:
            figure = getattr(self.zones.setdefault(parts[1], ZoneTally()), parts[2])
            figure[parts[3]] = value if parts[2] in _ZONE_SECONDS else int(value)
        elif len(parts) == 2 and parts[0] in ("per_minute", "tracks"):
            getattr(self, parts[0])[parts[1]] = int(value)
