"""Small plane geometry on image pixels (y grows downwards)."""

from __future__ import annotations

import math

import numpy as np

Point = tuple[float, float]


def anchor(box: np.ndarray | list[float]) -> Point:
    """Bottom centre of an [x1, y1, x2, y2] box: where a vehicle or person touches the ground."""
    return (float(box[0] + box[2]) / 2.0, float(box[3]))


def side_distance(a: Point, b: Point, p: Point) -> tuple[float, float]:
    """(signed distance of p from line a-b, position t of p's projection along a->b).

    The distance is positive on the left of a->b as seen on screen (y down), t is 0 at a and 1 at b.
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy)
    px, py = p[0] - a[0], p[1] - a[1]
    # On screen (y down) the left of a->b is where the z cross product is negative.
    dist = -(dx * py - dy * px) / length
    t = (dx * px + dy * py) / (length * length)
    return dist, t


def polygon_distance(polygon: np.ndarray, p: Point) -> float:
    """Signed distance from p to the polygon's border: positive inside, negative outside."""
    n = len(polygon)
    inside = False
    best = math.inf
    x, y = p
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
        ex, ey = x2 - x1, y2 - y1
        seg2 = ex * ex + ey * ey
        t = 0.0 if seg2 == 0 else min(1.0, max(0.0, ((x - x1) * ex + (y - y1) * ey) / seg2))
        best = min(best, math.hypot(x - (x1 + t * ex), y - (y1 + t * ey)))
    return best if inside else -best
