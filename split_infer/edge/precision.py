"""Choose the edge's inference precision by measurement on the device it runs on.

OpenVINO's CPU default is bf16 wherever the CPU has avx512_bf16, and on some Xeons that is slower
than f32 (issue 14). At start-up the edge times each candidate on its own device and frames:

- `f32` (`INFERENCE_PRECISION_HINT=f32`), the reference, always allowed;
- `bf16`, only where OpenVINO reports BF16 in the device's `OPTIMIZATION_CAPABILITIES`;
- `int8`, the INT8 IR exported beside the f32 one (`split-infer export --int8`: the sibling
  directory `<dir>-int8`, or `<dir>/int8`) for the same model, cut and input size.

A candidate is kept only if its fidelity is within tolerance: INT8 only by the detection agreement
recorded in its edge.json at export time (`split-infer export --int8` measures it on held-out
frames of the calibration video: split_infer/model/agreement.py), which must reach
INT8_AGREEMENT_FLOOR (0.97); an INT8 IR with no recorded agreement is excluded. bf16 by the
crossing tensors' error against f32 on the same frames, relative to f32's largest magnitude.
Every excluded candidate is logged with the reason.
The fastest kept candidate (median ms per frame after warm-up) wins. The choice and its figures
are logged and cached in `<cache>/precision/<key>.json`, keyed by device, IR contents, CPU model
and flags, OpenVINO version and threads, so the measurement runs once per machine and model.
An explicit `precision: f32|bf16|int8` skips all of this.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from split_infer.model.macs import read_cpuinfo
from split_infer.model.preprocess import letterbox
from split_infer.model.weights import cache_dir

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16", "int8")
SETTINGS = ("auto", *PRECISIONS)
# Pooled AP@0.5 against the f32 model that an INT8 IR must have reached at export (issue 14): the
# operating point where the codec keeps detections (docs/bandwidth.md), so INT8 costs no more.
INT8_AGREEMENT_FLOOR = 0.97
FEATURE_REL_TOL = {"f32": 0.0, "bf16": 0.05}  # max |a - f32| / max |f32|
WARMUP_RUNS = 3
TIMED_RUNS = 15  # per candidate: keeps start-up to a few seconds at 640x384
META_FILE = "edge.json"
IR_FILE = "edge.xml"
CACHE_VERSION = 2  # 2: INT8 needs its recorded agreement (1 admitted it by feature error)


@dataclass
class Candidate:
    name: str  # f32 | bf16 | int8
    model_dir: Path
    hint: str | None  # INFERENCE_PRECISION_HINT; None: the device's default (INT8 IRs)


@dataclass
class Measurement:
    name: str
    ms: float  # median per frame
    fidelity: float  # agreement (higher is better) or feature relative error (lower is better)
    fidelity_kind: str  # "detection_agreement@export" | "feature_rel_err"
    ok: bool
    reason: str = ""  # why it was excluded (empty when kept)


@dataclass
class Choice:
    precision: str
    model_dir: Path
    hint: str | None
    source: str  # "explicit" | "measured" | "cached"
    measurements: list[Measurement] = field(default_factory=list)

    def summary(self) -> str:
        figs = ", ".join(f"{m.name} {m.ms:.2f} ms ({m.fidelity_kind} {m.fidelity:.4f}{'' if m.ok else ' REFUSED'})"
                         for m in self.measurements)
        return f"edge precision {self.precision} ({self.source})" + (f": {figs}" if figs else "")


def cpu_info() -> dict[str, Any]:
    """CPU model and the flags that decide bf16/int8 speed (Linux /proc/cpuinfo; empty elsewhere)."""
    model, flags = platform.processor(), frozenset[str]()
    try:
        cpu = read_cpuinfo()
    except OSError:
        pass
    else:
        model = cpu.model_name if cpu.model_name != "unknown" else model
        flags = cpu.flags
    wanted = ("avx512_bf16", "amx_bf16", "amx_int8", "amx_tile", "avx512_vnni", "avx_vnni", "avx512f", "avx2")
    return {"model": model, "flags": sorted(f for f in wanted if f in flags)}


def int8_sibling(model_dir: Path) -> Path | None:
    """The INT8 IR exported beside `model_dir` for the same model, cut, size and codec, if any."""
    meta = _meta(model_dir)
    for cand in (model_dir.parent / f"{model_dir.name}-int8", model_dir / "int8"):
        other = _meta(cand) if (cand / IR_FILE).exists() else None
        if other and other.get("precision") == "int8" and all(
                other.get(k) == meta.get(k) for k in ("model", "cut", "imgsz", "outputs", "codec_model")):
            return cand
    return None


def candidates(model_dir: Path, capabilities: Sequence[str]) -> list[Candidate]:
    out = [Candidate("f32", model_dir, "f32")]
    if "BF16" in capabilities:
        out.append(Candidate("bf16", model_dir, "bf16"))
    int8 = int8_sibling(model_dir)
    if int8 is not None:
        out.append(Candidate("int8", int8, None))
    return out


def cache_key(device: str, cands: Sequence[Candidate], cpu: dict[str, Any], threads: int | None,
              ov_version: str) -> str:
    h = hashlib.sha256(json.dumps([CACHE_VERSION, device, cpu, threads, ov_version,
                                   [c.name for c in cands]]).encode())
    for c in cands:
        for name in (IR_FILE, "edge.bin"):
            path = c.model_dir / name
            h.update(path.read_bytes() if path.exists() else b"-")
    return h.hexdigest()[:24]


def choose(measurements: Sequence[Measurement]) -> Measurement:
    """The fastest candidate within tolerance (f32, the reference, always is)."""
    kept = [m for m in measurements if m.ok]
    if not kept:
        raise ValueError("no precision candidate is within tolerance")
    return min(kept, key=lambda m: m.ms)


def feature_rel_err(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    return max(float(np.abs(out[k] - ref[k]).max() / max(float(np.abs(ref[k]).max()), 1e-12)) for k in ref)


Runner = Callable[[Candidate], tuple[float, list[dict[str, np.ndarray]]]]


def int8_admission(meta: dict[str, Any]) -> tuple[float, bool, str]:
    """An INT8 IR's recorded agreement (NaN when none), whether it is admitted, and why not."""
    agreement = meta.get("agreement")
    if agreement is None:
        note = meta.get("agreement_note") or "none recorded (exported before it was measured)"
        return float("nan"), False, (f"no detection agreement in its {META_FILE}: {note}; "
                                     "re-export with split-infer export --int8 to measure it")
    value = float(agreement)
    if not value >= INT8_AGREEMENT_FLOOR:  # NaN fails too
        return value, False, f"detection agreement {value:.4f} at export is below the floor {INT8_AGREEMENT_FLOOR}"
    return value, True, ""


