"""What a camera's analytics counts: its lines and zones, in pixels or in normalised 0-1 coordinates,
and the analytics settings of a deployment (docs/analytics.md, "Lines and zones").

Kept apart from split_infer/config.py (which re-exports these models), so that the geometry and its
rescaling live with the analytics that use them. Shapes are given in one of two units:

- `pixels` (the default, as before): pixels of the original frame. With the camera's
  `frame_size` given, they are pixels of a frame of that size and are rescaled to the stream's
  real size; without it they are taken as they are.
- `normalized`: 0-1 fractions of the frame's width and height, whatever its size.

`units` is set per camera and may be overridden per line or zone.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Classes that traffic analytics count (COCO names).
TRAFFIC_CLASSES = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
SHAPE_NAME = r"^[A-Za-z0-9_. -]{1,64}$"  # no ':' (it separates Redis hash fields)

Point = tuple[float, float]
Size = tuple[int, int]  # width, height


class Units(str, Enum):
    """How a line's or zone's coordinates are meant."""

    pixels = "pixels"
    normalized = "normalized"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Shape(_Strict):
    name: str = Field(pattern=SHAPE_NAME)
    classes: list[str] = Field(default_factory=lambda: list(TRAFFIC_CLASSES))
    units: Units | None = None  # None: the camera's units

    def check_units(self, units: Units, points: Sequence[Point]) -> None:
        if units is Units.normalized and any(not (0.0 <= v <= 1.0) for p in points for v in p):
            raise ValueError(f"{self.name!r}: normalized coordinates must lie in 0..1, got {list(points)}")


class LineConfig(_Shape):
    """A counting line from a to b; 'in' is the side on the left of a -> b (on screen, y down)."""

    a: Point
    b: Point
    margin: float = Field(default=8.0, ge=0)  # px beyond the line before a side counts (anti-jitter)

    @field_validator("b")
    @classmethod
    def _two_points(cls, v: Point, info: Any) -> Point:
        if tuple(info.data.get("a") or ()) == tuple(v):
            raise ValueError("a counting line needs two distinct points a and b")
        return v

    def points(self) -> list[Point]:
        return [self.a, self.b]


class ZoneConfig(_Shape):
    """A polygon zone; an object is inside by its box's bottom centre."""

    polygon: list[Point]
    margin: float = Field(default=4.0, ge=0)  # px inside to enter, outside to exit (anti-jitter)

    @field_validator("polygon")
    @classmethod
    def _at_least_triangle(cls, v: list[Point]) -> list[Point]:
        if len(v) < 3:
            raise ValueError("a zone polygon needs at least three points")
        return v

    def points(self) -> list[Point]:
        return list(self.polygon)


class AnalyticsSettings(_Strict):
    """The `analytics` section of the cloud config."""

    # Per-minute counts (per class, per line and direction) are kept in Redis this many days
    # (`GET /api/cameras/{camera}/history`, the dashboard's day view); older days expire by themselves.
    history_days: int = Field(default=7, ge=1, le=366)


class SceneMixin(_Strict):
    """The camera fields about its geometry (mixed into CameraConfig)."""

    units: Units = Units.pixels  # of its lines and zones, unless a shape says otherwise
    # The frame size its pixel coordinates were drawn on: given, pixel shapes are rescaled to the
    # stream's real size when it differs; None: pixel shapes are used as they are.
    frame_size: Size | None = None
    lines: list[LineConfig] = Field(default_factory=list)
    zones: list[ZoneConfig] = Field(default_factory=list)

    @field_validator("frame_size")
    @classmethod
    def _positive(cls, v: Size | None) -> Size | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"frame_size {list(v)} must be a positive [width, height]")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> SceneMixin:
        for kind, shapes in (("line", self.lines), ("zone", self.zones)):
            names = [s.name for s in shapes]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{kind} names must be unique per camera, got {dup} more than once")
            for s in shapes:
                s.check_units(s.units or self.units, s.points())
        return self


def check_zone_names(cameras: Sequence[Any]) -> None:
    """Zone names and camera ids share the places they appear in (MQTT topics, metrics labels,
    the dashboard), so a zone may not be named like a camera."""
    ids = {c.id for c in cameras}
    for cam in cameras:
        for zone in cam.zones:
            if zone.name in ids:
                raise ValueError(f"camera {cam.id!r}: zone name {zone.name!r} is also a camera id; "
                                 f"zone names must differ from every camera id")


def resolve(points: Sequence[Point], units: Units, reference: Size | None, frame: Size) -> list[Point]:
    """`points` in pixels of a frame of size `frame` (width, height)."""
    if units is Units.normalized:
        sx, sy = float(frame[0]), float(frame[1])
    elif reference is not None:
        sx, sy = frame[0] / reference[0], frame[1] / reference[1]
    else:
        return [(float(x), float(y)) for x, y in points]
    return [(x * sx, y * sy) for x, y in points]
