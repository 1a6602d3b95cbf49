"""Rolling aggregates of one camera: counts per minute per class and a congestion level.

All times are capture times (the frames' `capture_ts`), so a replay after a restart gives the
same figures as the live run. Definitions: docs/analytics.md.

The last `history_minutes` minute buckets stay here (the counts hash shows them); every bucket
changed since the last commit is also handed to the history in Redis (`take_changed`,
split_infer/analytics/history.py), which keeps them for days.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from split_infer.analytics.state import MAX_ITEMS, StateError, StateReader, items, number, pair_of, text

VEHICLES = frozenset({"car", "bus", "truck", "motorcycle"})
CONGESTION_LEVELS = ((0.25, "free"), (0.5, "moderate"), (0.75, "heavy"), (math.inf, "jammed"))


@dataclass
class Minute:
    start: int  # unix seconds, a multiple of 60
    crossings: Counter[str] = field(default_factory=Counter)
    tracks: Counter[str] = field(default_factory=Counter)
    lines: dict[str, dict[str, Counter[str]]] = field(default_factory=dict)  # line -> in/out -> class -> n

    def bucket(self) -> dict[str, Any]:
        """The minute as the history keeps it (docs/analytics.md, "History")."""
        return {"crossings": dict(self.crossings), "tracks": dict(self.tracks),
                "lines": {name: {d: dict(c) for d, c in dirs.items()} for name, dirs in self.lines.items()}}

    def lines_state(self) -> list[list[Any]]:
        return [[name, d, [[c, n] for c, n in per_class.items()]]
                for name, dirs in self.lines.items() for d, per_class in dirs.items()]


@dataclass
class Aggregates:
    history_minutes: int = 60
    window_s: float = 60.0
    capacity: float = 10.0  # vehicles that make the area "full"
    free_speed: float = 1.0  # box heights per second: at or above, traffic flows freely
    smoothing_s: float = 5.0
    minutes: deque[Minute] = field(default_factory=deque)
    recent_crossings: deque[tuple[float, str]] = field(default_factory=deque)
    recent_tracks: deque[tuple[float, str]] = field(default_factory=deque)
    score: float = 0.0
    level: str = "empty"
    vehicles: int = 0
    median_speed: float = 0.0
    _last_ts: float | None = None
    changed: dict[int, Minute] = field(default_factory=dict)  # minute start -> bucket, since take_changed

    def _minute(self, ts: float) -> Minute:
        start = int(ts // 60) * 60
        if not self.minutes or self.minutes[-1].start < start:
            self.minutes.append(Minute(start))
            while len(self.minutes) > self.history_minutes + 1:  # + the current, unfinished one
                self.minutes.popleft()
        return self.minutes[-1]

    def crossing(self, ts: float, class_name: str, line: str | None = None, direction: str | None = None) -> None:
        m = self._minute(ts)
        m.crossings[class_name] += 1
        if line is not None and direction is not None:
            m.lines.setdefault(line, {}).setdefault(direction, Counter())[class_name] += 1
        self.changed[m.start] = m
        self.recent_crossings.append((ts, class_name))

    def new_track(self, ts: float, class_name: str) -> None:
        m = self._minute(ts)
        m.tracks[class_name] += 1
        self.changed[m.start] = m
        self.recent_tracks.append((ts, class_name))

    def take_changed(self) -> list[Minute]:
        """The minute buckets changed since the last call (a bucket past the in-memory window included)."""
        out = sorted(self.changed.values(), key=lambda m: m.start)
        self.changed = {}
        return out

    def per_minute(self, now: float, basis: str) -> Counter[str]:
        """Objects counted in the last `window_s` seconds, by class."""
        for q in (self.recent_crossings, self.recent_tracks):
            while q and q[0][0] <= now - self.window_s:
                q.popleft()
        q = self.recent_crossings if basis == "crossings" else self.recent_tracks
        return Counter(c for _, c in q)

    def congestion(self, now: float, speeds: list[float]) -> None:
        """Update the smoothed congestion score from the vehicles in the area now and their speeds."""
        self._minute(now)
        self.vehicles = len(speeds)
        self.median_speed = float(sorted(speeds)[len(speeds) // 2]) if speeds else 0.0
        density = min(1.0, self.vehicles / self.capacity)
        slowness = 1.0 - min(1.0, self.median_speed / self.free_speed) if speeds else 0.0
        raw = density * (0.5 + 0.5 * slowness)
        dt = 0.0 if self._last_ts is None else max(0.0, now - self._last_ts)
        alpha = 1.0 if self._last_ts is None else 1.0 - math.exp(-dt / self.smoothing_s)
        self.score += alpha * (raw - self.score)
        self._last_ts = now
        if self.vehicles == 0 and self.score < 0.05:
            self.level = "empty"
        else:
            self.level = next(name for limit, name in CONGESTION_LEVELS if self.score < limit)

    def to_state(self) -> dict[str, Any]:
        """Checkpoint JSON (docs/analytics.md): the running figures; the settings are the code's."""
        return {"minutes": [{"start": m.start, "crossings": [[c, n] for c, n in m.crossings.items()],
                             "tracks": [[c, n] for c, n in m.tracks.items()], "lines": m.lines_state()}
                            for m in self.minutes],
                "recent_crossings": [[ts, c] for ts, c in self.recent_crossings],
                "recent_tracks": [[ts, c] for ts, c in self.recent_tracks],
                "score": self.score, "level": self.level, "vehicles": self.vehicles,
                "median_speed": self.median_speed, "last_ts": self._last_ts}

    @classmethod
    def from_state(cls, r: StateReader) -> Aggregates:
        agg = cls()
        for m in r.objects("minutes", agg.history_minutes + 1):
            minute = Minute(m.whole("start"), m.tally("crossings"), m.tally("tracks"))
            for i, entry in enumerate(items(m.obj.get("lines", []), f"{m.path}.lines", MAX_ITEMS)):
                at = f"{m.path}.lines[{i}]"
                row = items(entry, at, 3)
                if len(row) != 3:
                    raise StateError(f"{at} is not [line, direction, [[class, n], ...]]")
                direction = text(row[1], f"{at}[1]")
                if direction not in ("in", "out"):
                    raise StateError(f"{at}[1] is not 'in' or 'out'")
                tally = StateReader({"t": row[2]}, at).tally("t")
                minute.lines.setdefault(text(row[0], f"{at}[0]"), {})[direction] = tally
            agg.minutes.append(minute)
        for name, queue in (("recent_crossings", agg.recent_crossings), ("recent_tracks", agg.recent_tracks)):
            for i, pair in enumerate(r.array(name, MAX_ITEMS)):
                ts, cls_name = pair_of(pair, f"{r.path}.{name}[{i}]")
                queue.append((number(ts, f"{r.path}.{name}[{i}][0]"), text(cls_name, f"{r.path}.{name}[{i}][1]")))
        agg.score, agg.level = r.num("score"), r.text("level")
        agg.vehicles, agg.median_speed = r.whole("vehicles", 0), r.num("median_speed")
        agg._last_ts = r.opt_num("last_ts")
        return agg

    def restart_clock(self, ts: float) -> None:
        """Time went back to `ts` (docs/analytics.md, "Time"): forget what is dated after it."""
        while self.minutes and self.minutes[-1].start > ts:
            gone = self.minutes.pop()
            gone.crossings, gone.tracks, gone.lines = Counter(), Counter(), {}
            self.changed[gone.start] = gone  # its history bucket is emptied too
        self.recent_crossings.clear()
        self.recent_tracks.clear()
        self._last_ts = None

    def history(self) -> list[dict]:
        return [{"minute": m.start, "crossings": dict(m.crossings), "tracks": dict(m.tracks)} for m in self.minutes]