def fidelity(c: Candidate, outs: list[dict[str, np.ndarray]], ref: list[dict[str, np.ndarray]]
             ) -> tuple[float, str, bool, str]:
    """(value, kind, kept, reason excluded) of a candidate other than f32."""
    if c.name == "int8":
        value, ok, reason = int8_admission(_meta(c.model_dir))
        return value, "detection_agreement@export", ok, reason
    err = max(feature_rel_err(o, r) for o, r in zip(outs, ref, strict=True))
    tol = FEATURE_REL_TOL[c.name]
    ok = err <= tol
    return err, "feature_rel_err", ok, "" if ok else f"feature error {err:.4f} against f32 is above {tol}"


def measure(cands: Sequence[Candidate], run: Runner) -> list[Measurement]:
    """Time each candidate with `run` (-> median ms, outputs per frame) and judge it against f32."""
    results = {c.name: run(c) for c in cands}
    ref = results["f32"][1]
    out = []
    for c in cands:
        ms, outs = results[c.name]
        value, kind, ok, reason = (0.0, "feature_rel_err", True, "") if c.name == "f32" else fidelity(c, outs, ref)
        if not ok:
            log.info("edge precision %s excluded (%.2f ms per frame): %s", c.name, ms, reason)
        out.append(Measurement(c.name, ms, value, kind, ok, reason))
    return out


def openvino_runner(device: str, props: dict[str, Any], frames: Sequence[np.ndarray],
                    runs: int = TIMED_RUNS) -> Runner:
    """Compile each candidate on `device` and time single-frame inference (the edge's case)."""
    import openvino as ov  # heavy (seconds to import): only when a model is loaded

    core = ov.Core()

    def run(c: Candidate) -> tuple[float, list[dict[str, np.ndarray]]]:
        p = dict(props)
        if c.hint:
            p["INFERENCE_PRECISION_HINT"] = c.hint
        compiled = core.compile_model(core.read_model(c.model_dir / IR_FILE), device, p)
        req = compiled.create_infer_request()
        names = [o["name"] for o in _meta(c.model_dir)["outputs"]]
        outs = []
        for f in frames:
            res = req.infer({0: f})
            outs.append({n: np.array(res[compiled.output(n)]) for n in names})
        for _ in range(WARMUP_RUNS):
            req.infer({0: frames[0]})
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            req.infer({0: frames[i % len(frames)]})
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), outs

    return run


