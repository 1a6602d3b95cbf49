"""CostModel: milliseconds per batch size on this device, profiled at start-up and updated online.

The adaptive policy asks `ms(b)` for any batch size b. Sizes that were measured answer from
their (EWMA-smoothed) measurement; sizes in between are interpolated linearly; sizes beyond the
largest measured one are extrapolated along the last segment. With a single measurement the
model assumes cost grows linearly with the batch (no batching gain): batching must be *measured*
to be believed, which is what keeps a CPU worker small.

File format (JSON): {"device": "cpu: ...", "batch_ms": {"1": 41.2, "2": 80.9, ...}, ...}
Other keys (e.g. "source", "note") are kept as metadata.
"""

from __future__ import annotations

import json
import statistics
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any


class CostModel:
    def __init__(
        self,
        batch_ms: Mapping[int, float] | None = None,
        device: str = "unknown",
        alpha: float = 0.2,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"EWMA alpha must be in (0, 1], got {alpha}")
        self.device = device
        self.alpha = alpha
        self.meta: dict[str, Any] = dict(meta or {})
        self._ms: dict[int, float] = {}
        self.observations: dict[int, int] = {}  # online samples per size (profiling not counted)
        for b, ms in (batch_ms or {}).items():
            self._set(int(b), float(ms))

    def _set(self, b: int, ms: float) -> None:
        if b < 1:
            raise ValueError(f"batch size must be >= 1, got {b}")
        if not (ms > 0 and ms < float("inf")):
            raise ValueError(f"cost of batch {b} must be a positive finite number of ms, got {ms}")
        self._ms[b] = ms

    # -- queries -------------------------------------------------------------------------------
    @property
    def sizes(self) -> list[int]:
        return sorted(self._ms)

    def known(self) -> dict[int, float]:
        return {b: self._ms[b] for b in self.sizes}

    def ms(self, b: int) -> float:
        """Predicted milliseconds to run one batch of b frames."""
        if b < 1:
            raise ValueError(f"batch size must be >= 1, got {b}")
        if not self._ms:
            raise ValueError("cost model is empty: profile the device or load a cost file first")
        if b in self._ms:
            return self._ms[b]
        sizes = self.sizes
        if len(sizes) == 1:
            return self._ms[sizes[0]] * b / sizes[0]
        i = bisect_left(sizes, b)
        if i == 0:  # below the smallest measured size: scale it down linearly (no fixed cost assumed)
            return self._ms[sizes[0]] * b / sizes[0]
        if i == len(sizes):  # beyond the largest: continue the last segment, never cheaper
            lo, hi = sizes[-2], sizes[-1]
        else:
            lo, hi = sizes[i - 1], sizes[i]
        slope = (self._ms[hi] - self._ms[lo]) / (hi - lo)
        if i == len(sizes):
            slope = max(slope, 0.0)
        return self._ms[lo] + slope * (b - lo)

    def per_frame_ms(self, b: int) -> float:
        return self.ms(b) / b

    # -- online update -------------------------------------------------------------------------
    def observe(self, b: int, ms: float) -> None:
        """Fold one measured batch into the model (EWMA per batch size).

        A size's first live measurement that is off its prior (profile or file) by more than 2x
        replaces it: the prior was measured elsewhere (another device, a busy machine)."""
        prior = self._ms.get(b)
        if prior is None or (not self.observations.get(b) and not 0.5 <= ms / prior <= 2.0):
            self._set(b, ms)
        else:
            self._set(b, (1 - self.alpha) * self._ms[b] + self.alpha * ms)
        self.observations[b] = self.observations.get(b, 0) + 1

    # -- start-up profiling -------------------------------------------------------------------
    @classmethod
    def profile(
        cls,
        run_batch: Callable[[int], object],
        sizes: Iterable[int] = (1, 2, 4, 8, 16),
        warmup: int = 2,
        repeats: int = 5,
        device: str = "unknown",
        timer: Callable[[], float] = time.perf_counter,
        sync: Callable[[], object] | None = None,
        statistic: str = "median",
    ) -> CostModel:
        """Time `run_batch(b)` for each size: `warmup` untimed calls, then `repeats` timed ones.

        The cost is their median (what a worker sees), or with statistic="min" their minimum (the
        uncontended cost, on a machine shared with other work); the file records both.
        `sync` (e.g. torch.cuda.synchronize) is called before reading the clock so asynchronous
        devices are timed to completion.
        """
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        if statistic not in ("median", "min"):
            raise ValueError(f"statistic must be 'median' or 'min', got {statistic!r}")
        out: dict[int, float] = {}
        medians: dict[str, float] = {}
        minima: dict[str, float] = {}
        for b in sizes:
            for _ in range(warmup):
                run_batch(b)
            if sync:
                sync()
            samples = []
            for _ in range(repeats):
                t0 = timer()
                run_batch(b)
                if sync:
                    sync()
                samples.append((timer() - t0) * 1000.0)
            medians[str(b)], minima[str(b)] = round(statistics.median(samples), 4), round(min(samples), 4)
            out[int(b)] = statistics.median(samples) if statistic == "median" else min(samples)
        return cls(out, device=device, meta={"warmup": warmup, "repeats": repeats, "statistic": statistic,
                                             "median_ms": medians, "min_ms": minima})

    # -- files ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        batch_ms = {str(b): round(ms, 4) for b, ms in self.known().items()}
        return {**self.meta, "device": self.device, "batch_ms": batch_ms}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def from_json(cls, data: Mapping[str, Any], alpha: float = 0.2) -> CostModel:
        if not isinstance(data, Mapping) or not isinstance(data.get("batch_ms"), Mapping) or not data["batch_ms"]:
            raise ValueError('a cost file needs a non-empty "batch_ms" map, e.g. {"1": 4.0, "2": 4.6}')
        try:
            table = {int(k): float(v) for k, v in data["batch_ms"].items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f'"batch_ms" keys must be batch sizes and values milliseconds: {e}') from None
        meta = {k: v for k, v in data.items() if k not in ("device", "batch_ms")}
        return cls(table, device=str(data.get("device", "unknown")), alpha=alpha, meta=meta)

    @classmethod
    def load(cls, path: str | Path, alpha: float = 0.2) -> CostModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"cost file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        try:
            return cls.from_json(data, alpha=alpha)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def copy(self) -> CostModel:
        m = CostModel(self.known(), device=self.device, alpha=self.alpha, meta=self.meta)
        return m

    def __repr__(self) -> str:
        pts = ", ".join(f"{b}:{ms:.2f}" for b, ms in self.known().items())
        return f"CostModel({self.device!r}, ms={{{pts}}})"
