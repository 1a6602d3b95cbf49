"""The live x264 anchor the edge reports beside its feature bytes, and the content size it codes."""

from __future__ import annotations

import numpy as np
import pytest

from split_infer.edge.anchor import X264Anchor
from split_infer.model.export import video_frames
from split_infer.model.preprocess import Letterbox, content
from support.data import street_video

pytestmark = pytest.mark.unit


def test_content_is_the_letterbox_without_its_padding() -> None:
    frame = np.zeros((360, 640, 3), np.uint8)
    assert content(frame, (640, 384)) is frame  # already the model's width: nothing to resize
    small = content(frame, (320, 192))
    lb = Letterbox.fit(640, 360, 320, 192)
    assert small.shape == (round(360 * lb.scale), 320, 3)


def test_anchor_counts_real_x264_bytes_and_a_lower_crf_costs_more() -> None:
    frames = [content(f, (320, 192)) for f in video_frames(street_video(), count=12)]
    fine, coarse = X264Anchor(crf=18, fps=5), X264Anchor(crf=35, fps=5)
    sizes = [fine.add(f) for f in frames]
    for f in frames:
        coarse.add(f)
    assert sizes[0] > max(sizes[1:10]) and sizes[10] > max(sizes[1:10])  # an IDR every 2 s (10 frames at 5 fps)
    assert fine.frames == 12 and fine.bytes == sum(sizes) and fine.bytes_per_frame == sum(sizes) / 12
    assert coarse.bytes_per_frame < 0.5 * fine.bytes_per_frame
    assert X264Anchor(crf=23, fps=5).bytes_per_frame is None