Frames = Sequence[np.ndarray] | Callable[[], Sequence[np.ndarray]]


def select_precision(model_dir: Path, device: str, setting: str = "auto", *, frames: Frames = (),
                     props: dict[str, Any] | None = None, threads: int | None = None,
                     capabilities: Sequence[str] | None = None, run: Runner | None = None,
                     cache: Path | None = None, ov_version: str | None = None) -> Choice:
    """The precision the edge runs at: `setting` if explicit, else measured (or cached).

    `frames`: letterboxed NCHW batches, or a function giving them (called only on a cache miss)."""
    model_dir = Path(model_dir)
    if setting not in SETTINGS:
        raise ValueError(f"precision {setting!r}: expected one of {SETTINGS}")
    if _meta(model_dir).get("precision") == "int8":  # pointed at an INT8 IR: that is the choice
        return Choice("int8", model_dir, None, "explicit")
    if setting != "auto":
        if setting == "int8":
            int8 = int8_sibling(model_dir) or (model_dir if _meta(model_dir).get("precision") == "int8" else None)
            if int8 is None:
                raise ValueError(f"precision int8: no INT8 IR beside {model_dir} (split-infer export --int8)")
            return Choice("int8", int8, None, "explicit")
        return Choice(setting, model_dir, setting, "explicit")
    if capabilities is None or ov_version is None:
        import openvino as ov  # heavy: only when a model is loaded

        core = ov.Core()
        dev = device.split(":")[0].split(".")[0]
        if dev == "AUTO" and core.available_devices == ["CPU"]:  # AUTO on a CPU-only box is the CPU
            dev = "CPU"
        capabilities = core.get_property(dev, "OPTIMIZATION_CAPABILITIES") if dev in ("CPU", "GPU") else ["FP32"]
        ov_version = ov.get_version()
    cands = candidates(model_dir, capabilities)
    key = cache_key(device, cands, cpu_info(), threads, ov_version)
    cache_file = (cache or cache_dir() / "precision") / f"{key}.json"
    by_name = {c.name: c for c in cands}
    if cache_file.exists():
        saved = json.loads(cache_file.read_text())
        if saved.get("precision") in by_name:
            c = by_name[saved["precision"]]
            choice = Choice(c.name, c.model_dir, c.hint, "cached", [Measurement(**m) for m in saved["measurements"]])
            log.info("%s", choice.summary())
            return choice
    if run is None:
        batches = frames() if callable(frames) else frames
        if not batches:
            raise ValueError("measuring the precision needs frames")
        run = openvino_runner(device, props or {}, batches)
    measurements = measure(cands, run)
    best = by_name[choose(measurements).name]
    choice = Choice(best.name, best.model_dir, best.hint, "measured", measurements)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"precision": best.name, "device": device, "cpu": cpu_info(),
                                      "threads": threads, "openvino": ov_version,
                                      "measurements": [asdict(m) for m in measurements]}, indent=2))
    log.info("%s; recorded in %s", choice.summary(), cache_file)
    return choice


def sample_frames(model_dir: Path, urls: Sequence[str], count: int = 4) -> tuple[list[np.ndarray], str]:
    """A few letterboxed NCHW frames to measure on: from the INT8 calibration video when there is
    one, else from the cameras' sources; a synthetic textured frame as the last resort."""
    meta = _meta(model_dir)
    imgsz = (int(meta["imgsz"][0]), int(meta["imgsz"][1]))
    int8 = int8_sibling(model_dir)
    sources = ([str(_meta(int8)["calibration"])] if int8 and _meta(int8).get("calibration") else []) + list(urls)
    for src in sources:
        cap = cv2.VideoCapture(int(src) if src.isdigit() else src)
        try:
            frames: list[np.ndarray] = []
            while cap.isOpened() and len(frames) < count:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(letterbox(frame, imgsz)[0][None])
        finally:
            cap.release()
        if frames:
            return frames, src
    rng = np.random.default_rng(0)
    synthetic = cv2.resize(rng.integers(0, 255, (imgsz[1] // 8, imgsz[0] // 8, 3), dtype=np.uint8), imgsz)
    return [letterbox(synthetic, imgsz)[0][None]], "synthetic"


def _meta(model_dir: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((Path(model_dir) / META_FILE).read_text()))
    except (OSError, ValueError):
        return {}
