"""The cloud head: the layers after the cut, on torch (CUDA when present) or OpenVINO (CPU).

`Head.detect(features, letterboxes)` takes a batch of crossing tensors and returns detections in
original-frame pixels, one list per frame. The runtime is chosen once: `auto` picks torch on a
CUDA GPU and OpenVINO on a CPU (faster there, see benchmarks/edge_speed.py). Below it, the
factories the worker loads its head with (`--head module:factory`, default `yolo_head`).
"""

from __future__ import annotations

import functools
import importlib
import logging
import statistics
import time
from collections.abc import Callable

import numpy as np

from split_infer.batching import CostModel
from split_infer.config import CloudConfig
from split_infer.model.postprocess import non_max_suppression, to_records
from split_infer.model.preprocess import Letterbox

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "openvino")


class Head:
    def __init__(self, model: str = "yolov5s", cut: int = 4, imgsz: tuple[int, int] = (640, 384),
                 runtime: str = "auto", conf: float = 0.25, iou: float = 0.45, precision: str | None = None,
                 threads: int | None = None):
        # torch (the cloud extra), also under the partition: heavy, so loaded only with a head
        import torch

        from split_infer.model.loading import load_model
        from split_infer.model.partition import crossing_shapes, partition

        if runtime not in RUNTIMES:
            raise ValueError(f"head runtime must be one of {RUNTIMES}, got {runtime!r}")
        self.model_name, self.cut, self.conf, self.iou = model, cut, conf, iou
        self.imgsz = (imgsz[0], imgsz[1])
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
        import openvino as ov  # heavy: only for the OpenVINO runtime
        import torch  # heavy (the cloud extra)

        names = self.input_names
        cloud = self.cloud

        class _Positional(torch.nn.Module):  # OpenVINO converts positional inputs; names are set after
            def __init__(self):
                super().__init__()
                self.cloud = cloud

            def forward(self, *xs):
                return self.cloud(dict(zip(names, xs, strict=True)))

        with torch.no_grad():
            feats = self.feature_shapes
            example = tuple(torch.zeros(1, *feats[n]) for n in names)
            ov_model = ov.convert_model(_Positional().eval(), example_input=example,
                                        input=[(-1, *feats[n]) for n in names])
        for port, name in zip(ov_model.inputs, names, strict=True):
            port.get_tensor().set_names({name})
        props: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = self.threads
        return ov.Core().compile_model(ov_model, "CPU", props)

    def raw(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """Raw predictions as rows [B, N, C] (YOLOv5: xywh, obj, classes; anchor-free: xywh, classes)."""
        missing = [n for n in self.input_names if n not in feats]
        if missing:
            raise ValueError(f"features lack {missing}; this head (cut {self.cut}) needs {self.input_names}")
        if self.runtime == "torch":
            import torch  # heavy (the cloud extra), only on the torch runtime

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
                for r, lb in zip(raw, letterboxes, strict=True)]


@functools.lru_cache(maxsize=8)
def feature_shapes(model: str, cut: int, imgsz: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch) of the tensors crossing `cut` of `model` at WIDTHxHEIGHT `imgsz`."""
    # torch (the cloud extra), under the partition: heavy, so loaded only when asked
    from split_infer.model.loading import load_model
    from split_infer.model.partition import crossing_shapes

    return crossing_shapes(load_model(model), cut, imgsz)


# -- the worker's head factories ------------------------------------------------------------------

# head(features batched on axis 0, [(width, height)] per frame) -> detections per frame, each a
# dict of records.DetectedObject's JSON form (class_id, class_name, score, box)
HeadFn = Callable[[dict[str, np.ndarray], list[tuple[int, int]]], list[list[dict]]]


def config_shapes(cfg: CloudConfig) -> dict[str, tuple[int, ...]]:
    """Per-frame shapes of the tensors crossing the configured cut (a dry run of the edge part, cached)."""
    m = cfg.model
    return feature_shapes(m.name, m.cut, m.imgsz)


def yolo_head(cfg: CloudConfig) -> HeadFn:
    """The core's detection head for `cfg.model`, on `cfg.head_runtime` (auto: CUDA torch, else OpenVINO)."""
    m = cfg.model
    head = fastest_head(cfg) if cfg.head_runtime == "auto" else make_head(cfg, cfg.head_runtime)
    log.info("head: %s cut %d imgsz %s on %s (%s)", m.name, m.cut, m.imgsz, head.runtime, head.device)

    def run(feats: dict[str, np.ndarray], sizes: list[tuple[int, int]]) -> list[list[dict]]:
        return head.detect(feats, [Letterbox.fit(w, h, *m.imgsz) for w, h in sizes])

    run.head = head  # type: ignore[attr-defined]
    return run


def make_head(cfg: CloudConfig, runtime: str) -> Head:
    m = cfg.model
    return Head(m.name, m.cut, m.imgsz, runtime=runtime, conf=m.conf, iou=m.iou,
                threads=cfg.worker.head_threads)


def fastest_head(cfg: CloudConfig, repeats: int = 3) -> Head:
    """auto: torch on a CUDA GPU; on a CPU whichever of torch and OpenVINO runs this head faster
    (median of `repeats` batch-1 runs after a warm-up); the slower one is discarded."""
    import torch  # optional heavy dependency (the cloud extra)

    if torch.cuda.is_available():
        return make_head(cfg, "torch")
    best, best_s, times = None, float("inf"), {}
    feats = {k: np.zeros((1, *v), np.float32) for k, v in config_shapes(cfg).items()}
    for rt in ("torch", "openvino"):
        head = make_head(cfg, rt)
        head.raw(feats)  # warm-up
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            head.raw(feats)
            samples.append(time.perf_counter() - t0)
        times[rt] = statistics.median(samples)
        if times[rt] < best_s:
            best, best_s = head, times[rt]
    assert best is not None
    log.info("head runtime auto: %s (batch 1: %s)", best.runtime,
             ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in times.items()))
    return best


def load_head(spec: str, cfg: CloudConfig) -> HeadFn:
    """`module:factory`; the factory receives the CloudConfig and returns the head callable."""
    mod, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(mod), attr or "make_head")
    return factory(cfg)


def profile_head(cfg: CloudConfig, head: HeadFn) -> CostModel:
    """Time the head on zero features for each profile size (the CostModel then learns online)."""
    m = cfg.model
    shapes = config_shapes(cfg)
    sizes = [b for b in cfg.worker.profile_sizes if b <= cfg.worker.max_batch] or [1]

    def run(b: int) -> None:
        head({k: np.zeros((b, *s), np.float32) for k, s in shapes.items()}, [m.imgsz] * b)

    t0 = time.perf_counter()
    cost = CostModel.profile(run, sizes=sizes, warmup=1, repeats=3, device=f"head {m.name} cut {m.cut}")
    log.info("profiled the head in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(f"b={b}: {cost.ms(b):.1f} ms" for b in cost.sizes))
    return cost
