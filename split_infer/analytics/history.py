"""Per-minute counts kept by time: one Redis hash per camera and UTC day, expiring by itself.

Each minute bucket (split_infer/analytics/aggregates.py, `Minute.bucket`) is written under its
minute's start whenever it changes, in the same MULTI/EXEC as the analytics checkpoint, so a
replay after a crash rewrites the same figures (HSET overwrites, it never adds). A day's hash
expires `history_days` after the day ends: retention is by time, not by entry count.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from split_infer.analytics.aggregates import Minute
from split_infer.keys import Keys

DAY_S = 86_400


def day_of(ts: float) -> str:
    """The UTC day (YYYYMMDD) that unix time `ts` falls on."""
    return time.strftime("%Y%m%d", time.gmtime(ts))


def days_between(start: float, end: float) -> list[str]:
    """The UTC days that [start, end] touches, oldest first."""
    first = int(start // DAY_S)
    return [day_of(d * DAY_S) for d in range(first, int(end // DAY_S) + 1)]


def write_minutes(pipe: Any, keys: Keys, camera: str, minutes: Iterable[Minute], history_days: int) -> None:
    """Queue the writes of `minutes` on `pipe` (a redis-py pipeline)."""
    expiries: dict[str, int] = {}
    for m in minutes:
        day = day_of(m.start)
        pipe.hset(keys.history(camera, day), str(m.start), json.dumps(m.bucket(), separators=(",", ":")))
        expiries[day] = (m.start // DAY_S + 1 + history_days) * DAY_S
    for day, at in expiries.items():
        pipe.expireat(keys.history(camera, day), at)
