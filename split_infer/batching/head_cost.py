"""Time the cloud head per batch size, for CostModel.profile (torch is imported lazily).

`head_runner()` splits the real model with the core (`split_infer.model.loading.load_model` +
`split_infer.model.partition.partition`) and returns `run_batch(b)`, which runs the cloud part on edge
features of a random batch of `b` frames, plus a description for the cost file's "source" field.
"""

from __future__ import annotations

from collections.abc import Callable

from split_infer.model.loading import load_model


def head_runner(device: str = "cpu", cut: int = 4, imgsz: tuple[int, int] = (640, 384),
                model_name: str = "yolov5s") -> tuple[Callable[[int], None], str]:
    """Return (run_batch(b), description). Edge features for each size are computed once."""
    import torch  # optional heavy dependency (the cloud extra), as is partition, built on it

    from split_infer.model.partition import partition

    edge, cloud = partition(load_model(model_name), cut)
    edge, cloud = edge.to(device).eval(), cloud.to(device).eval()
    w, h = imgsz
    cache: dict[int, dict[str, torch.Tensor]] = {}

    @torch.inference_mode()
    def run_batch(b: int) -> None:
        if b not in cache:
            cache[b] = edge(torch.rand(b, 3, h, w, device=device))
        cloud(cache[b])

    return run_batch, f"real head: split_infer {model_name} cut {cut}"
