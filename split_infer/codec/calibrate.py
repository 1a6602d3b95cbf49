"""Calibrating the video codec's channel reduction on a camera's footage (torch; cloud/dev only).

    split-infer codec calibrate --video cam7.mp4 --frames 0:250 --components 64 --out cam7.basis.npz

Seconds, not minutes: the features of the calibration frames, the consumer metric from the head's
weights, one eigen-decomposition (see split_infer/codec/basis.py).
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from pathlib import Path

import numpy as np

from split_infer.codec.basis import Basis, from_features
from split_infer.codec.train import Log, collect_features
from split_infer.model.partition import CloudPart, YoloLayer, sources


def _conv_weights_reading_input(module: YoloLayer) -> list[np.ndarray]:
    """The convolutions that read a YOLOv5 module's input directly: Conv -> its conv; C3 -> cv1, cv2."""
    kind = type(module).__name__
    if kind == "Conv":
        return [module.conv.weight.detach().numpy()]
    if kind == "C3":
        return [module.cv1.conv.weight.detach().numpy(), module.cv2.conv.weight.detach().numpy()]
    raise ValueError(f"no consumer metric for a {kind} layer reading the cut (YOLOv5 Conv and C3 are known); "
                     "use --metric identity")


def consumer_metric(cloud: CloudPart, tensor_index: int, channels: int) -> np.ndarray:
    """M = sum of W^T W over the convolutions (and taps) of the head that read the cut tensor; a Concat
    that reads it passes it on to the layers that read the Concat, at its channel offset."""
    layers: list[YoloLayer] = list(cloud.all_layers)
    metric = np.zeros((channels, channels))

    def add(weights: np.ndarray, offset: int) -> None:
        w = weights[:, offset:offset + channels]
        metric[:] += np.einsum("oikl,ojkl->ij", w, w)

    for m in layers[cloud.cut + 1:]:
        src = sources(m)
        if tensor_index not in src:
            continue
        if type(m).__name__ == "Concat":
            if src[-1] != tensor_index:
                raise ValueError(f"layer {m.i} concatenates the cut tensor before other inputs; offset unknown")
            for reader in layers[m.i + 1:]:
                if m.i in sources(reader):
                    for w in _conv_weights_reading_input(reader):
                        add(w, w.shape[1] - channels)
        else:
            for w in _conv_weights_reading_input(m):
                add(w, 0)
    if not metric.any():
        raise ValueError(f"no layer after the cut reads x{tensor_index}")
    return metric


def calibrate(video: str, out: str, frames: tuple[int, int | None] = (0, None), every: int = 2,
              components: int = 64, metric: str = "consumer", model_name: str = "yolov5s", cut: int = 4,
              imgsz: tuple[int, int] = (640, 384), log: Log = print) -> Basis:
    feats, tensor, cloud, span = collect_features(video, frames, every, model_name, cut, imgsz, log=log)
    c = feats.shape[1]
    m = consumer_metric(cloud, int(tensor[1:]), c) if metric == "consumer" else np.eye(c)
    digest = hashlib.sha256(Path(video).read_bytes()).hexdigest()
    meta = {"kind": "basis", "tensor": tensor, "cut": cut, "model": model_name, "imgsz": list(imgsz),
            "metric": metric, "trained_on": {"video": Path(video).name, "sha256": digest, "frames": list(span),
                                             "every": every},
            "command": "split-infer codec " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["codec"] else sys.argv[1:])}
    basis = from_features(feats.astype(np.float32), m, components, meta)
    basis.save(out)
    log(f"wrote {out}: {components} of {c} channels, variance kept {basis.meta['variance_kept']}, "
        f"id {basis.model_id}")
    return basis
