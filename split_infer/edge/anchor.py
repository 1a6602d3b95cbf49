"""What the camera's own H.264 stream would cost for the same frames: a live x264 anchor.

For each camera the node can also code the frames it extracts features from with x264 (veryfast,
zero latency, 2 s GOP, a fixed CRF), at the size the model sees, and count the bytes: the figure
the feature codec has to beat, on the same frames at the same rate. Pick the CRF at which x264's
detections agree with the reference as much as the feature codec's do (benchmarks/rate_fidelity.py
measures both curves; docs/bandwidth.md gives the CRF). It costs CPU, so it is off by default.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from av.video.codeccontext import VideoCodecContext


class X264Anchor:
    def __init__(self, crf: int, fps: float) -> None:
        self.crf, self.gop = crf, max(1, round(2 * fps))
        self._ctx: VideoCodecContext | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0
        self.bytes = 0

    def add(self, image_bgr: np.ndarray) -> int:
        """Code one frame (BGR, already at the model's content size); return its bytes."""
        import av  # heavy (FFmpeg's libraries): only when the x264 anchor is on

        h, w = image_bgr.shape[:2]
        h, w = h - h % 2, w - w % 2  # 4:2:0 wants even sizes
        if self._ctx is None or self._size != (w, h):
            ctx = av.CodecContext.create("libx264", "w")
            ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
            ctx.time_base, ctx.framerate = Fraction(1, 10), Fraction(10, 1)
            ctx.gop_size = self.gop
            ctx.options = {"crf": str(self.crf), "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
            self._ctx, self._size = ctx, (w, h)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_bgr[:h, :w]), format="bgr24")
        frame = frame.reformat(format="yuv420p")  # the camera's own limited-range conversion
        n = sum(p.size for p in self._ctx.encode(frame))
        self.frames += 1
        self.bytes += n
        return n

    @property
    def bytes_per_frame(self) -> float | None:
        return self.bytes / self.frames if self.frames else None
