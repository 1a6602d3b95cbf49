"""The learned bottleneck's architecture, defined once as data and run by numpy, torch and the export.

A model file (.npz, written by `split-infer codec train`) holds weights and, in its metadata, the
layer lists of its two halves:

    encoder (edge):   conv enc1 (1x1, 128->H), silu, conv enc2 (3x3, H->C)
    decoder (cloud):  conv dec1 (3x3, C->H2), silu, res dec_r0 ..., conv dec2 (3x3 or 1x1, H2->128), silu

An op is a string: "conv NAME" (same-padded stride-1 convolution with NAME.weight and NAME.bias),
"silu", or "res NAME" (x + conv NAME.b(silu(conv NAME.a(x))), a residual block). Training builds its
torch module from these lists (`TorchBottleneck`), the numpy runtime interprets them (`run`), and
the edge export traces the torch module, so the three cannot disagree. Files written before the
lists existed (v1) get the v1 layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from split_infer.codec.errors import CodecError

if TYPE_CHECKING:
    import torch

Ops = list[str]
V1_ENCODER: Ops = ["conv enc1", "silu", "conv enc2"]
V1_DECODER: Ops = ["conv dec1", "silu", "conv dec2", "silu"]


def layout(res_blocks: int) -> dict[str, Ops]:
    """The encoder and decoder op lists of a bottleneck with `res_blocks` residual blocks in its decoder."""
    return {"encoder": list(V1_ENCODER),
            "decoder": ["conv dec1", "silu", *[f"res dec_r{i}" for i in range(res_blocks)], "conv dec2", "silu"]}


def init_shapes(cin: int, channels: int, hidden: int, dec_hidden: int, res_blocks: int
                ) -> dict[str, tuple[int, int, int]]:
    """(out, in, kernel) of every convolution of `layout(res_blocks)`."""
    shapes = {"enc1": (hidden, cin, 1), "enc2": (channels, hidden, 3), "dec1": (dec_hidden, channels, 3),
              "dec2": (cin, dec_hidden, 3)}
    for i in range(res_blocks):
        shapes[f"dec_r{i}.a"] = shapes[f"dec_r{i}.b"] = (dec_hidden, dec_hidden, 3)
    return shapes


def parse(op: str) -> tuple[str, str]:
    kind, _, name = op.partition(" ")
    if kind not in ("conv", "silu", "res") or (kind != "silu") != bool(name):
        raise CodecError(f"unknown bottleneck op {op!r}")
    return kind, name


def silu(x: np.ndarray) -> np.ndarray:
    y: np.ndarray = x / (1.0 + np.exp(-x))
    return y


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Same-padded stride-1 conv of one image x [Cin, H, W] with w [Cout, Cin, k, k] (k odd).

    One matmul over the padded input for all k*k taps, then shifted sums of the outputs:
    far cheaper than im2col for the small output channel counts used here."""
    cout, cin, k, _ = w.shape
    _, h, wd = x.shape
    if k == 1:
        pointwise: np.ndarray = (w[:, :, 0, 0] @ x.reshape(cin, -1)).reshape(cout, h, wd) + b[:, None, None]
        return pointwise
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    taps = w.transpose(2, 3, 0, 1).reshape(k * k * cout, cin)  # [(dy, dx, cout), cin]
    z = (taps @ xp.reshape(cin, -1)).reshape(k, k, cout, h + 2 * p, wd + 2 * p)
    out = np.empty((cout, h, wd), np.float32)
    out[:] = b[:, None, None]
    for dy in range(k):
        for dx in range(k):
            out += z[dy, dx, :, dy:dy + h, dx:dx + wd]
    return out


def run(ops: Ops, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply `ops` to one image [C, H, W] in numpy."""
    def c(name: str, v: np.ndarray) -> np.ndarray:
        return conv(v, weights[f"{name}.weight"], weights[f"{name}.bias"])

    for op in ops:
        kind, name = parse(op)
        if kind == "conv":
            x = c(name, x)
        elif kind == "silu":
            x = silu(x)
        else:
            x = x + c(f"{name}.b", silu(c(f"{name}.a", x)))
    return x


def run_torch(ops: Ops, weights: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply `ops` to a batch [N, C, H, W] in torch (weights as tensors: trainable or not)."""
    import torch.nn.functional as F

    def c(name: str, v: torch.Tensor) -> torch.Tensor:
        w = weights[f"{name}.weight"]
        return F.conv2d(v, w, weights[f"{name}.bias"], padding=w.shape[-1] // 2)

    for op in ops:
        kind, name = parse(op)
        if kind == "conv":
            x = c(name, x)
        elif kind == "silu":
            x = F.silu(x)
        else:
            x = x + c(f"{name}.b", F.silu(c(f"{name}.a", x)))
    return x


def check(ops: Ops, weights: Mapping[str, Any]) -> None:
    """Every convolution the ops name has its weight and bias."""
    for op in ops:
        kind, name = parse(op)
        names = [name] if kind == "conv" else [f"{name}.a", f"{name}.b"] if kind == "res" else []
        for n in names:
            if f"{n}.weight" not in weights or f"{n}.bias" not in weights:
                raise CodecError(f"bottleneck op {op!r} has no weights {n}.weight/{n}.bias in the model file")
