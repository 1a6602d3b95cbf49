"""YOLOv5 (v6 architecture, anchor-based Detect head) in plain PyTorch.

Module and attribute names follow the YOLOv5 repository so that its checkpoints' state dicts load
one to one (`model.0.conv.weight`, `model.24.anchors`, ...). Each layer carries `.i` (its index) and
`.f` (the indices it reads, -1 = previous layer), the graph description that `split_infer.model.partition`
uses for every YOLO family.
"""

from __future__ import annotations

import math
from copy import deepcopy
from typing import Any, cast

import torch
from torch import nn

# Standard COCO anchors, in pixels, for P3/8, P4/16, P5/32.
COCO_ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def yolov5_cfg(depth_multiple: float, width_multiple: float, nc: int = 80) -> dict:
    """The yolov5{n,s,m,l,x}.yaml of YOLOv5 v6, as a dict."""
    return {
        "nc": nc,
        "depth_multiple": depth_multiple,
        "width_multiple": width_multiple,
        "anchors": deepcopy(COCO_ANCHORS),
        "backbone": [
            [-1, 1, "Conv", [64, 6, 2, 2]],  # 0-P1/2
            [-1, 1, "Conv", [128, 3, 2]],  # 1-P2/4
            [-1, 3, "C3", [128]],
            [-1, 1, "Conv", [256, 3, 2]],  # 3-P3/8
            [-1, 6, "C3", [256]],
            [-1, 1, "Conv", [512, 3, 2]],  # 5-P4/16
            [-1, 9, "C3", [512]],
            [-1, 1, "Conv", [1024, 3, 2]],  # 7-P5/32
            [-1, 3, "C3", [1024]],
            [-1, 1, "SPPF", [1024, 5]],  # 9
        ],
        "head": [
            [-1, 1, "Conv", [512, 1, 1]],
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 6], 1, "Concat", [1]],  # cat backbone P4
            [-1, 3, "C3", [512, False]],  # 13
            [-1, 1, "Conv", [256, 1, 1]],
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
            [[-1, 4], 1, "Concat", [1]],  # cat backbone P3
            [-1, 3, "C3", [256, False]],  # 17 (P3/8-small)
            [-1, 1, "Conv", [256, 3, 2]],
            [[-1, 14], 1, "Concat", [1]],  # cat head P4
            [-1, 3, "C3", [512, False]],  # 20 (P4/16-medium)
            [-1, 1, "Conv", [512, 3, 2]],
            [[-1, 10], 1, "Concat", [1]],  # cat head P5
            [-1, 3, "C3", [1024, False]],  # 23 (P5/32-large)
            [[17, 20, 23], 1, "Detect", ["nc", "anchors"]],  # Detect(P3, P4, P5)
        ],
    }


SIZES = {"n": (0.33, 0.25), "s": (0.33, 0.50), "m": (0.67, 0.75), "l": (1.0, 1.0), "x": (1.33, 1.25)}


def autopad(k: int, p: int | None = None) -> int:
    return k // 2 if p is None else p


class Conv(nn.Module):
    """Conv2d + BatchNorm + SiLU; after `fuse()` the BatchNorm is folded into the convolution."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "bn"):
            return self.act(self.bn(self.conv(x)))
        return self.act(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if not hasattr(self, "bn"):
            return
        # (Any: torch types Conv2d's sizes as tuple[int, ...] and BatchNorm's statistics as optional)
        conv: Any = self.conv
        bn: Any = self.bn
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                          conv.padding, groups=conv.groups, bias=True).to(conv.weight.device)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)  # type: ignore[union-attr]  # bias=True
        self.conv = fused
        del self.bn


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """CSP bottleneck with three convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


