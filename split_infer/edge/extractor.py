"""The edge feature extractor: the exported IR on OpenVINO, with nothing heavier than numpy.

This module (and `split_infer.edge` as a whole) must never import torch or ultralytics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from split_infer.model.preprocess import Letterbox, letterbox

META_FILE = "edge.json"
IR_FILE = "edge.xml"
SUPPORTED_FORMAT = 1


class ExtractorError(RuntimeError):
    pass


def check_device(device: str) -> str:
    """Pass OpenVINO device strings through, but explain the ones that no longer exist."""
    if "MYRIAD" in device.upper():
        raise ExtractorError(
            f"device {device!r}: the MYRIAD plugin (Myriad X / NCS2) was removed from OpenVINO in 2023.0; "
            "OpenVINO 2022.3 LTS is the last release with it. Use NPU (Intel Core Ultra), GPU, CPU, "
            "or AUTO (e.g. 'AUTO:NPU,CPU') instead.")
    if not device.strip():
        raise ExtractorError("empty OpenVINO device string")
    return device


class EdgeExtractor:
    """Runs the edge part of a split model. `infer(batch)` -> {"x4": array, ...}."""

    def __init__(self, model_dir: str | Path, device: str = "AUTO", precision: str | None = None,
                 config: dict | None = None):
        import openvino as ov  # heavy (seconds to import): only when a model is loaded

        model_dir = Path(model_dir)
        meta_path = model_dir / META_FILE
        if not meta_path.exists():
            raise ExtractorError(f"no exported edge model in {model_dir} (missing {META_FILE}); "
                                 "create one with `split-infer export`")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format_version") != SUPPORTED_FORMAT:
            raise ExtractorError(f"{meta_path}: format_version {self.meta.get('format_version')} is not supported")
        self.imgsz: tuple[int, int] = tuple(self.meta["imgsz"])  # width, height
        self.output_names: list[str] = [o["name"] for o in self.meta["outputs"]]
        self.device = check_device(device)
        # What it runs at: "f32"/"bf16" (the hint), the IR's own "int8", or None (the device default).
        self.precision: str | None = "int8" if self.meta.get("precision") == "int8" else precision
        core = ov.Core()
        props = dict(config or {})
        # Frames come one at a time per request: the latency hint measured 25% faster than
        # OpenVINO's default on the dynamic-batch IR (benchmarks/edge_speed.py uses it too).
        if self.device.split(":")[0] in ("CPU", "AUTO", "GPU", "NPU"):
            props.setdefault("PERFORMANCE_HINT", "LATENCY")
        if precision:  # e.g. "f32" to compare numbers; the CPU default here is bf16
            props["INFERENCE_PRECISION_HINT"] = precision
        model = core.read_model(model_dir / IR_FILE)
        try:
            self.compiled = core.compile_model(model, self.device, props)
        except RuntimeError as e:
            raise ExtractorError(f"OpenVINO could not compile the edge model on {self.device!r} "
                                 f"(available: {core.available_devices}): {e}") from None
        self._request = self.compiled.create_infer_request()
        self._outputs = {name: self.compiled.output(name) for name in self.output_names}

    def preprocess(self, frame_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        return letterbox(frame_bgr, self.imgsz)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """NCHW float32 batch -> crossing tensors, copied out of OpenVINO's buffers."""
        if batch.ndim == 3:
            batch = batch[None]
        result = self._request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return {name: np.array(result[port]) for name, port in self._outputs.items()}

    def optimal_requests(self) -> int:
        """OpenVINO's number of requests that keeps every stream of the compiled model busy."""
        try:
            return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except RuntimeError:  # a device or wrapper without the property
            return 2

    def async_queue(self, jobs: int, callback):
        """An OpenVINO AsyncInferQueue whose callback gets (outputs dict, userdata)."""
        import openvino as ov  # heavy: imported with the model, see __init__

        queue = ov.AsyncInferQueue(self.compiled, jobs)
        names = self.output_names

        def _done(request, userdata):
            callback({n: np.array(request.get_tensor(n).data) for n in names}, userdata)

        queue.set_callback(_done)
        return queue
