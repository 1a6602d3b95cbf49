"""Bandwidth-adaptive coding: stay within a bytes/s budget per camera.

The encoder walks a ladder of settings, best fidelity first. It measures its own rate over the
last GOP (which always holds one key frame, so key-frame bursts are counted) and steps down when
over budget, up when comfortably under. A dead-zone change applies at once; a change of bit
depth (training-free) or latent step (learned) waits for the next key frame, since it changes
the codes' meaning. `report()` says what it chose and the rate it measures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from split_infer.codec.codecs import TemporalEncoder, Tensors
from split_infer.codec.learned import LearnedEncoder
from split_infer.codec.wire import CodecParams, TensorRecord

# Roughly in order of decreasing bytes on traffic footage.
TEMPORAL_LADDER: tuple[CodecParams, ...] = tuple(dict(bits=b, deadzone=d) for b, d in (
    (8, 1), (8, 2), (8, 3), (7, 2), (7, 3), (6, 2), (6, 3), (5, 2), (5, 3), (4, 2), (4, 3), (3, 2), (2, 2)))
LEARNED_LADDER: tuple[CodecParams, ...] = tuple(dict(step=s, deadzone=d) for s, d in (
    (1.0, 1), (1.0, 2), (1.5, 1), (1.5, 2), (2.0, 2), (3.0, 2), (4.0, 2), (6.0, 2)))


class _Adaptive(TemporalEncoder):
    """Over a temporal-style encoder (first in the bases): picks the ladder rung that fits the budget."""

    def _setup(self, budget_bps: float, fps: float, ladder: Sequence[CodecParams], start: int | None,
               headroom_up: float) -> None:
        if budget_bps <= 0 or fps <= 0:
            raise ValueError("budget_bps and fps must be positive")
        self.ladder = tuple(ladder)
        self.level = len(self.ladder) // 2 if start is None else start  # the ladder rung (not zstd's level)
        self.budget_bps, self.fps, self.headroom_up = float(budget_bps), float(fps), headroom_up
        self._sizes: deque[int] = deque(maxlen=self.key_interval)
        self._hold = 0  # frames to wait after a change before judging again
        self._apply(key=True)

    def _apply(self, key: bool) -> None:
        for name, value in self.ladder[self.level].items():
            if key or name == "deadzone":
                setattr(self, name, value)

    @property
    def estimated_bps(self) -> float:
        return sum(self._sizes) / max(len(self._sizes), 1) * self.fps

    def report(self) -> dict[str, Any]:
        return {**super().report(), "budget_bps": self.budget_bps, "estimated_bps": round(self.estimated_bps),
                "level": self.level, "target": dict(self.ladder[self.level])}

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        if key:
            self._apply(key=True)
        return super()._encode(tensors, key)

    def _after(self, nbytes: int, key: bool) -> None:
        super()._after(nbytes, key)
        self._sizes.append(nbytes)
        if self._hold:
            self._hold -= 1
            return
        if len(self._sizes) < min(self.key_interval, 4):
            return
        rate, step = self.estimated_bps, 0
        if rate > self.budget_bps and self.level < len(self.ladder) - 1:
            # far over budget: skip rungs (each saves roughly 10-15%), so a start at the top settles in
            # a few holds instead of one rung per hold
            step = min(1 + int(rate > 1.3 * self.budget_bps) + int(rate > 2 * self.budget_bps),
                       len(self.ladder) - 1 - self.level)
        elif rate < self.headroom_up * self.budget_bps and self.level > 0 and len(self._sizes) == self.key_interval:
            step = -1
        if step:
            self.level += step
            self._apply(key=False)
            self._hold = max(self.key_interval // 3, 1)


class AdaptiveEncoder(_Adaptive):
    def __init__(self, budget_bps: float, fps: float = 10.0, ladder: Sequence[CodecParams] = TEMPORAL_LADDER,
                 start: int | None = None, headroom_up: float = 0.6, **kw: Any) -> None:
        TemporalEncoder.__init__(self, **{**kw, **ladder[0]})
        self._setup(budget_bps, fps, ladder, start, headroom_up)


class AdaptiveLearnedEncoder(_Adaptive, LearnedEncoder):
    def __init__(self, path: str, budget_bps: float, fps: float = 10.0,
                 ladder: Sequence[CodecParams] = LEARNED_LADDER, start: int | None = None, headroom_up: float = 0.6,
                 **kw: Any) -> None:
        LearnedEncoder.__init__(self, path, **{**kw, **ladder[0]})
        self._setup(budget_bps, fps, ladder, start, headroom_up)
