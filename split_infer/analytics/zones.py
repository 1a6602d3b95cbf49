"""Polygon zones: who is inside now (by the box's bottom centre), entries, exits and dwell time.

The polygon is configured in pixels or normalised coordinates (split_infer/analytics/scene_config.py);
`resize` places it on the stream's frame size.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from split_infer.analytics.geometry import Point, polygon_distance
from split_infer.analytics.scene_config import Size, Units, ZoneConfig, resolve
from split_infer.analytics.state import StateError, StateReader, point


@dataclass
class Stay:
    class_name: str
    since: float  # capture_ts of entry


@dataclass
class Zone:
    name: str
    polygon: np.ndarray  # as configured, in `units`
    classes: frozenset[str]
    margin: float = 4.0  # pixels, whatever the units
    units: Units = Units.pixels
    reference: Size | None = None  # frame size of pixel coordinates (rescaled to the stream's size)
    inside: dict[int, Stay] = field(default_factory=dict)  # track id -> its current stay
    entries: Counter[str] = field(default_factory=Counter)
    exits: Counter[str] = field(default_factory=Counter)
    dwell_total: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))  # s, finished stays
    size: Size | None = None  # the frame size the polygon is placed on now
    pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # the polygon on that frame

    def __post_init__(self) -> None:
        self.resize(self.reference or (1, 1))

    @classmethod
    def from_config(cls, cfg: ZoneConfig, units: Units = Units.pixels, reference: Size | None = None) -> Zone:
        return cls(name=cfg.name, polygon=np.asarray(cfg.polygon, dtype=float), classes=frozenset(cfg.classes),
                   margin=cfg.margin, units=cfg.units or units, reference=reference)

    def same_geometry(self, other: Zone) -> bool:
        """Whether `other` is the same zone (a change starts its counts afresh)."""
        return (np.array_equal(self.polygon, other.polygon)
                and (self.classes, self.margin, self.units, self.reference)
                == (other.classes, other.margin, other.units, other.reference))

    def resize(self, size: Size) -> None:
        """Place the polygon on frames of `size` (width, height)."""
        if size != self.size:
            corners = [(float(x), float(y)) for x, y in self.polygon]
            self.size, self.pixels = size, np.asarray(resolve(corners, self.units, self.reference, size), dtype=float)

    def contains(self, p: Point) -> bool:
        return polygon_distance(self.pixels, p) >= 0

    def update(self, track_id: int, class_name: str, p: Point, ts: float) -> tuple[str, float | None] | None:
        """Feed one observation; return ("enter", None) or ("exit", dwell_s) when the state changes."""
        if class_name not in self.classes:
            return None
        d = polygon_distance(self.pixels, p)
        stay = self.inside.get(track_id)
        if stay is None and d >= self.margin:
            self.inside[track_id] = Stay(class_name, ts)
            self.entries[class_name] += 1
            return ("enter", None)
        if stay is not None and d <= -self.margin:
            return ("exit", self._close(track_id, ts))
        if stay is not None:
            stay.class_name = class_name  # the class vote may settle after entry
        return None

    def leave(self, track_id: int, ts: float) -> float | None:
        """The track is gone (lost by the tracker): close its stay if it had one."""
        return self._close(track_id, ts) if track_id in self.inside else None

    def _close(self, track_id: int, ts: float) -> float:
        stay = self.inside.pop(track_id)
        dwell = max(0.0, ts - stay.since)
        self.exits[stay.class_name] += 1
        self.dwell_total[stay.class_name] += dwell
        return dwell

    def occupancy(self) -> Counter[str]:
        return Counter(s.class_name for s in self.inside.values())

    def to_state(self) -> dict[str, Any]:
        """Checkpoint JSON (docs/analytics.md): the geometry too, so a changed zone starts afresh."""
        return {"name": self.name, "polygon": [[float(x), float(y)] for x, y in self.polygon],
                "classes": sorted(self.classes), "margin": self.margin, "units": self.units.value,
                "reference": None if self.reference is None else list(self.reference),
                "inside": [{"track": tid, "class": s.class_name, "since": s.since} for tid, s in self.inside.items()],
                "entries": [[c, n] for c, n in self.entries.items()], "exits": [[c, n] for c, n in self.exits.items()],
                "dwell_total": [[c, s] for c, s in self.dwell_total.items()]}

    @classmethod
    def from_state(cls, r: StateReader) -> Zone:
        corners = r.array("polygon", 10_000)
        if len(corners) < 3:
            raise StateError(f"{r.path}.polygon has fewer than 3 corners")
        polygon = np.array([point(p, f"{r.path}.polygon[{i}]") for i, p in enumerate(corners)], dtype=float)
        inside = {s.whole("track"): Stay(s.text("class"), s.num("since")) for s in r.objects("inside")}
        return cls(name=r.text("name"), polygon=polygon, classes=r.names("classes"), margin=r.num("margin"),
                   units=r.units(), reference=r.size("reference"), inside=inside,
                   entries=r.tally("entries"), exits=r.tally("exits"),
                   dwell_total=defaultdict(float, r.tally("dwell_total", whole=False)))

    def dwell_max(self, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in self.inside.values():
            out[s.class_name] = max(out.get(s.class_name, 0.0), now - s.since)
        return out
