"""Time the cloud head per batch size, for CostModel.profile (torch is imported lazily).

`head_runner()` prefers the real head: the core's `split_infer.models.load_model` +
`split_infer.partition.partition(model, cut)`, run on edge features of a random letterboxed
batch. When the core is not importable it falls back to a clearly labelled stand-in: the
YOLOv5s architecture built by ultralytics from its yaml (random weights, same layers), split at
the same layer index. Either way the caller gets `run_batch(b)` plus a description string that
goes into the cost file's "device"/"source" fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _core_head(model_name: str, cut: int, device: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any], str]:
    from split_infer.models import load_model  # type: ignore[import-not-found]
    from split_infer.partition import partition  # type: ignore[import-not-found]

    model = load_model(model_name)
    edge, cloud = partition(model, cut)
    edge, cloud = edge.to(device).eval(), cloud.to(device).eval()
    return edge, cloud, f"real head: split_infer {model_name} cut {cut}"


def _ultralytics_head(cut: int, device: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any], str]:
    """Stand-in: ultralytics' YOLOv5s graph (random weights) split after layer `cut`."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel("yolov5s.yaml", nc=80, verbose=False).to(device).eval()
    layers = list(model.model)

    def run(x: Any, lo: int, hi: int, saved: dict[int, Any]) -> Any:
        for m in layers[lo:hi]:
            if m.f != -1:
                x = saved[m.f] if isinstance(m.f, int) else [x if j == -1 else saved[j] for j in m.f]
            x = m(x)
            saved[m.i] = x
        return x

    def edge(x: torch.Tensor) -> dict[int, Any]:
        saved: dict[int, Any] = {}
        run(x, 0, cut + 1, saved)
        return saved

    def cloud(saved: dict[int, Any]) -> Any:
        saved = dict(saved)
        return run(saved[cut], cut + 1, len(layers), saved)

    return edge, cloud, f"FALLBACK stand-in: ultralytics yolov5s.yaml graph, random weights, layers {cut + 1}.. (the core head was not used)"


def head_runner(
    device: str = "cpu", cut: int = 4, imgsz: tuple[int, int] = (640, 384), model_name: str = "yolov5s", prefer_core: bool = True
) -> tuple[Callable[[int], None], str]:
    """Return (run_batch(b), description). Edge features for each size are computed once."""
    import torch

    source = None
    if prefer_core:
        try:
            edge, cloud, source = _core_head(model_name, cut, device)
        except ImportError:
            source = None
    if source is None:
        edge, cloud, source = _ultralytics_head(cut, device)
    w, h = imgsz
    cache: dict[int, Any] = {}

    @torch.inference_mode()
    def run_batch(b: int) -> None:
        if b not in cache:
            cache[b] = edge(torch.rand(b, 3, h, w, device=device))
        cloud(cache[b])

    return run_batch, source
