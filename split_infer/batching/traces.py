"""Arrival traces: per-camera capture and arrival times, generated with a fixed seed or read from files.

A trace is what the cloud queue sees: for every frame its camera, its capture time on the edge
and its arrival time in the cloud queue (seconds). Files:
- CSV with a header: `camera,capture_ts,arrival_ts` (`capture_ts` may be omitted for a recorded
  log of arrivals only; latency then counts from arrival).
- JSON: {"name": ..., "meta": {...}, "camera": [...], "capture_ts": [...], "arrival_ts": [...]}.

Generators (8 cameras by default) take the aggregate frame rate `rate_fps` so a trace can be
sized to a device; the benchmark sizes them to the device's batch-1 capacity (see docs):
- steady: every camera at a constant frame rate (random phase, 1 ms jitter);
- poisson: every camera a Poisson process;
- night: light Poisson traffic;
- rush: a compressed day: night (light traffic, 5% of the peak) for the first and last
  quarter, ramps, and a rush-hour peak through the middle 30%, with per-camera bursts (motion-triggered edges
  send at up to 3x), one busy camera at 3x through the peak, and short network stalls that
  deliver a camera's held frames together.
Every camera's arrivals keep its capture order (one gRPC stream per camera).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CAMERAS = 8


@dataclass
class Trace:
    name: str
    camera: np.ndarray  # str per frame
    capture_ts: np.ndarray  # float64 seconds
    arrival_ts: np.ndarray  # float64 seconds, >= capture_ts
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.camera = np.asarray(self.camera, dtype=str)
        self.capture_ts = np.asarray(self.capture_ts, dtype=np.float64)
        self.arrival_ts = np.asarray(self.arrival_ts, dtype=np.float64)
        n = len(self.camera)
        if not (len(self.capture_ts) == len(self.arrival_ts) == n):
            raise ValueError(f"trace {self.name!r}: columns differ in length")
        if n and not (np.isfinite(self.capture_ts).all() and np.isfinite(self.arrival_ts).all()):
            raise ValueError(f"trace {self.name!r}: times must be finite numbers")
        if n and (self.arrival_ts < self.capture_ts - 1e-9).any():
            raise ValueError(f"trace {self.name!r}: a frame arrives before it was captured")
        order = np.lexsort((self.capture_ts, self.arrival_ts))
        self.camera, self.capture_ts = self.camera[order], self.capture_ts[order]
        self.arrival_ts = self.arrival_ts[order]

    def __len__(self) -> int:
        return len(self.camera)

    @property
    def cameras(self) -> list[str]:
        return sorted(set(self.camera.tolist()))

    @property
    def duration_s(self) -> float:
        return float(self.arrival_ts.max() - self.arrival_ts.min()) if len(self) else 0.0

    def rate_fps(self) -> float:
        return len(self) / self.duration_s if self.duration_s else 0.0

    # -- files ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix == ".csv":
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["camera", "capture_ts", "arrival_ts"])
                for c, cap, arr in zip(self.camera.tolist(), self.capture_ts.tolist(), self.arrival_ts.tolist(),
                                       strict=True):
                    w.writerow([c, repr(cap), repr(arr)])
        elif path.suffix == ".json":
            path.write_text(json.dumps({"name": self.name, "meta": self.meta, "camera": self.camera.tolist(),
                                        "capture_ts": self.capture_ts.tolist(),
                                        "arrival_ts": self.arrival_ts.tolist()}))
        else:
            raise ValueError(f"{path}: trace files are .csv or .json")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        path = Path(path)
        if not path.exists():
            raise ValueError(f"trace file not found: {path}")
        try:
            if path.suffix == ".csv":
                with path.open(newline="") as fh:
                    rows = list(csv.DictReader(fh))
                if not rows or "camera" not in rows[0] or "arrival_ts" not in rows[0]:
                    raise ValueError("needs a header with columns camera, arrival_ts (and optionally capture_ts)")
                arr = [float(r["arrival_ts"]) for r in rows]
                cap = [float(r["capture_ts"]) if r.get("capture_ts") not in (None, "") else a
                       for r, a in zip(rows, arr, strict=True)]
                return cls(path.stem, np.asarray([r["camera"] for r in rows]), np.asarray(cap), np.asarray(arr),
                           {"source": str(path)})
            if path.suffix == ".json":
                d = json.loads(path.read_text())
                arr = d["arrival_ts"]
                return cls(d.get("name", path.stem), np.asarray(d["camera"]), np.asarray(d.get("capture_ts", arr)),
                           np.asarray(arr), d.get("meta", {}))
        except (KeyError, ValueError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a valid trace: {e}") from None
        raise ValueError(f"{path}: trace files are .csv or .json")


# -- generation -------------------------------------------------------------------------------
def _transit(rng: np.random.Generator, capture: np.ndarray, base_s: float) -> np.ndarray:
    """Edge inference + network: a per-camera base delay plus exponential jitter, in order."""
    arrival = capture + base_s + rng.exponential(0.004, size=len(capture))
    return np.maximum.accumulate(arrival) if len(arrival) else arrival


def _camera_names(n: int) -> list[str]:
    return [f"cam{i}" for i in range(n)]


def _assemble(name: str, rng: np.random.Generator, captures: list[np.ndarray], meta: dict[str, Any]) -> Trace:
    cams: list[str] = []
    cap: list[np.ndarray] = []
    arr: list[np.ndarray] = []
    for cid, c in zip(_camera_names(len(captures)), captures, strict=True):
        c = np.sort(c)
        base = rng.uniform(0.02, 0.06)  # edge extractor + encode + network, per camera
        a = _transit(rng, c, base)
        cams += [cid] * len(c)
        cap.append(c)
        arr.append(a)
    return Trace(name, np.asarray(cams), np.concatenate(cap) if cap else np.empty(0),
                 np.concatenate(arr) if arr else np.empty(0), meta)


def steady(rate_fps: float, duration_s: float = 60.0, cameras: int = DEFAULT_CAMERAS, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    fps = rate_fps / cameras
    caps = []
    for _ in range(cameras):
        t = np.arange(rng.uniform(0, 1 / fps), duration_s, 1 / fps)
        caps.append(t + rng.uniform(0, 0.001, size=len(t)))
    return _assemble("steady", rng, caps,
                     {"kind": "steady", "rate_fps": rate_fps, "duration_s": duration_s, "seed": seed})


def poisson(rate_fps: float, duration_s: float = 60.0, cameras: int = DEFAULT_CAMERAS, seed: int = 0,
            name: str = "poisson") -> Trace:
    rng = np.random.default_rng(seed)
    fps = rate_fps / cameras
    caps = []
    for _ in range(cameras):
        n = rng.poisson(fps * duration_s)
        caps.append(rng.uniform(0, duration_s, size=n))
    return _assemble(name, rng, caps, {"kind": name, "rate_fps": rate_fps, "duration_s": duration_s, "seed": seed})


def night(rate_fps: float, duration_s: float = 60.0, cameras: int = DEFAULT_CAMERAS, seed: int = 0) -> Trace:
    return poisson(rate_fps, duration_s, cameras, seed, name="night")


def rush_profile(t: np.ndarray, duration_s: float, night_level: float = 0.05) -> np.ndarray:
    """Traffic level over a compressed day: night (first and last quarter), ramps, rush-hour
    peak (1.0) through the middle 30%."""
    x = t / duration_s
    up = np.clip((x - 0.25) / 0.1, 0, 1)
    down = np.clip((0.75 - x) / 0.1, 0, 1)
    return night_level + (1 - night_level) * np.minimum(up, down)


def rush(rate_fps: float, duration_s: float = 60.0, cameras: int = DEFAULT_CAMERAS, seed: int = 0,
         burst_factor: float = 3.0, busy_factor: float = 3.0, stalls_per_camera: float = 1.0) -> Trace:
    """Rush hour: `rate_fps` is the aggregate rate at the peak before bursts and the busy camera."""
    rng = np.random.default_rng(seed)
    fps = rate_fps / cameras
    peak = burst_factor * busy_factor
    caps = []
    for cam in range(cameras):
        # bursts: on/off episodes (mean 8 s apart, 1-3 s long) where the edge sends burst_factor x
        starts = np.cumsum(rng.exponential(8.0, size=int(duration_s / 4) + 2))
        lengths = rng.uniform(1.0, 3.0, size=len(starts))
        # thinning of a Poisson process at the maximum rate
        n = rng.poisson(fps * peak * duration_s)
        t = np.sort(rng.uniform(0, duration_s, size=n))
        level = rush_profile(t, duration_s)
        in_burst = np.zeros(len(t), bool)
        for s, ln in zip(starts, lengths, strict=True):
            in_burst |= (t >= s) & (t < s + ln)
        mult = np.where(in_burst, burst_factor, 1.0)
        if cam == 0:  # the busy camera: busy_factor x while the traffic is above night level
            mult = mult * np.where(level > 0.5, busy_factor, 1.0)
        keep = rng.uniform(0, 1, size=len(t)) < level * mult / peak
        caps.append(t[keep])
    trace = _assemble("rush", rng, caps, {"kind": "rush", "rate_fps": rate_fps, "duration_s": duration_s, "seed": seed,
                                          "burst_factor": burst_factor, "busy_factor": busy_factor})
    # network stalls: a camera's frames captured in [s, s + d) are held and delivered at s + d
    cams, cap, arr = trace.camera, trace.capture_ts, trace.arrival_ts.copy()
    for cid in trace.cameras:
        for _ in range(rng.poisson(stalls_per_camera)):
            s, d = rng.uniform(0, duration_s), rng.uniform(0.1, 0.3)
            held = (cams == cid) & (arr >= s) & (arr < s + d)
            arr[held] = s + d + np.arange(held.sum()) * 1e-4
    for cid in trace.cameras:  # keep per-camera order after the stalls
        idx = np.flatnonzero(cams == cid)
        idx = idx[np.argsort(cap[idx], kind="stable")]
        arr[idx] = np.maximum.accumulate(arr[idx])
    return Trace("rush", cams, cap, arr, trace.meta | {"stalls_per_camera": stalls_per_camera})


GENERATORS = {"steady": steady, "poisson": poisson, "night": night, "rush": rush}
BURSTY = ("rush",)
