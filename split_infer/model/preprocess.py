"""Letterboxing: every path (edge, in-process, benchmarks) prepares frames here, and nowhere else.

A frame is scaled to fit the model's input rectangle (a multiple of the stride, 640x384 for 16:9
video) keeping its aspect ratio, and padded evenly with grey (114), as YOLOv5 was trained.
The geometry depends only on the frame size and the input size, so the cloud can recompute it
from the width and height that travel with each frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Letterbox:
    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    scale: float
    pad_x: int  # left padding in input pixels
    pad_y: int  # top padding

    @classmethod
    def fit(cls, src_w: int, src_h: int, dst_w: int, dst_h: int) -> Letterbox:
        if min(src_w, src_h, dst_w, dst_h) <= 0:
            raise ValueError(f"bad sizes for letterbox: {src_w}x{src_h} -> {dst_w}x{dst_h}")
        scale = min(dst_w / src_w, dst_h / src_h)
        new_w, new_h = round(src_w * scale), round(src_h * scale)
        return cls(src_w, src_h, dst_w, dst_h, scale, (dst_w - new_w) // 2, (dst_h - new_h) // 2)

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 in model-input pixels -> original-frame pixels, clipped to the frame."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, self.src_w)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, self.src_h)
        return out


def letterbox(frame_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """BGR HxWx3 uint8 frame -> (RGB 3xHxW float32 in [0, 1], geometry)."""
    if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR frame, got shape {frame_bgr.shape}")
    h, w = frame_bgr.shape[:2]
    lb = Letterbox.fit(w, h, *size)
    new_w, new_h = round(w * lb.scale), round(h * lb.scale)
    img = (frame_bgr if (new_w, new_h) == (w, h)
           else cv2.resize(frame_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR))
    canvas = np.full((lb.dst_h, lb.dst_w, 3), 114, np.uint8)
    canvas[lb.pad_y:lb.pad_y + new_h, lb.pad_x:lb.pad_x + new_w] = img
    chw = canvas[:, :, ::-1].transpose(2, 0, 1)
    return np.ascontiguousarray(chw, dtype=np.float32) / 255.0, lb


def content(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame at the letterbox's content size, before padding: what a pixel codec would send
    for this model (its letterbox is then a pure pad)."""
    h, w = frame_bgr.shape[:2]
    lb = Letterbox.fit(w, h, *size)
    new = (round(w * lb.scale), round(h * lb.scale))
    return frame_bgr if new == (w, h) else cv2.resize(frame_bgr, new, interpolation=cv2.INTER_AREA)


def parse_imgsz(text: str) -> tuple[int, int]:
    """'640x384' or '640' -> (width, height), multiples of 32."""
    parts = text.lower().split("x")
    try:
        w, h = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        w = h = 0
    if w <= 0 or h <= 0 or w % 32 or h % 32:
        raise ValueError(f"image size {text!r} must be WIDTHxHEIGHT in positive multiples of 32, e.g. 640x384")
    return w, h
