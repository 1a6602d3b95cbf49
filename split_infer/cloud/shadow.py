"""A canary worker's shadow: on a sampled share of its frames, the stable model runs on the same
received features, and the canary's detections are scored against the stable model's.

The measure is the pooled F1 of matched boxes over a rolling window of shadowed frames: a canary
box matches an unmatched stable box of the same class at IoU >= `match_iou` (greedy, highest
canary score first), and F1 = 2 TP / (2 TP + FP + FN) over the window. It is the measure of
benchmarks/evaluation.py's `f1_score`, over every class (tests/test_canary.py checks the two agree);
AP is not usable here because the worker keeps only the boxes above its confidence threshold.
A window where neither model found anything agrees fully (1.0).

Exported per canary worker (docs/canary.md):
  splitinfer_shadow_agreement_ratio{model_version, stable_version}  the window's F1 (gauge)
  splitinfer_shadow_frames_total{model_version}                     frames shadowed (counter)
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from split_infer import metrics
from split_infer.cloud.head import HeadFn
from split_infer.model.agreement import greedy_hits

log = logging.getLogger(__name__)

Detections = Sequence[dict]  # one frame's detections, records.DetectedObject's JSON form


@dataclass(frozen=True)
class MatchCounts:
    """Matched (tp), canary-only (fp) and stable-only (fn) boxes of some frames."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def __sub__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp - other.tp, self.fp - other.fp, self.fn - other.fn)

    @property
    def f1(self) -> float:
        errors = self.fp + self.fn
        return 1.0 if self.tp + errors == 0 else 2 * self.tp / (2 * self.tp + errors)


def match_counts(stable: Detections, canary: Detections, iou: float = 0.5) -> MatchCounts:
    """Class-aware greedy matching of one frame's canary boxes to its stable boxes."""
    tp = fp = fn = 0
    for name in {d["class_name"] for d in stable} | {d["class_name"] for d in canary}:
        ref = np.array([d["box"] for d in stable if d["class_name"] == name], np.float64).reshape(-1, 4)
        box = np.array([[*d["box"], float(d["score"])] for d in canary if d["class_name"] == name],
                       np.float64).reshape(-1, 5)
        hits = int(greedy_hits(box, ref, iou).sum())
        tp, fp, fn = tp + hits, fp + len(box) - hits, fn + len(ref) - hits
    return MatchCounts(tp, fp, fn)


class RollingAgreement:
    """Pooled F1 over the last `window` frames' match counts."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"the agreement window needs at least one frame, got {window}")
        self._frames: deque[MatchCounts] = deque(maxlen=window)
        self._sum = MatchCounts()

    def add(self, counts: MatchCounts) -> None:
        if len(self._frames) == self._frames.maxlen:
            self._sum = self._sum - self._frames[0]
        self._frames.append(counts)
        self._sum = self._sum + counts

    @property
    def frames(self) -> int:
        return len(self._frames)

    @property
    def value(self) -> float | None:
        """The window's F1; None before the first frame."""
        return self._sum.f1 if self._frames else None


class Shadow:
    """Runs `stable` (the stable model, its codec model included) on a sample of the frames the
    canary ran on, and publishes the agreement. The features given to `observe` are the received
    ones, before the canary's own codec model."""

    def __init__(self, stable: HeadFn, model_version: str, stable_version: str, sample_ratio: float = 0.05,
                 window: int = 200, match_iou: float = 0.5, seed: int | None = None) -> None:
        if not 0 < sample_ratio <= 1:
            raise ValueError(f"sample_ratio must be in (0, 1], got {sample_ratio}")
        if not 0 < match_iou <= 1:
            raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
        self.stable, self.model_version, self.stable_version = stable, model_version, stable_version
        self.sample_ratio, self.match_iou = sample_ratio, match_iou
        self.agreement = RollingAgreement(window)
        self.failures = 0
        self._rng = random.Random(seed)  # nosec B311: sampling frames, not security

    def observe(self, feats: dict[str, np.ndarray], sizes: list[tuple[int, int]],
                canary: Sequence[Detections]) -> int:
        """Shadow a sampled share of this batch; returns how many frames were shadowed."""
        if len(canary) != len(sizes):
            raise ValueError(f"{len(canary)} detection lists for {len(sizes)} frames")
        picked = [i for i in range(len(sizes)) if self._rng.random() < self.sample_ratio]
        if not picked:
            return 0
        try:
            stable = self.stable({k: v[picked] for k, v in feats.items()}, [sizes[i] for i in picked])
        except Exception as e:  # the canary's records are written already: a shadow failure costs only data
            self.failures += 1
            if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
                log.warning("the stable model failed on %d shadowed frame(s) (%d failures so far): %s: %s",
                            len(picked), self.failures, type(e).__name__, e)
            return 0
        if len(stable) != len(picked):
            raise RuntimeError(f"the stable model returned {len(stable)} results for {len(picked)} frames")
        for i, ref in zip(picked, stable, strict=True):
            self.agreement.add(match_counts(ref, canary[i], self.match_iou))
        metrics.SHADOW_FRAMES.labels(self.model_version).inc(len(picked))
        value = self.agreement.value
        if value is not None:
            metrics.SHADOW_AGREEMENT.labels(self.model_version, self.stable_version).set(value)
        return len(picked)
