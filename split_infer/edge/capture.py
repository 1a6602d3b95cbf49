"""Camera capture: one reader thread per camera that keeps only the newest frame.

Latency must never build up behind a slow model, so a camera hands frames over through a slot
that holds one frame, not a queue: a frame the edge has not taken yet is replaced by the next one
and counted as skipped. Sources are opened through OpenCV's FFmpeg backend (RTSP, HTTP MJPEG or
MPEG-TS, files), device indices through OpenCV's default backend. A dropped stream is reopened
with exponential backoff; a watchdog (Frigate style) abandons a reader that stalls inside a
blocking read and starts a fresh one.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from split_infer import metrics
from split_infer.config import CameraConfig
from split_infer.redact import redact_url

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class CaptureState(str, enum.Enum):
    CONNECTING = "connecting"  # first open in progress
    ONLINE = "online"  # frames are flowing
    RECONNECTING = "reconnecting"  # lost or never opened; retrying with backoff
    ENDED = "ended"  # a file source without loop reached its end
    DEAD = "dead"  # gave up after max_retries
    STOPPED = "stopped"  # stop() was called


@dataclass(frozen=True)
class CapturedFrame:
    camera_id: str
    image: np.ndarray  # HxWx3 BGR uint8, as decoded
    index: int  # frames read since the source was opened (for a file: its frame number)
    connection: int  # how many times the source has been opened; (connection, index) is unique
    capture_ts: float  # unix seconds when the frame was read
    capture_ms: float  # wall time in read(): waiting for the source, then decoding
    decode_ms: float = 0.0  # CPU time the reader thread spent in read(): the decode's cost


@dataclass
class CaptureStats:
    state: CaptureState = CaptureState.CONNECTING
    last_error: str | None = None
    frames_read: int = 0  # decoded from the source
    frames_taken: int = 0  # handed to the edge
    skipped: int = 0  # replaced in the slot before the edge took them (newest-frame policy)
    capped: int = 0  # read but not offered, to honour the fps cap
    reconnects: int = 0  # successful reopenings after the first open
    stalls: int = 0  # readers the watchdog abandoned
    fps: float = 0.0  # frames offered per second (moving average)
    last_frame_ts: float | None = None

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        return d


def source_kind(url: str) -> str:
    """'device', 'stream' or 'file'."""
    if url.isdigit():
        return "device"
    if url.lower().startswith(STREAM_SCHEMES):
        return "stream"
    return "file"


def open_source(url: str, open_timeout_s: float, read_timeout_s: float,
                decode_threads: int | None = None) -> cv2.VideoCapture:
    """Open a source; raise OSError with a readable reason when it cannot be opened."""
    kind = source_kind(url)
    if kind == "device":
        cap = cv2.VideoCapture(int(url))
    else:
        path = url[len("file://") :] if url.startswith("file://") else url
        if kind == "file" and not Path(path).exists():
            raise OSError(f"no such file: {path}")
        # RTSP over TCP: UDP loses packets (grey smears) on busy networks; must be set before open.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000),
        ]
        if decode_threads is not None:
            # One decode thread keeps the whole decode in the reader thread, so its CPU clock is the
            # decode's cost, and many cameras share the cores without each camera's frame threads
            # competing (frame threading also holds a frame back).
            params += [cv2.CAP_PROP_N_THREADS, decode_threads]
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
    if not cap.isOpened():
        cap.release()
        raise OSError(f"cannot open {redact_url(url)} (unreachable, refused, or not a video FFmpeg can read)")
    return cap


class FrameSlot:
    """Holds the newest frame only. `put` replaces an untaken frame (and says so)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: CapturedFrame | None = None

    def put(self, frame: CapturedFrame) -> bool:
        """Store `frame`; True when it replaced a frame nobody took."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify_all()
            return replaced

    def put_blocking(self, frame: CapturedFrame, stop: threading.Event) -> bool:
        """Wait until the slot is empty, then store `frame` (lossless mode). False when stopped."""
        with self._cond:
            while self._frame is not None:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
            self._frame = frame
            self._cond.notify_all()
            return True

    def take(self, timeout: float = 0.0) -> CapturedFrame | None:
        with self._cond:
            if self._frame is None and timeout > 0:
                self._cond.wait_for(lambda: self._frame is not None, timeout)
            frame, self._frame = self._frame, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    def peek(self) -> bool:
        with self._cond:
            return self._frame is not None


class Capture:
    """One camera: a reader thread feeding a newest-frame slot, plus its watchdog.

    `realtime` file sources are paced at their native frame rate (they behave like a live camera);
    with `camera.realtime = False` a file yields every frame, as fast as the edge takes them, which
    tests and benchmarks use to process a known set of frames.
    """

    def __init__(
        self,
        camera: CameraConfig,
        *,
        open_timeout_s: float = 10.0,  # not longer: OpenCV's FFmpeg backend opens one source at a time
        read_timeout_s: float = 10.0,
        stall_timeout_s: float = 15.0,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        max_retries: int | None = None,
        decode_threads: int | None = None,  # the FFmpeg decoder's threads; None: FFmpeg's default
    ) -> None:
        self.camera = camera
        self.decode_threads = decode_threads
        self.kind = source_kind(camera.url)
        self.lossless = self.kind == "file" and not camera.realtime
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.backoff_s = backoff_s
        self.max_retries = max_retries
        self.slot = FrameSlot()
        self.stats = CaptureStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._generation = 0  # bumped by the watchdog to retire a stalled reader
        self._connections = 0
        self._busy_since: float | None = None  # when the current reader entered read()
        self._threads: list[threading.Thread] = []

    @property
    def id(self) -> str:
        return self.camera.id

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> Capture:
        self._spawn_reader()
        dog = threading.Thread(target=self._watchdog, name=f"watchdog-{self.id}", daemon=True)
        dog.start()
        self._threads.append(dog)
        return self

    def request_stop(self) -> None:
        """Ask the reader and the watchdog to stop, without waiting: many cameras stop at once."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and wait up to `timeout` for the threads (a reader blocked in FFmpeg may outlive it)."""
        self.request_stop()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self.stats.state not in (CaptureState.ENDED, CaptureState.DEAD):
                self.stats.state = CaptureState.STOPPED

    @property
    def threads_alive(self) -> bool:
        """A reader or the watchdog is still running (after `stop`: one stuck inside FFmpeg)."""
        return any(t.is_alive() for t in self._threads)

    @property
    def finished(self) -> bool:
        """The source will produce nothing more and the slot is empty."""
        over = (CaptureState.ENDED, CaptureState.DEAD, CaptureState.STOPPED)
        return self.stats.state in over and not self.slot.peek()

    def take(self, timeout: float = 0.0) -> CapturedFrame | None:
        frame = self.slot.take(timeout)
        if frame is not None:
            with self._lock:
                self.stats.frames_taken += 1
        return frame

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            d = self.stats.as_dict()
        d["url"] = redact_url(self.camera.url)
        return d

    # -- internals -------------------------------------------------------------------------------
    def _set(self, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.stats, k, v)

    def _spawn_reader(self) -> None:
        with self._lock:
            self._generation += 1
            gen = self._generation
            self._busy_since = None
        t = threading.Thread(target=self._run, args=(gen,), name=f"capture-{self.id}-{gen}", daemon=True)
        t.start()
        self._threads.append(t)

    def _current(self, gen: int) -> bool:
        return not self._stop.is_set() and gen == self._generation

    def _watchdog(self) -> None:
        """Abandon a reader stuck inside read() for longer than stall_timeout_s (a source that
        keeps its connection open but sends nothing can outlast FFmpeg's own read timeout)."""
        while not self._stop.wait(1.0):
            with self._lock:
                since = self._busy_since
            if since is not None and time.monotonic() - since > self.stall_timeout_s:
                log.warning("camera %s: no frame for %.0f s, restarting its reader", self.id, self.stall_timeout_s)
                with self._lock:
                    self.stats.stalls += 1
                    self.stats.state = CaptureState.RECONNECTING
                    self.stats.last_error = f"stalled: no frame for {self.stall_timeout_s:.0f} s"
                self._spawn_reader()

    def _busy(self, gen: int, on: bool) -> None:
        with self._lock:
            if gen == self._generation:  # a retired reader must not clear its successor's clock
                self._busy_since = time.monotonic() if on else None

    def _run(self, gen: int) -> None:
        failures = 0
        while self._current(gen):
            try:  # open() has its own timeout; the watchdog only guards reads
                cap = open_source(self.camera.url, self.open_timeout_s, self.read_timeout_s, self.decode_threads)
            except OSError as e:
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    self._set(state=CaptureState.DEAD, last_error=f"{e}; gave up after {failures - 1} retries")
                    return
                delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** (failures - 1))
                self._set(state=CaptureState.RECONNECTING, last_error=str(e))
                log.warning("camera %s: %s; retry in %.1f s", self.id, e, delay)
                self._stop.wait(delay)
                continue
            with self._lock:
                self._connections += 1
                if self._connections > 1:
                    self.stats.reconnects += 1
                connection = self._connections
            try:
                ended = self._read_loop(cap, gen, connection)
            finally:
                self._busy(gen, False)
                cap.release()
            if not self._current(gen):
                return
            if ended == "eof" and self.kind == "file" and not self.camera.loop:
                self._set(state=CaptureState.ENDED)
                return
            if ended == "eof" and self.kind == "file":
                failures = 0  # a looping file reopens at once
                continue
            failures += 1
            delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** (failures - 1))
            self._set(state=CaptureState.RECONNECTING, last_error=f"stream dropped ({ended}); retry in {delay:.1f} s")
            log.warning("camera %s: stream dropped (%s); retry in %.1f s", self.id, ended, delay)
            self._stop.wait(delay)

    def _pace(self, cap: cv2.VideoCapture) -> float:
        """Seconds between reads: a realtime file plays at its native rate; anything else at once."""
        if self.kind != "file" or self.lossless:
            return 0.0
        native_fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if not math.isfinite(native_fps) or native_fps <= 0 or native_fps > 240:
            native_fps = 25.0
        return 1.0 / native_fps

    def _read_loop(self, cap: cv2.VideoCapture, gen: int, connection: int) -> str:
        """Read until the source ends or fails; returns 'eof' or a reason."""
        pace = self._pace(cap)
        cap_period = 1.0 / self.camera.fps if self.camera.fps and not self.lossless else 0.0
        next_read = time.monotonic()
        next_offer = 0.0
        index = 0
        while self._current(gen):
            if pace:
                delay = next_read - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                next_read = max(next_read + pace, time.monotonic() - pace)  # never burst after a stall
            t0, cpu0 = time.monotonic(), time.thread_time()
            self._busy(gen, True)
            ok, image = cap.read()
            self._busy(gen, False)
            decode_ms = (time.thread_time() - cpu0) * 1000.0
            if not self._current(gen):
                return "abandoned"
            if not ok or image is None:
                return "eof" if self.kind == "file" else "read failed"
            now = time.monotonic()
            frame = CapturedFrame(self.id, image, index, connection, time.time(), (now - t0) * 1000.0, decode_ms)
            index += 1
            capped = bool(cap_period) and now < next_offer
            self._count_read(capped)
            if capped:
                continue
            next_offer = max(next_offer + cap_period, now - cap_period) if cap_period else 0.0
            if not self._offer(frame):
                return "abandoned"
        return "abandoned"

    def _count_read(self, capped: bool) -> None:
        with self._lock:
            self.stats.frames_read += 1
            if self.stats.state != CaptureState.ONLINE:
                self.stats.state = CaptureState.ONLINE
                self.stats.last_error = None
            if capped:
                self.stats.capped += 1
                metrics.EDGE_FRAMES.labels(self.id, "capped").inc()

    def _offer(self, frame: CapturedFrame) -> bool:
        """Hand `frame` to the slot (lossless: wait for room); False when stopped while waiting."""
        if self.lossless:
            if not self.slot.put_blocking(frame, self._stop):
                return False
            replaced = False
        else:
            replaced = self.slot.put(frame)
        with self._lock:
            s = self.stats
            if replaced:
                s.skipped += 1
                metrics.EDGE_FRAMES.labels(self.id, "skipped").inc()
            if s.last_frame_ts is not None:
                dt = max(frame.capture_ts - s.last_frame_ts, 1e-6)
                s.fps = 1.0 / dt if s.fps == 0 else 0.9 * s.fps + 0.1 / dt
            s.last_frame_ts = frame.capture_ts
        return True
