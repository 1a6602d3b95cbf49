"""Training the learned bottleneck by distillation from the frozen detector (torch; cloud/dev only).

No labels: the frozen YOLOv5s is both teacher and the rest of the student. The student is
    x4 -> encoder -> quantise -> decoder -> x4' -> frozen head
and learns to reproduce, on whole frames:
  (a) the head's pyramid features (the inputs of its Detect layer: P3, P4, P5), each normalised
      by the teacher's per-channel variance: a dense signal everywhere in the picture;
  (b) the head's outputs (objectness, class scores, boxes), weighted by the teacher's objectness;
  (c) the features x4 themselves (a little; it speeds up the start);
while (d) a rate term, the bits of the latent under a learned per-channel logistic entropy model,
keeps the latent cheap. The latent is quantised as the video codec will quantise it: rounded to
integer codes (straight-through), and on a random share of each batch with a coarser step, so the
decoder learns to live with the inner codec's error at higher CRFs.

The teacher's features are computed once per frame and kept (float16), so a step costs one
student pass and one backward pass through the head: about 0.2 s per 640x384 frame on one core.
Training stops at a wall-clock budget; the learning rate follows a cosine over that budget.
Each step draws its frames camera by camera (a footage entry uniformly, then a frame of it), so a
short clip of a second camera weighs as much as a long one. On CPUs with AMX the forward passes
run under bfloat16 autocast (about 2x faster per step on a Sapphire Rapids core); the weights, the
rounding and the losses stay float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import nn

from split_infer.codec import bottleneck
from split_infer.model.loading import load_model
from split_infer.model.partition import CloudPart, _run, partition, sources
from split_infer.model.preprocess import letterbox

Log = Callable[[str], object]
FORMAT = "split-infer learned codec v2"
Precision = Literal["auto", "fp32", "bf16"]


def autocast_dtype(precision: Precision) -> torch.dtype | None:
    """bfloat16 for `bf16`, and for `auto` where the CPU has AMX, the case measured faster (0.44 s
    against 0.86 s per step); without AMX bf16 has no matrix unit to gain from. None means float32."""
    if precision == "auto":
        from split_infer.model.macs import read_cpuinfo

        precision = "bf16" if "amx_bf16" in read_cpuinfo().flags else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def collect_features(video: str, frames: tuple[int, int | None], every: int, model_name: str, cut: int,
                     imgsz: tuple[int, int], log: Log = print, mirror: bool = False
                     ) -> tuple[np.ndarray, str, CloudPart, tuple[int, int]]:
    """Edge features of frames [a, b) (every `every`-th) -> float16 array [N, C, H, W], the tensor's
    name, the cloud part that reads it, and the frame span read. `mirror` adds each frame's mirror
    image after it (2N maps): more scenes from the same footage, with traffic running the other way."""
    edge, cloud = partition(load_model(model_name), cut)
    if len(edge.output_names) != 1:
        raise ValueError(f"cut {cut} sends {edge.output_names}; the learned bottleneck handles one tensor")
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    a, b = frames
    b = b if b is not None else int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    # Decode up to frame `a` instead of seeking: OpenCV's seek in MPEG-4 lands on other frames
    # (seeking to 367 in the street clip gave frame 363), which would blur train/test splits.
    for _ in range(a):
        if not cap.grab():
            break
    feats, i = [], a
    while i < b:
        ok, f = cap.read()
        if not ok:
            break
        if (i - a) % every == 0:
            image = letterbox(f, imgsz)[0]
            views = [image, image[..., ::-1].copy()] if mirror else [image]  # [3, H, W]: flip the width axis
            for view in views:
                with torch.no_grad():
                    x = edge(torch.from_numpy(view[None]))[edge.output_names[0]][0]
                feats.append(x.numpy().astype(np.float16))
        i += 1
    if not feats:
        raise ValueError(f"{video}: no frames in [{a}, {b})")
    log(f"collected {len(feats)} feature maps from frames {a}-{i - 1} of {video}{' and their mirrors' * mirror}")
    return np.stack(feats), edge.output_names[0], cloud, (a, i)


class Head:
    """The frozen head after the cut, exposing the Detect layer's inputs as well as its output."""

    def __init__(self, cloud: CloudPart) -> None:
        for p in cloud.parameters():
            p.requires_grad_(False)
        self.cloud = cloud
        self.pyramid = sources(cloud.all_layers[-1])  # the layers the Detect layer reads

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = {self.cloud.inputs[0]: x}
        out = _run(self.cloud.all_layers, self.cloud.cut + 1, y, self.cloud._keep)
        return (out[0] if isinstance(out, (tuple, list)) else out), [y[i] for i in self.pyramid]

    def detect(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        out = self.cloud.all_layers[-1](pyramid)
        pred: torch.Tensor = out[0] if isinstance(out, (tuple, list)) else out
        return pred


class TorchBottleneck(nn.Module):
    """The bottleneck of `bottleneck.layout` as trainable torch parameters, plus the latent's
    entropy model (a per-channel logistic, used only for the rate term)."""

    def __init__(self, arch: dict[str, bottleneck.Ops], shapes: dict[str, tuple[int, int, int]], channels: int):
        super().__init__()
        self.arch = arch
        self.params = nn.ParameterDict()
        for name, (cout, cin, k) in shapes.items():
            conv = nn.Conv2d(cin, cout, k)  # torch's default initialisation
            if name.endswith(".b"):  # residual blocks start as the identity
                nn.init.zeros_(conv.weight)
            if name == "enc2":  # a latent that spans several integer codes from the start
                with torch.no_grad():
                    conv.weight.mul_(8.0)
            self.params[name.replace(".", "__") + "__weight"] = conv.weight
            self.params[name.replace(".", "__") + "__bias"] = conv.bias
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def weights(self) -> dict[str, torch.Tensor]:
        return {k.replace("__", "."): v for k, v in self.params.items()}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return bottleneck.run_torch(self.arch["encoder"], self.weights(), x)

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return bottleneck.run_torch(self.arch["decoder"], self.weights(), y)

    def bits(self, y_noisy: torch.Tensor) -> torch.Tensor:
        s = self.log_scale.exp().view(1, -1, 1, 1)
        p = torch.sigmoid((y_noisy + 0.5) / s) - torch.sigmoid((y_noisy - 0.5) / s)
        return -torch.log2(p.clamp_min(1e-9))

    def arrays(self) -> dict[str, np.ndarray]:
        out = {k: v.detach().numpy().astype(np.float32) for k, v in self.weights().items()}
        out["log_scale"] = self.log_scale.detach().numpy().astype(np.float32)
        return out


def _distill_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Head outputs [B, N, 85] (xywh px, obj, 80 class probs): student vs teacher."""
    eps = 1e-6

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # binary KL(q || p) per element
        p, q = p.clamp(eps, 1 - eps), q.clamp(eps, 1 - eps)
        return q * (q / p).log() + (1 - q) * ((1 - q) / (1 - p)).log()
    t_obj = t[..., 4]
    w = t_obj / t_obj.sum().clamp_min(eps)
    obj = kl(s[..., 4], t_obj).mean() * 10
    cls = (kl(s[..., 5:], t[..., 5:]).sum(-1) * w).sum()
    box = ((s[..., :4] - t[..., :4]).abs().sum(-1) / (t[..., 2:4].sum(-1) + 16) * w).sum()
    return obj + cls + box


@dataclass
class Footage:
    """Frames [start, stop) of one video, every `every`-th, for training."""

    video: str
    start: int = 0
    stop: int | None = None
    every: int = 1

    @classmethod
    def parse(cls, text: str) -> Footage:
        """VIDEO[@A:B][/EVERY], e.g. street.mp4@0:367/2."""
        m = re.fullmatch(r"(?P<video>.+?)(?:@(?P<a>\d*):(?P<b>\d*))?(?:/(?P<every>\d+))?", text)
        if not m or (m["every"] is not None and int(m["every"]) < 1):
            raise ValueError(f"footage must be VIDEO[@A:B][/N] with N >= 1, got {text!r}")
        return cls(m["video"], int(m["a"] or 0), int(m["b"]) if m["b"] else None, int(m["every"] or 1))


def _teacher_set(footage: Sequence[Footage], model_name: str, cut: int, imgsz: tuple[int, int], log: Log,
                 mirror: bool = False) -> tuple[np.ndarray, list[np.ndarray], str, Head, list[dict[str, Any]]]:
    """x4 of every training frame (and of its mirror image) and the teacher's pyramid features on it (float16)."""
    xs, pyr, spans = [], [], []
    head, tensor = None, ""
    for f in footage:
        feats, tensor, cloud, span = collect_features(f.video, (f.start, f.stop), f.every, model_name, cut, imgsz,
                                                      log, mirror)
        head = head or Head(cloud)
        with torch.no_grad():
            for i in range(0, len(feats), 8):
                _, p = head(torch.from_numpy(feats[i:i + 8].astype(np.float32)))
                pyr.append([t.numpy().astype(np.float16) for t in p])
        xs.append(feats)
        digest = hashlib.sha256(Path(f.video).read_bytes()).hexdigest()
        spans.append({"video": Path(f.video).name, "sha256": digest, "frames": list(span), "every": f.every})
    assert head is not None
    levels = [np.concatenate([p[k] for p in pyr]) for k in range(len(pyr[0]))]
    ends = np.cumsum([len(x) for x in xs])
    for entry, a, b in zip(spans, [0, *ends[:-1]], ends, strict=True):
        entry["rows"] = [int(a), int(b)]  # its frames' rows in the stacked arrays
    return np.concatenate(xs), levels, tensor, head, spans


def draw_frames(rng: np.random.Generator, spans: Sequence[dict[str, Any]], batch: int) -> np.ndarray:
    """Rows of one batch: for each, a footage entry uniformly, then one of its frames."""
    rows = [spans[i]["rows"] for i in rng.integers(0, len(spans), batch)]
    return np.array([rng.integers(a, b) for a, b in rows])


def train(footage: Sequence[Footage], out: str, channels: int = 16, hidden: int = 96, dec_hidden: int = 128,
          res_blocks: int = 1, batch: int = 4, lr: float = 2e-3, rate_weight: float = 0.004,
          coarse_share: float = 0.5, init: str | None = None, model_name: str = "yolov5s", cut: int = 4,
          imgsz: tuple[int, int] = (640, 384), threads: int = 1, seed: int = 0, minutes: float = 60.0,
          steps: int | None = None, precision: Precision = "auto", mirror: bool = False,
          log: Log = print) -> dict[str, Any]:
    """Train for `minutes` of wall clock (teacher features included), or exactly `steps` steps."""
    dtype = autocast_dtype(precision)

    def forward_precision() -> torch.autocast:  # the forward passes' precision (a no-op for fp32)
        return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t_start = time.time()
    x4, teacher, tensor, head, spans = _teacher_set(footage, model_name, cut, imgsz, log, mirror)
    log(f"teacher features of {len(x4)} frames in {time.time() - t_start:.0f}s")
    if init:
        from split_infer.codec.learned import LearnedModel

        base = LearnedModel.load(init)
        arch, weights = base.arch, base.weights
        shapes = {k[:-len(".weight")]: (v.shape[0], v.shape[1], v.shape[2]) for k, v in weights.items()
                  if k.endswith(".weight")}
        channels = base.components
        net = TorchBottleneck(arch, shapes, channels)
        with torch.no_grad():
            for k, v in net.weights().items():
                v.copy_(torch.from_numpy(weights[k]))
            if "log_scale" in weights:
                net.log_scale.copy_(torch.from_numpy(weights["log_scale"]))
        log(f"fine-tuning {init} (id {base.model_id})")
    else:
        arch = bottleneck.layout(res_blocks)
        shapes = bottleneck.init_shapes(x4.shape[1], channels, hidden, dec_hidden, res_blocks)
        net = TorchBottleneck(arch, shapes, channels)
    x_var = torch.from_numpy(x4[::4].astype(np.float32).var(axis=(0, 2, 3))).view(1, -1, 1, 1) + 1e-4
    t_var = [torch.from_numpy(t[::4].astype(np.float32).var(axis=(0, 2, 3))).view(1, -1, 1, 1) + 1e-4
             for t in teacher]
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    budget = minutes * 60 - (time.time() - t_start)
    t_train, hist, step = time.time(), [], 0

    def progress() -> float:  # share of the run done: by steps when counted, else by the clock
        return step / steps if steps is not None else (time.time() - t_train) / max(budget, 1e-9)

    while (done := progress()) < 1.0:
        for g in opt.param_groups:  # a short warm-up, then a cosine over the run
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * done))
        idx = draw_frames(rng, spans, batch)
        x = torch.from_numpy(x4[idx].astype(np.float32))
        with forward_precision():
            y = net.encode(x).float()
        # As the video codec will: integer codes, and on part of the batch a coarser step.
        step_size = torch.from_numpy(np.where(rng.random(batch) < coarse_share,
                                              rng.choice([2.0, 3.0, 4.0], batch), 1.0).astype(np.float32))
        step_size = step_size.view(-1, 1, 1, 1)
        y_hat = y + (torch.round(y / step_size) * step_size - y).detach()
        bits = net.bits(y + torch.empty_like(y).uniform_(-0.5, 0.5)).mean()
        with forward_precision():
            x_hat = net.decode(y_hat)
            s_out, pyramid = head(x_hat)
        x_hat, s_out, pyramid = x_hat.float(), s_out.float(), [p.float() for p in pyramid]
        with torch.no_grad():
            t_pyr = [torch.from_numpy(t[idx].astype(np.float32)) for t in teacher]
            t_out = head.detect(t_pyr)
        d_pyr = torch.stack([((s - t) ** 2 / v).mean() for s, t, v in zip(pyramid, t_pyr, t_var, strict=True)]).sum()
        d_out = _distill_loss(s_out, t_out)
        d_feat = ((x_hat - x) ** 2 / x_var).mean()
        loss = d_pyr + d_out + 0.1 * d_feat + rate_weight * bits
        opt.zero_grad()
        torch.autograd.backward(loss)  # loss.backward(), which torch leaves untyped
        opt.step()
        hist.append((d_pyr.item(), d_out.item(), d_feat.item(), bits.item()))
        if step % 25 == 0:
            m = np.mean(hist[-25:], axis=0)
            log(f"step {step:5d}  pyramid {m[0]:.4f}  out {m[1]:.4f}  x4 {m[2]:.4f}  bits/value {m[3]:.3f}  "
                f"|y|max {y.detach().abs().max():.0f}  {time.time() - t_start:.0f}s")
        step += 1
    m = np.mean(hist[-50:], axis=0) if hist else np.zeros(4)
    meta = {"format": FORMAT, "model": model_name, "cut": cut, "tensor": tensor, "channels": channels,
            "imgsz": list(imgsz), "architecture": arch, "code_step": 1.0,
            "steps": step, "batch": batch, "rate_weight": rate_weight,
            "train_seconds": round(time.time() - t_start, 1), "threads": threads,
            "precision": "bf16" if dtype is not None else "fp32", "sampling": "per footage, then per frame",
            "mirror": mirror,
            "final": {"pyramid_nmse": round(float(m[0]), 5), "distill": round(float(m[1]), 5),
                      "x4_nmse": round(float(m[2]), 5), "bits_per_value": round(float(m[3]), 4)},
            "trained_on": spans, "fine_tuned_from": init,
            "command": "split-infer codec " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["codec"] else sys.argv[1:])}
    save(net.arrays(), out, meta)
    log(f"wrote {out}: {json.dumps(meta)}")
    return meta


def save(arrays: dict[str, np.ndarray], path: str, meta: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)  # type: ignore[arg-type]
