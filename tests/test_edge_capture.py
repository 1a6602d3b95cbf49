"""Camera capture on real video: newest-frame slot, fps cap, reconnect with backoff, watchdog."""

from __future__ import annotations

import time
from itertools import pairwise

import cv2
import numpy as np
import pytest

from split_infer.config import CameraConfig
from split_infer.edge.capture import Capture, CapturedFrame, FrameSlot, open_source, source_kind
from support.data import street_video
from support.media import HttpFeed, clip
from support.wait import wait_for

pytestmark = pytest.mark.unit


def test_source_kind():
    assert source_kind("0") == "device"
    assert source_kind("rtsp://cam/stream") == "stream"
    assert source_kind("HTTP://cam/mjpeg") == "stream"
    assert source_kind("/videos/a.mp4") == "file"


def test_slot_keeps_only_the_newest():
    slot = FrameSlot()
    img = np.zeros((2, 2, 3), np.uint8)
    assert slot.put(CapturedFrame("c", img, 0, 1, 0.0, 0.0)) is False
    assert slot.put(CapturedFrame("c", img, 1, 1, 0.0, 0.0)) is True  # replaced an untaken frame
    assert slot.take().index == 1
    assert slot.take() is None


def test_lossless_file_yields_every_frame_in_order(tmp_path):
    video = clip(tmp_path, 25)
    cap = Capture(CameraConfig(id="c0", url=str(video), realtime=False)).start()
    ref = cv2.VideoCapture(str(video))
    try:
        got = []
        while not cap.finished:
            f = cap.take(timeout=0.5)
            if f is not None:
                ok, want = ref.read()
                assert ok and np.array_equal(f.image, want), f"frame {f.index} differs from the file"
                got.append(f.index)
        assert got == list(range(25))
        s = cap.snapshot()
        assert s["state"] == "ended" and s["skipped"] == 0 and s["frames_taken"] == 25
    finally:
        cap.stop()


@pytest.mark.e2e
def test_slow_consumer_gets_fresh_frames_and_skips_are_counted():
    # The street video plays at ~10 fps in real time; the consumer takes one frame every 0.35 s.
    cap = Capture(CameraConfig(id="c1", url=str(street_video()), loop=True)).start()
    try:
        wait_for(lambda: cap.snapshot()["state"] == "online", 10, "camera online")
        indices, ages = [], []
        for _ in range(6):
            time.sleep(0.35)  # deliberate: the slow consumer's pace
            f = cap.take(timeout=1.0)
            assert f is not None
            indices.append(f.index)
            ages.append(time.time() - f.capture_ts)
        s = cap.snapshot()
        assert s["skipped"] >= 6, s  # ~3 frames arrive per take; all but the newest are skipped
        assert all(b - a >= 2 for a, b in pairwise(indices)), indices
        assert max(ages) < 0.25, f"a taken frame was {max(ages):.3f} s old: latency built up"
        assert s["frames_read"] == s["frames_taken"] + s["skipped"] + (1 if cap.slot.peek() else 0)
    finally:
        cap.stop()


@pytest.mark.e2e
def test_fps_cap_is_honoured():
    cap = Capture(CameraConfig(id="c2", url=str(street_video()), loop=True, fps=4)).start()
    try:
        wait_for(lambda: cap.snapshot()["state"] == "online", 10, "camera online")
        t0, stamps = time.monotonic(), []
        while time.monotonic() - t0 < 3.0:
            f = cap.take(timeout=0.2)
            if f is not None:
                stamps.append(f.capture_ts)
        s = cap.snapshot()
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert 3.4 <= rate <= 4.6, f"{rate:.2f} fps offered with a 4 fps cap"
        assert s["capped"] >= 10, s  # ~10 fps read, ~4 offered
    finally:
        cap.stop()


def test_missing_file_is_a_clear_error_then_dead():
    cap = Capture(
        CameraConfig(id="gone", url="/nonexistent/cam.mp4"), backoff_s=(0.05, 0.1), max_retries=2
    ).start()
    try:
        wait_for(lambda: cap.snapshot()["state"] == "dead", 5, "camera dead")
        err = cap.snapshot()["last_error"]
        assert "no such file: /nonexistent/cam.mp4" in err and "gave up after 2 retries" in err
    finally:
        cap.stop()


@pytest.mark.e2e
def test_http_camera_that_dies_and_comes_back_recovers_on_its_own(tmp_path):
    feed = HttpFeed(street_video(), loop=True).start()
    cap = Capture(CameraConfig(id="http", url=feed.url), backoff_s=(0.2, 1.0), read_timeout_s=3).start()
    try:
        wait_for(lambda: cap.snapshot()["frames_read"] >= 5, 15, "frames over HTTP")
        feed.stop()  # the camera goes away
        wait_for(lambda: cap.snapshot()["state"] == "reconnecting", 10, "the drop to be noticed")
        assert cap.snapshot()["last_error"]
        time.sleep(1.0)  # deliberate: a few failed reopen attempts (connection refused) with backoff
        feed = HttpFeed(street_video(), port=feed.port, loop=True).start()  # same URL comes back
        before = cap.snapshot()["frames_read"]
        wait_for(lambda: cap.snapshot()["frames_read"] >= before + 5, 20, "frames after recovery")
        s = cap.snapshot()
        assert s["state"] == "online" and s["reconnects"] >= 1 and s["last_error"] is None, s
        assert cap.take(timeout=1.0) is not None
    finally:
        cap.stop()
        feed.stop()


@pytest.mark.e2e
def test_watchdog_restarts_a_reader_stuck_in_a_silent_stream():
    # The feed freezes (SIGSTOP) with its TCP connection open: the reader blocks inside read()
    # (read timeout 60 s); the watchdog must retire it and a fresh reader must take over.
    feed = HttpFeed(street_video(), loop=True).start()
    cap = Capture(
        CameraConfig(id="frozen", url=feed.url),
        open_timeout_s=10, read_timeout_s=60, stall_timeout_s=1.5, backoff_s=(0.2, 1.0),
    ).start()
    try:
        wait_for(lambda: cap.snapshot()["frames_read"] >= 5, 15, "frames over HTTP")
        feed.freeze()
        wait_for(lambda: cap.snapshot()["stalls"] >= 1, 10, "the watchdog to fire")
        s = cap.snapshot()
        assert s["state"] == "reconnecting" and s["last_error"], s  # stalled, then refused
        feed.stop()  # SIGKILL works on a stopped process; its sockets close
        feed = HttpFeed(street_video(), port=feed.port, loop=True).start()
        before = s["frames_read"]
        wait_for(lambda: cap.snapshot()["frames_read"] >= before + 5, 20, "frames from a fresh reader")
        assert cap.snapshot()["state"] == "online"
    finally:
        cap.stop(timeout=10)
        feed.stop()
    assert not cap.threads_alive, "a reader thread outlived stop()"


def test_one_decode_thread_keeps_the_decode_in_the_reader_and_its_cpu_is_recorded(tmp_path):
    video = clip(tmp_path, 12)
    one = open_source(str(video), 5.0, 5.0, decode_threads=1)
    try:
        assert one.get(cv2.CAP_PROP_N_THREADS) == 1
    finally:
        one.release()
    cap = Capture(CameraConfig(id="c0", url=str(video), realtime=False), decode_threads=1).start()
    try:
        frames = [f for f in iter(lambda: cap.take(timeout=2.0), None)]
        assert len(frames) == 12
        # The decode's CPU clock is positive and, with no camera to wait for, within the wall time.
        assert all(0.0 < f.decode_ms <= f.capture_ms + 1.0 for f in frames)
    finally:
        cap.stop()