class Detect(nn.Module):
    """Anchor-based detection head; in eval mode returns decoded boxes [B, N, 5 + nc] (xywh, obj, cls)."""

    anchors: torch.Tensor  # buffers, registered in __init__
    stride: torch.Tensor

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: tuple = ()):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        # Anchors in units of each level's stride (as YOLOv5 stores them); set by the model builder.
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.register_buffer("stride", torch.ones(self.nl))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        out = []
        raw = []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            p = p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(p)
            if self.training:
                continue
            grid, anchor_grid = self._grid(i, nx, ny, p)
            xy, wh, conf = p.sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * self.stride[i]
            wh = (wh * 2) ** 2 * anchor_grid
            out.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return raw if self.training else torch.cat(out, 1)

    def _grid(self, i: int, nx: int, ny: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, t = like.device, like.dtype
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(1, self.na, ny, nx, 2) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, self.na, 1, 1, 2).expand(1, self.na, ny, nx, 2).to(t)
        return grid, anchor_grid


MODULES = {"Conv": Conv, "C3": C3, "SPPF": SPPF, "Concat": Concat, "Detect": Detect, "nn.Upsample": nn.Upsample}


def parse_model(cfg: dict, ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a YOLOv5 yaml dict (the repository's parse_model, minus what v6 doesn't use)."""
    anchors, nc, gd, gw = cfg["anchors"], cfg["nc"], cfg["depth_multiple"], cfg["width_multiple"]
    na = len(anchors[0]) // 2
    no = na * (nc + 5)
    layers: list[nn.Module] = []
    save: list[int] = []
    chs = [ch]
    for i, (f, n, name, args) in enumerate(cfg["backbone"] + cfg["head"]):
        if name not in MODULES:
            raise ValueError(f"layer {i}: unsupported module {name!r} for a YOLOv5 v6 model")
        m = MODULES[name]
        # Repository yaml files spell some arguments as names ("nc", "anchors", "None").
        args = [{"nc": nc, "anchors": anchors, "None": None}.get(a, a) if isinstance(a, str) else a for a in args]
        n = max(round(n * gd), 1) if n > 1 else n
        if m in (Conv, C3, SPPF):
            c1, c2 = chs[f], args[0]
            if c2 != no:
                c2 = math.ceil(c2 * gw / 8) * 8
            args = [c1, c2, *args[1:]]
            if m is C3:
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(chs[x] for x in f)
        elif m is Detect:
            args.append([chs[x] for x in f])
            c2 = chs[-1]
        else:
            c2 = chs[f]
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f = i, f
        module.type = name  # type: ignore[method-assign]  # as ultralytics' layers: .type is the yaml name
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        if i == 0:
            chs = []
        chs.append(c2)
    return nn.Sequential(*layers), sorted(set(save))


class YOLOv5(nn.Module):
    """A YOLOv5 detection model; `self.model` is the layer list every partition walks."""

    def __init__(self, cfg: dict, ch: int = 3):
        super().__init__()
        self.yaml = cfg
        self.model, self.save = parse_model(deepcopy(cfg), ch)
        self.names = {i: str(i) for i in range(cfg["nc"])}
        detect = cast(Detect, self.model[-1])
        # Strides from a forward pass, as YOLOv5 does; anchors are then stored in stride units.
        s = 256
        detect.training = True
        with torch.no_grad():
            feats = self.forward(torch.zeros(1, ch, s, s))
        detect.training = False
        detect.stride.copy_(torch.tensor([s / x.shape[-3] for x in feats]))
        detect.anchors /= detect.stride.view(-1, 1, 1)
        self.stride = detect.stride

    def forward(self, x: Any) -> Any:
        """Images -> Detect's output: decoded boxes in eval mode, the raw maps (a list) in training."""
        y: list[torch.Tensor | None] = []
        m: Any  # a layer carrying .i and .f (see parse_model)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self) -> YOLOv5:
        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self


def build_yolov5(size: str = "s", nc: int = 80, fused: bool = False) -> YOLOv5:
    if size not in SIZES:
        raise ValueError(f"unknown YOLOv5 size {size!r}; one of {sorted(SIZES)}")
    model = YOLOv5(yolov5_cfg(*SIZES[size], nc=nc))
    if fused:
        model.fuse()
    return model.eval()
