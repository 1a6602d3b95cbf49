"""Counting lines with side memory and a hysteresis margin (docs/analytics.md, "Crossing rules").

Per track the counter remembers the side of the line the track was last confirmed on. A side is
confirmed only beyond `margin` pixels from the line and within the segment's span, so an anchor
that wobbles on the line never counts, and a real crossing counts once, on the first frame past
the margin on the other side.

The line is configured in pixels or normalised coordinates (split_infer/analytics/scene_config.py);
`resize` places it on the stream's frame size, so a camera whose resolution changes keeps counting
on the same line (its tracks' sides and its counts are kept).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from split_infer.analytics.geometry import Point, side_distance
from split_infer.analytics.scene_config import LineConfig, Size, Units, resolve
from split_infer.analytics.state import StateReader, integer, pair_of

Direction = Literal["in", "out"]


@dataclass
class LineCounter:
    name: str
    a: Point  # as configured, in `units`
    b: Point
    classes: frozenset[str]
    margin: float = 8.0  # pixels, whatever the units
    units: Units = Units.pixels
    reference: Size | None = None  # frame size of pixel coordinates (rescaled to the stream's size)
    sides: dict[int, int] = field(default_factory=dict)  # track id -> +1 (in side) / -1 (out side)
    counts: dict[Direction, Counter[str]] = field(default_factory=lambda: {"in": Counter(), "out": Counter()})
    size: Size | None = None  # the frame size the line is placed on now
    pixels: tuple[Point, Point] = ((0.0, 0.0), (0.0, 0.0))  # a and b on that frame

    def __post_init__(self) -> None:
        self.resize(self.reference or (1, 1))

    @classmethod
    def from_config(cls, cfg: LineConfig, units: Units = Units.pixels, reference: Size | None = None) -> LineCounter:
        return cls(name=cfg.name, a=cfg.a, b=cfg.b, classes=frozenset(cfg.classes),
                   margin=cfg.margin, units=cfg.units or units, reference=reference)

    @property
    def geometry(self) -> tuple[Any, ...]:
        """What makes two lines the same line (a change starts its counts afresh)."""
        return (self.a, self.b, self.classes, self.margin, self.units, self.reference)

    def resize(self, size: Size) -> None:
        """Place the line on frames of `size` (width, height)."""
        if size != self.size:
            pa, pb = resolve([self.a, self.b], self.units, self.reference, size)
            self.size, self.pixels = size, (pa, pb)

    def update(self, track_id: int, class_name: str, p: Point) -> Direction | None:
        """Feed one observation of a track's anchor; return the direction if it just crossed."""
        dist, t = side_distance(*self.pixels, p)
        if not 0.0 <= t <= 1.0:
            self.sides.pop(track_id, None)  # beside the segment: going round its end is no crossing
            return None
        if abs(dist) <= self.margin:
            return None  # inside the hysteresis band: keep the confirmed side
        side = 1 if dist > 0 else -1
        before = self.sides.get(track_id)
        self.sides[track_id] = side
        if before is None or before == side:
            return None
        direction: Direction = "in" if side > 0 else "out"
        if class_name in self.classes:
            self.counts[direction][class_name] += 1
            return direction
        return None

    def forget(self, track_id: int) -> None:
        self.sides.pop(track_id, None)

    def to_state(self) -> dict[str, Any]:
        """Checkpoint JSON (docs/analytics.md): the geometry too, so a changed line starts afresh."""
        return {"name": self.name, "a": list(self.a), "b": list(self.b), "classes": sorted(self.classes),
                "margin": self.margin, "units": self.units.value,
                "reference": None if self.reference is None else list(self.reference),
                "sides": [[tid, side] for tid, side in self.sides.items()],
                "counts": {d: [[c, n] for c, n in self.counts[d].items()] for d in ("in", "out")}}

    @classmethod
    def from_state(cls, r: StateReader) -> LineCounter:
        sides = {}
        for i, pair in enumerate(r.array("sides")):
            tid, side = pair_of(pair, f"{r.path}.sides[{i}]")
            sides[integer(tid, f"{r.path}.sides[{i}][0]")] = integer(side, f"{r.path}.sides[{i}][1]", -1, 1)
        counts = r.obj_at("counts")
        return cls(name=r.text("name"), a=r.point("a"), b=r.point("b"), classes=r.names("classes"),
                   margin=r.num("margin"), units=r.units(), reference=r.size("reference"), sides=sides,
                   counts={"in": counts.tally("in"), "out": counts.tally("out")})
