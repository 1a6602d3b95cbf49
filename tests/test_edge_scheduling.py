"""How the edge spreads its work: OpenVINO's hint and requests by camera count, and the decoder's threads."""

from __future__ import annotations

import pytest

from split_infer.config import EdgeConfig
from split_infer.edge.node import infer_requests, performance_hint

pytestmark = pytest.mark.unit


def _cfg(cameras: int, **kw) -> EdgeConfig:
    return EdgeConfig(cameras=[{"id": f"c{i}", "url": f"/v/{i}.mp4"} for i in range(cameras)], **kw)


class _Compiled:
    def __init__(self, optimal: int) -> None:
        self.optimal = optimal

    def optimal_requests(self) -> int:
        return self.optimal


def test_one_camera_asks_for_latency_and_several_for_throughput():
    assert performance_hint(_cfg(1)) == "LATENCY"
    assert performance_hint(_cfg(8)) == "THROUGHPUT"
    assert performance_hint(_cfg(8, performance_hint="latency")) == "LATENCY"  # an explicit setting wins


def test_requests_follow_openvino_but_never_exceed_one_per_camera():
    assert infer_requests(_cfg(8), _Compiled(4)) == 4
    assert infer_requests(_cfg(8), _Compiled(1)) == 2  # one prepared while one runs
    assert infer_requests(_cfg(1), _Compiled(4)) == 1  # one camera has one frame in flight
    assert infer_requests(_cfg(3, infer_requests=6), _Compiled(1)) == 6  # explicit


def test_each_camera_decodes_on_one_thread_unless_told_otherwise():
    assert _cfg(1).decode_threads == 1
    assert _cfg(1, decode_threads=3).decode_threads == 3
    with pytest.raises(ValueError):
        _cfg(1, decode_threads=0)
