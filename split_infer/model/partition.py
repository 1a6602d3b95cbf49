"""Split any YOLO graph whose layers name their inputs (`.f`, as YOLOv5 and ultralytics models do).

`partition(model, cut)` returns an edge part (layers 0..cut) that outputs exactly the tensors later
layers consume, keyed "x<layer index>", and a cloud part (layers cut+1..end) that takes them.
cloud(edge(x)) computes the same function as the unsplit model.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch
from torch import nn

from split_infer.model.loading import load_model
from split_infer.model.preprocess import parse_imgsz
from split_infer.service import EXIT_CODES_EPILOG, HelpFormatter, checked

# One layer of a YOLO graph: an nn.Module that its builder gave `.i` (its index) and `.f` (the
# indices it reads), besides its family's submodules. Loosely typed on purpose: torch types every
# module attribute as `Tensor | Module`, and the families share no base class.
YoloLayer = Any


def sources(layer: YoloLayer) -> list[int]:
    """Absolute indices of the layers this layer reads (-1 = the previous layer)."""
    f = layer.f if isinstance(layer.f, (list, tuple)) else [layer.f]
    return [layer.i + j if j < 0 else j for j in f]


def layers_of(model: nn.Module) -> nn.Sequential:
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not all(hasattr(m, "f") and hasattr(m, "i") for m in layers):
        raise TypeError("expected a YOLO model whose `.model` layers carry `.f` and `.i` (YOLOv5 or ultralytics)")
    return layers


def crossing(layers: nn.Sequential, cut: int) -> list[int]:
    """Indices of layers at or before `cut` whose outputs are read after it."""
    if not 0 <= cut < len(layers) - 1:
        raise ValueError(f"cut must be in 0..{len(layers) - 2} (the head layer {len(layers) - 1} stays in the cloud), "
                         f"got {cut}")
    return sorted({j for m in layers[cut + 1:] for j in sources(m) if j <= cut})


def _run(layers: nn.Sequential, start: int, y: dict[int, torch.Tensor], keep: set[int]) -> Any:
    """Run layers[start:] with earlier outputs in `y`; keep the outputs later layers need. Returns
    the last layer's output (a detection head's: a tensor or a tuple, see `first_tensor`)."""
    x = None
    m: YoloLayer
    for m in layers[start:]:
        src = sources(m)
        inp = y[src[0]] if not isinstance(m.f, (list, tuple)) else [y[j] for j in src]
        x = m(inp)
        if m.i in keep:
            y[m.i] = x
    return x


def _consumed(layers: nn.Sequential) -> set[int]:
    return {j for m in layers for j in sources(m)}


class EdgePart(nn.Module):
    def __init__(self, layers: nn.Sequential, cut: int):
        super().__init__()
        self.layers = layers[: cut + 1]
        self.cut = cut
        self.outputs = crossing(layers, cut)
        self._keep = _consumed(layers) | set(self.outputs)

    @property
    def output_names(self) -> list[str]:
        return [f"x{i}" for i in self.outputs]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = {-1: x}
        _run(self.layers, 0, y, self._keep)
        return {f"x{i}": y[i] for i in self.outputs}


class CloudPart(nn.Module):
    def __init__(self, layers: nn.Sequential, cut: int):
        super().__init__()
        self.all_layers = layers  # indices stay absolute; only layers after the cut run
        self.cut = cut
        self.inputs = crossing(layers, cut)
        self._keep = _consumed(layers)

    @property
    def input_names(self) -> list[str]:
        return [f"x{i}" for i in self.inputs]

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        y = {i: feats[f"x{i}"] for i in self.inputs}
        out = _run(self.all_layers, self.cut + 1, y, self._keep)
        return first_tensor(out)


def first_tensor(out: Any) -> torch.Tensor:
    """Detection heads return a tensor (YOLOv5) or (predictions, raw maps) (ultralytics): take predictions."""
    return out[0] if isinstance(out, (tuple, list)) else out


def partition(model: nn.Module, cut: int) -> tuple[EdgePart, CloudPart]:
    layers = layers_of(model)
    return EdgePart(layers, cut).eval(), CloudPart(layers, cut).eval()


def crossing_shapes(model: nn.Module, cut: int, imgsz: tuple[int, int]) -> dict[str, tuple[int, ...]]:
    """Shapes (without batch) of the tensors crossing `cut` for WIDTHxHEIGHT inputs, from a dry run."""
    edge, _ = partition(model, cut)
    with torch.no_grad():
        out = edge(torch.zeros(1, 3, imgsz[1], imgsz[0]))
    return {k: tuple(v.shape[1:]) for k, v in out.items()}


def cut_table(model: nn.Module, imgsz: tuple[int, int]) -> list[dict]:
    """For every cut: the crossing tensors, their shapes and their size against the raw input."""
    layers = layers_of(model)
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: shapes.__setitem__(mod.i, tuple(first_tensor(out).shape)))
             for m in layers[:-1]]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, imgsz[1], imgsz[0]))
    finally:
        for h in hooks:
            h.remove()
    input_values = 3 * imgsz[0] * imgsz[1]
    rows = []
    for cut in range(len(layers) - 1):
        tensors = {f"x{i}": shapes[i][1:] for i in crossing(layers, cut)}
        values = sum(int(torch.tensor(s).prod()) for s in tensors.values())
        rows.append({"cut": cut, "layer": getattr(layers[cut], "type", type(layers[cut]).__name__),
                     "tensors": tensors, "values": values, "vs_input": round(values / input_values, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="split-infer cuts", description="Tensors that cross each cut of a model.",
                                     formatter_class=HelpFormatter, epilog=EXIT_CODES_EPILOG)
    parser.add_argument("--model", default="yolov5s", help="model name (yolov5s, yolov5n) or checkpoint path")
    parser.add_argument("--imgsz", type=checked(parse_imgsz), default="640x384", help="WIDTHxHEIGHT, multiples of 32")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = cut_table(load_model(args.model), args.imgsz)
    except (ValueError, RuntimeError) as e:
        print(f"split-infer cuts: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'cut':>3}  {'layer':<12} {'values':>10} {'x input':>8} {'uint8 kB':>9}  tensors (C, H, W)")
    for r in rows:
        shapes = ", ".join(f"{k}{list(v)}" for k, v in r["tensors"].items())
        print(f"{r['cut']:>3}  {r['layer']:<12} {r['values']:>10,} {r['vs_input']:>8} {r['values'] / 1000:>9.0f}  "
              f"{shapes}")
    return 0
