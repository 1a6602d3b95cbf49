"""Bjøntegaard delta rate between rate-quality curves, as MPEG's coding-for-machines work reports it.

A curve is a family's settings as (bytes, quality) points; quality here is detection agreement.
Each curve is first reduced to its lower convex hull in (quality, log bytes): the settings a
rational operator would use. Log bytes is interpolated over quality with a monotone piecewise
cubic (PCHIP) on each hull, and the mean log difference over the quality interval both hulls
cover (clipped to `bounds`) gives the average bitrate change at equal quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]  # (bytes, quality)


def lower_hull(points: Sequence[Point]) -> list[Point]:
    """The efficient, convex frontier: no kept point is beaten (fewer bytes, more quality) by
    another, and log bytes is convex in quality along it. Sorted by quality."""
    pts = sorted({(float(b), float(q)) for b, q in points if b > 0 and math.isfinite(q)}, key=lambda p: (p[1], p[0]))
    front: list[Point] = []  # Pareto: walking down in quality, bytes must strictly fall
    for b, q in sorted(pts, key=lambda p: (-p[1], p[0])):
        if not front or b < front[-1][0]:
            front.append((b, q))
    front.reverse()
    hull: list[Point] = []
    for b, q in front:  # monotone chain, lower hull of (q, log b)
        while len(hull) >= 2:
            (b1, q1), (b2, q2) = hull[-2], hull[-1]
            cross = (q2 - q1) * (math.log(b) - math.log(b1)) - (math.log(b2) - math.log(b1)) * (q - q1)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append((b, q))
    return hull


def _log_rate(hull: list[Point]):
    from scipy.interpolate import PchipInterpolator

    q = np.array([p[1] for p in hull])
    lr = np.log(np.array([p[0] for p in hull]))
    if len(q) == 1:
        return lambda x: np.full_like(np.asarray(x, float), lr[0])
    return PchipInterpolator(q, lr, extrapolate=False)


def bytes_at(hull: list[Point], quality: float) -> float | None:
    """Bytes the hull needs for `quality` (interpolated), or None outside its range."""
    if not hull or not hull[0][1] <= quality <= hull[-1][1]:
        return None
    return float(np.exp(_log_rate(hull)(quality))) if len(hull) > 1 else hull[0][0]


def bd_rate(test: Sequence[Point], anchor: Sequence[Point], bounds: tuple[float, float] = (0.80, 0.99),
            samples: int = 400) -> tuple[float | None, tuple[float, float] | None]:
    """(percent bytes of `test` relative to `anchor` at equal quality, negative = fewer; interval)
    or (None, None) when the hulls share less than a usable quality interval inside `bounds`."""
    ht, ha = lower_hull(test), lower_hull(anchor)
    if len(ht) < 2 or len(ha) < 2:
        return None, None
    lo = max(ht[0][1], ha[0][1], bounds[0])
    hi = min(ht[-1][1], ha[-1][1], bounds[1])
    if hi - lo < 1e-3:
        return None, None
    q = np.linspace(lo, hi, samples)
    diff = _log_rate(ht)(q) - _log_rate(ha)(q)
    return float((np.exp(np.trapezoid(diff, q) / (hi - lo)) - 1) * 100), (float(lo), float(hi))
