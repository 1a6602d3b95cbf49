"""The cloud head: the layers after the cut, on torch (CUDA when present) or OpenVINO (CPU).

`Head.detect(features, letterboxes)` takes a batch of crossing tensors and returns detections in
original-frame pixels, one list per frame. The runtime is chosen once: `auto` picks torch on a
CUDA GPU and OpenVINO on a CPU (faster there, see benchmarks/edge_speed.py).
"""

from __future__ import annotations

import functools

import numpy as np

from split_infer.model.postprocess import non_max_suppression, to_records
from split_infer.model.preprocess import Letterbox

RUNTIMES = ("auto", "torch", "openvino")


class Head:
    def __init__(self, model: str = "yolov5s", cut: int = 4, imgsz: tuple[int, int] = (640, 384),
                 runtime: str = "auto", conf: float = 0.25, iou: float = 0.45, precision: str | None = None,
                 threads: int | None = None):
        import torch

        from split_infer.model.loading import load_model
        from split_infer.model.partition import crossing_shapes, partition

        if runtime not in RUNTIMES:
            raise ValueError(f"head runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.model_name, self.cut, self.imgsz, self.conf, self.iou = model, cut, tuple(imgsz), conf, iou
        net = load_model(model)
        self.names = dict(net.names)
        self.feature_shapes = crossing_shapes(net, cut, self.imgsz)
        _, self.cloud = partition(net, cut)
        self.input_names = self.cloud.input_names
        if runtime == "auto":
            runtime = "torch" if torch.cuda.is_available() else "openvino"
        self.runtime = runtime
        self.threads = threads  # CPU threads; None = the runtime's default (every core)
        if runtime == "torch":
            if threads:
                torch.set_num_threads(threads)  # process-wide: the head is the worker's only torch user
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            self.cloud.to(self.device)
        else:
            self.device = "CPU"
            self._compiled = self._compile_openvino(precision)

    def _compile_openvino(self, precision: str | None):
        import openvino as ov
        import torch

        names = self.input_names
        cloud = self.cloud

        class _Positional(torch.nn.Module):  # OpenVINO converts positional inputs; names are set after
            def __init__(self):
                super().__init__()
                self.cloud = cloud

            def forward(self, *xs):
                return self.cloud(dict(zip(names, xs)))

        with torch.no_grad():
            feats = self.feature_shapes
            example = tuple(torch.zeros(1, *feats[n]) for n in names)
            ov_model = ov.convert_model(_Positional().eval(), example_input=example,
                                        input=[(-1, *feats[n]) for n in names])
        for port, name in zip(ov_model.inputs, names):
            port.get_tensor().set_names({name})
        props = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = self.threads
        return ov.Core().compile_model(ov_model, "CPU", props)

    def raw(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """Raw predictions as rows [B, N, C] (YOLOv5: xywh, obj, classes; anchor-free: xywh, classes)."""
        missing = [n for n in self.input_names if n not in feats]
        if missing:
            raise ValueError(f"features lack {missing}; this head (cut {self.cut}) needs {self.input_names}")
        if self.runtime == "torch":
            import torch

            with torch.no_grad():
                out = self.cloud({n: torch.from_numpy(np.asarray(feats[n], np.float32)).to(self.device)
                                  for n in self.input_names}).float().cpu().numpy()
        else:
            out = self._compiled({n: np.asarray(feats[n], np.float32) for n in self.input_names})[0]
        # Anchor-free ultralytics heads give [B, C, N]; YOLOv5 gives [B, N, C].
        return out.transpose(0, 2, 1) if out.shape[1] < out.shape[2] else out

    def detect(self, feats: dict[str, np.ndarray], letterboxes: list[Letterbox]) -> list[list[dict]]:
        raw = self.raw(feats)
        if len(raw) != len(letterboxes):
            raise ValueError(f"{len(raw)} frames of features but {len(letterboxes)} letterboxes")
        objectness = raw.shape[2] == len(self.names) + 5
        return [to_records(non_max_suppression(r, self.conf, self.iou, objectness), lb, self.names)
                for r, lb in zip(raw, letterboxes)]


@functools.lru_cache(maxsize=8)
def feature_shapes(model: str, cut: int, imgsz: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch) of the tensors crossing `cut` of `model` at WIDTHxHEIGHT `imgsz`."""
    from split_infer.model.loading import load_model
    from split_infer.model.partition import crossing_shapes

    return crossing_shapes(load_model(model), cut, tuple(imgsz))
