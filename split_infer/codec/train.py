"""Training the learned bottleneck by distillation from the frozen detector (torch; cloud/dev only).

No labels: the frozen YOLOv5s is both teacher and the rest of the student. The student is
    x4 -> encoder -> round -> decoder -> x4' -> frozen head
and is trained to reproduce (a) the features x4, normalised per channel, and (b) the head's
outputs on the uncompressed x4 (objectness, class scores, boxes), while (c) a rate term, the
bits of the rounded latent under a learned per-channel logistic entropy model, keeps the latent
cheap. Training runs on random feature-map crops (a reduced input size: 256x384 pixels by
default) of frames decoded once, so it fits a 2-core CPU in minutes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from split_infer.model.loading import load_model
from split_infer.model.partition import CloudPart, partition
from split_infer.model.preprocess import letterbox

Log = Callable[[str], object]


def collect_features(video: str, frames: tuple[int, int | None], every: int, model_name: str, cut: int,
                     imgsz: tuple[int, int], log: Log = print
                     ) -> tuple[np.ndarray, str, CloudPart, tuple[int, int]]:
    """Edge features of frames [a, b) (every `every`-th) -> float16 array [N, C, H, W], the tensor's
    name, the cloud part that reads it, and the frame span read."""
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
            x = torch.from_numpy(letterbox(f, imgsz)[0][None])
            with torch.no_grad():
                feats.append(edge(x)[edge.output_names[0]][0].numpy().astype(np.float16))
        i += 1
    if not feats:
        raise ValueError(f"{video}: no frames in [{a}, {b})")
    log(f"collected {len(feats)} feature maps from frames {a}-{i - 1} of {video}")
    return np.stack(feats), edge.output_names[0], cloud, (a, i)


class FeatureBottleneck(nn.Module):
    """The learned codec being trained: encoder, decoder, and the entropy model of the latent."""

    def __init__(self, channels: int, hidden: int = 64, dec_hidden: int = 96, cin: int = 128) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(cin, hidden, 1)
        self.enc2 = nn.Conv2d(hidden, channels, 3, padding=1)
        self.dec1 = nn.Conv2d(channels, dec_hidden, 3, padding=1)
        self.dec2 = nn.Conv2d(dec_hidden, cin, 3, padding=1)
        self.log_scale = nn.Parameter(torch.zeros(channels))  # factorized logistic entropy model

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.enc2(nn.functional.silu(self.enc1(x)))
        return y

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.dec2(nn.functional.silu(self.dec1(y))))

    def bits(self, y_noisy: torch.Tensor) -> torch.Tensor:
        s = self.log_scale.exp().view(1, -1, 1, 1)
        p = torch.sigmoid((y_noisy + 0.5) / s) - torch.sigmoid((y_noisy - 0.5) / s)
        return -torch.log2(p.clamp_min(1e-9))


def build(channels: int, hidden: int = 64, dec_hidden: int = 96, cin: int = 128) -> FeatureBottleneck:
    return FeatureBottleneck(channels, hidden, dec_hidden, cin)


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


def train(video: str, out: str, frames: tuple[int, int | None] = (0, None), every: int = 2, steps: int = 120,
          pretrain_steps: int = 400,
          channels: int = 12, batch: int = 8, crop: tuple[int, int] = (32, 48), lr: float = 2e-3,
          rate_weight: float = 0.02, feat_weight: float = 1.0, out_weight: float = 1.0,
          init: str | None = None, model_name: str = "yolov5s", cut: int = 4,
          imgsz: tuple[int, int] = (640, 384), threads: int = 2, seed: int = 0, max_seconds: float | None = None,
          log: Log = print) -> dict[str, Any]:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    t_start = time.time()
    feats, tensor, cloud, span = collect_features(video, frames, every, model_name, cut, imgsz, log)
    for p in cloud.parameters():
        p.requires_grad_(False)
    state = {k: torch.from_numpy(v) for k, v in _load_npz(init)[0].items()} if init else None
    if state:  # the architecture comes from the model being fine-tuned
        channels = state["enc2.weight"].shape[0]
        net = build(channels, hidden=state["enc1.weight"].shape[0], dec_hidden=state["dec1.weight"].shape[0],
                    cin=feats.shape[1])
        net.load_state_dict(state)
        log(f"fine-tuning from {init}")
    else:
        net = build(channels, cin=feats.shape[1])
    var = torch.from_numpy(feats[::4].astype(np.float32).var(axis=(0, 2, 3))).view(1, -1, 1, 1) + 1e-4
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    total = steps + pretrain_steps
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    n, _, h, w = feats.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    hist = []
    for step in range(total):
        distill = step >= pretrain_steps  # first the cheap feature loss, then through the frozen head
        idx = rng.integers(0, n, batch)
        ys, xs = rng.integers(0, h - ch + 1, batch) // 4 * 4, rng.integers(0, w - cw + 1, batch) // 4 * 4
        x = torch.from_numpy(np.stack([feats[i, :, y:y + ch, x_:x_ + cw] for i, y, x_ in zip(idx, ys, xs, strict=True)])
                             .astype(np.float32))
        y = net.encode(x)
        y_hat = y + (torch.round(y) - y).detach()  # straight-through rounding: the decoder sees integers
        bits = net.bits(y + torch.empty_like(y).uniform_(-0.5, 0.5)).mean()  # bits per latent value
        x_hat = net.decode(y_hat)
        d_feat = ((x_hat - x) ** 2 / var).mean()
        if distill:
            with torch.no_grad():
                teacher = cloud({tensor: x})
            d_out = _distill_loss(cloud({tensor: x_hat}), teacher)
        else:
            d_out = torch.zeros(())
        loss = feat_weight * d_feat + out_weight * d_out + rate_weight * bits
        opt.zero_grad()
        torch.autograd.backward(loss)  # loss.backward(), which torch leaves untyped
        opt.step()
        sched.step()
        hist.append((d_feat.item(), d_out.item(), bits.item()))
        if step % 20 == 0 or step == total - 1:
            m = np.mean(hist[-20:], axis=0)
            log(f"step {step:4d}  feat {m[0]:.4f}  distill {m[1]:.4f}  bits/value {m[2]:.3f}  "
                f"{time.time() - t_start:.0f}s")
        if max_seconds and time.time() - t_start > max_seconds:
            log(f"stopping at step {step}: time limit {max_seconds}s")
            break
    m = np.mean(hist[-20:], axis=0)
    meta = {"format": "split-infer learned codec v1", "model": model_name, "cut": cut, "tensor": tensor,
            "channels": channels, "imgsz": list(imgsz), "crop": [ch, cw],
            "steps": len(hist), "pretrain_steps": pretrain_steps,
            "rate_weight": rate_weight, "train_seconds": round(time.time() - t_start, 1),
            "final": {"feat_nmse": round(float(m[0]), 5), "distill": round(float(m[1]), 5),
                      "bits_per_value": round(float(m[2]), 4)},
            "trained_on": {"video": str(video), "frames": list(span), "every": every,
                           "fine_tuned_from": init}}
    save(net, out, meta)
    log(f"wrote {out}: {json.dumps(meta)}")
    return meta


def save(net: nn.Module, path: str, meta: dict[str, Any]) -> None:
    arrays = {k: v.detach().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}, json.loads(bytes(npz["meta"]).decode())
