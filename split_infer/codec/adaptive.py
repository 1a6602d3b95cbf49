"""Bandwidth-adaptive temporal coding: stay within a bytes/s budget per camera.

The encoder walks a ladder of settings, best fidelity first. It measures its own rate over the
last GOP (which always holds one key frame, so key-frame bursts are counted) and steps down when
over budget, up when comfortably under. Dead-zone changes apply at once; a bit-depth change waits
for the next key frame (it changes the codes, so it needs one anyway).
"""

from __future__ import annotations

from collections import deque

from split_infer.codec.codecs import TemporalEncoder

# (bits, deadzone), roughly in order of decreasing bytes on traffic footage.
LADDER: tuple[tuple[int, int], ...] = (
    (8, 1), (8, 2), (8, 3), (7, 2), (7, 3), (6, 2), (6, 3), (5, 2), (5, 3), (4, 2), (4, 3), (3, 2), (2, 2),
)


class AdaptiveEncoder(TemporalEncoder):
    def __init__(self, budget_bps: float, fps: float = 10.0, ladder=LADDER, start: int | None = None,
                 headroom_up: float = 0.6, **kw) -> None:
        if budget_bps <= 0 or fps <= 0:
            raise ValueError("budget_bps and fps must be positive")
        self.ladder = tuple(ladder)
        self.level = len(self.ladder) // 2 if start is None else start
        bits, deadzone = self.ladder[self.level]
        super().__init__(bits=bits, deadzone=deadzone, **kw)
        self.budget_bps, self.fps, self.headroom_up = float(budget_bps), float(fps), headroom_up
        self._sizes: deque[int] = deque(maxlen=self.key_interval)
        self._hold = 0  # frames to wait after a change before judging again

    @property
    def estimated_bps(self) -> float:
        return sum(self._sizes) / max(len(self._sizes), 1) * self.fps

    def report(self) -> dict:
        return {**super().report(), "budget_bps": self.budget_bps, "estimated_bps": round(self.estimated_bps),
                "level": self.level, "target": dict(zip(("bits", "deadzone"), self.ladder[self.level]))}

    def _encode(self, tensors, key):
        if key:
            self.bits = self.ladder[self.level][0]  # switch depth exactly at a key frame
        return super()._encode(tensors, key)

    def _after(self, nbytes: int, key: bool) -> None:
        super()._after(nbytes, key)
        self._sizes.append(nbytes)
        if self._hold:
            self._hold -= 1
            return
        if len(self._sizes) < min(self.key_interval, 4):
            return
        rate = self.estimated_bps
        step = 0
        if rate > self.budget_bps and self.level < len(self.ladder) - 1:
            step = 1
        elif rate < self.headroom_up * self.budget_bps and self.level > 0 and len(self._sizes) == self.key_interval:
            step = -1
        if step:
            self.level += step
            self.deadzone = self.ladder[self.level][1]
            self._hold = max(self.key_interval // 3, 1)
