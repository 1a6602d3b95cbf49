"""Model loading for every YOLO family the project splits.

`load_model(spec)` accepts:
* `yolov5s` (or n/m/l/x with a cached conversion): the converted COCO YOLOv5s (`split-infer weights pull yolov5s`);
* a YOLOv5-repository checkpoint path (`yolov5n.pt`), loaded without that repository's code;
* an ultralytics model yaml (`yolov8n.yaml`, `yolo11n.yaml`, `yolov5su.yaml`; random init) or `.pt` file.
All of them expose `model.model` (the layer list with `.i` and `.f`) and `model.names`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from split_infer.model import weights
from split_infer.model.names import COCO_NAMES

__all__ = ["COCO_NAMES", "load_model"]


def load_model(spec: str | Path, fused: bool = True) -> Any:
    """The model, in eval mode: a torch module whose `.model` is its layer list (see the module doc)."""
    import torch  # optional heavy dependency (the cloud extra), as is yolov5, built on it

    from split_infer.model.yolov5 import SIZES, build_yolov5

    spec_str = str(spec)
    name = Path(spec_str).name
    if spec_str in {f"yolov5{s}" for s in SIZES}:
        path = weights.converted_path(spec_str)
        if not path.exists():
            raise weights.WeightsError(f"{spec_str} weights are not in the cache ({path}); "
                                       f"run `split-infer weights pull {spec_str}` first")
        model = build_yolov5(spec_str[-1], fused=True)
        with np.load(path, allow_pickle=False) as npz:
            state = {k: torch.from_numpy(npz[k]) for k in npz.files}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(("anchors", "stride"))]
        if missing or unexpected:
            raise weights.WeightsError(f"{path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.names = dict(enumerate(COCO_NAMES))
        return model.eval()
    if name.endswith((".yaml", ".yml")) or (name.endswith(".pt") and not _is_yolov5_repo_checkpoint(spec_str)):
        return _load_ultralytics(spec_str, fused)
    if name.endswith(".pt"):
        model = weights.load_yolov5_checkpoint(spec_str)
        return (model.fuse() if fused else model).eval()
    raise weights.WeightsError(f"don't know how to load model {spec_str!r}: expected yolov5s, a .pt checkpoint "
                               "or an ultralytics .yaml")


def _is_yolov5_repo_checkpoint(path: str) -> bool:
    """YOLOv5-repository checkpoints pickle classes from the `models.` package; ultralytics' from `ultralytics.`."""
    p = Path(path)
    if not p.exists():
        raise weights.WeightsError(f"checkpoint not found: {p}")
    with zipfile.ZipFile(p) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        return b"ultralytics.nn" not in z.read(pkl)


def _load_ultralytics(spec: str, fused: bool) -> Any:
    try:  # optional heavy dependency (the cloud extra)
        from ultralytics.nn.tasks import DetectionModel, load_checkpoint
    except ImportError as e:
        raise RuntimeError(f"ultralytics is needed to load {spec} (the ultralytics extra: "
                           f"pip install 'split-infer[ultralytics]'): {e}") from None
    model: Any  # an ultralytics DetectionModel, whose attributes torch types as `Tensor | Module`
    if spec.endswith((".yaml", ".yml")):
        model = DetectionModel(spec, verbose=False)
        model.names = dict(enumerate(COCO_NAMES)) if model.yaml.get("nc", 80) == 80 else model.names
    else:
        model, _ = load_checkpoint(spec, device="cpu", inplace=True, fuse=fused)
    model = model.float().eval()
    return model.fuse(verbose=False) if fused and hasattr(model, "fuse") else model
