"""The edge's send buffer and flow control, and its configuration files."""

from __future__ import annotations

import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from split_infer.config import EdgeConfig, load_config
from split_infer.edge.outbox import Item, Outbox
from support.data import ROOT

pytestmark = pytest.mark.unit


def item(cam: str, seq: int, key: bool = True) -> Item:
    return Item(cam, seq, SimpleNamespace(capture_ts=1000.0 + seq + (0.5 if cam == "b" else 0.0)), {"key": key})


def drain(box: Outbox) -> list[tuple[str, int]]:
    out = []
    while (it := box.next_sendable()) is not None:
        out.append((it.camera, it.seq))
    return out


def test_full_buffer_drops_the_oldest():
    box = Outbox(capacity=3, window=8)
    dropped = [d for i in range(5) for d in box.push(item("a", i))]
    assert [d.seq for d in dropped] == [0, 1]
    assert [it.seq for it in box.queue] == [2, 3, 4]


def test_dropping_a_reference_drops_the_deltas_that_need_it():
    box = Outbox(capacity=4, window=8)
    for seq, key in ((0, True), (1, False), (2, False), (3, True)):
        box.push(item("a", seq, key))
    box.push(item("b", 0))
    # a0 was dropped; a1 and a2 cannot decode without it; a3 is a key frame and stays.
    assert [(it.camera, it.seq) for it in box.queue] == [("a", 3), ("b", 0)]


def test_window_and_per_camera_credit():
    box = Outbox(capacity=100, window=4)
    for i in range(6):
        box.push(item("a", i))
        box.push(item("b", i))
    assert drain(box) == [("a", 0), ("b", 0), ("a", 1), ("b", 1)]  # node-wide window of 4
    box.acked("a", 0, credit=1)  # camera a: one frame in flight at most now (a1 is)
    box.acked("b", 0, credit=4)
    assert drain(box) == [("b", 2), ("b", 3)]
    assert box.flow("a").inflight == 1 and box.flow("a").credit == 1


def test_credit_zero_allows_one_probe_after_a_pause():
    box = Outbox(capacity=100, window=4, probe_s=0.05)
    for i in range(3):
        box.push(item("a", i))
    assert box.next_sendable().seq == 0
    box.acked("a", 0, credit=0)  # queue full at the ingest
    assert box.next_sendable() is None  # paused
    time.sleep(0.06)  # deliberate: the 50 ms probe pause must pass
    assert box.next_sendable().seq == 1  # one probe
    assert box.next_sendable() is None


def test_retry_goes_back_in_order_and_is_dropped_when_overtaken():
    box = Outbox(capacity=100, window=8, probe_s=0.0)
    for i in range(3):
        box.push(item("a", i))
    assert [s for _, s in drain(box)] == [0, 1, 2]
    box.retry("a", 0, credit=4, backoff_s=0.0)
    assert box.queue[0].seq == 0 and box.queue[0].retried
    # seq 1 was accepted meanwhile: the ingest will answer seq 0 as an old duplicate, never queue it.
    got, overtaken = box.acked("a", 1, credit=4)
    assert got.seq == 1 and [it.seq for it in overtaken] == [0]
    assert not box.queue


def test_broken_stream_requeues_unanswered_frames_in_order():
    box = Outbox(capacity=100, window=8)
    for i in range(4):
        box.push(item("a", i))
    drain(box)
    box.acked("a", 0, credit=8)
    box.push(item("a", 4))
    assert box.requeue_inflight() == 3
    assert [it.seq for it in box.queue] == [1, 2, 3, 4]
    assert not box.inflight and box.flow("a").inflight == 0


def test_example_config_is_valid():
    cfg = load_config(ROOT / "deploy" / "edge" / "edge.example.yaml", EdgeConfig)
    assert cfg.cameras and cfg.model_dir and cfg.tls.ca and not cfg.tls.insecure  # the token: from a secret


def test_missing_model_is_a_clear_error(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text(f"model_dir: {tmp_path / 'nope'}\ncameras: [{{id: c, url: /x.mp4}}]\n")
    out = subprocess.run([sys.executable, "-m", "split_infer", "edge", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "no exported edge model" in out.stderr and "split-infer export" in out.stderr, out.stderr[-1000:]


def test_invalid_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "edge.yaml"
    cfg.write_text("cameras: [{id: c, url: /x.mp4, fps: -1}]\n")
    out = subprocess.run([sys.executable, "-m", "split_infer", "edge", "--config", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid configuration" in out.stderr and "fps" in out.stderr, out.stderr[-1000:]
