"""Real video for the edge and pipeline tests: the shared footage, short clips, a loopback HTTP feed.

Missing data or a missing ffmpeg binary is a test failure with a clear message, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STREET = DATA / "street-640x360.mp4"


def street_video() -> Path:
    if not STREET.exists():
        pytest.fail(f"test footage missing: {STREET} (the shared data folder beside the project)")
    return STREET


def ffmpeg_bin() -> str:
    exe = shutil.which("ffmpeg")
    if exe is None:
        pytest.fail("ffmpeg is not installed (apt-get install -y ffmpeg); the camera tests need it")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clip(tmp: Path, frames: int, name: str = "clip.mp4") -> Path:
    """The first `frames` frames of the street video, re-encoded losslessly enough to cut exactly."""
    out = tmp / name
    subprocess.run(
        [ffmpeg_bin(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(street_video()),
         "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", str(out)],
        check=True, timeout=60,
    )
    return out


class HttpFeed:
    """ffmpeg serving a video file over HTTP (MPEG-TS, stream copy) on loopback, one client.

    Stream copy keeps the bitstream, so a reader decodes exactly the frames of the file.
    """

    def __init__(self, video: Path, port: int | None = None, realtime: bool = True, loop: bool = False):
        self.video, self.port, self.realtime, self.loop = video, port or free_port(), realtime, loop
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/feed.ts"

    def start(self) -> HttpFeed:
        cmd = [ffmpeg_bin(), "-hide_banner", "-loglevel", "error"]
        if self.realtime:
            cmd.append("-re")
        if self.loop:
            cmd += ["-stream_loop", "-1"]
        cmd += ["-i", str(self.video), "-c", "copy", "-f", "mpegts", "-listen", "1", self.url]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30  # generous: ffmpeg starts slowly on a loaded 2-core machine
        while time.monotonic() < deadline:  # wait for ffmpeg to listen (probing the socket would
            time.sleep(0.1)  # consume its single client, so read the kernel's socket tables instead)
            if self.proc.poll() is not None:
                pytest.fail(f"ffmpeg HTTP feed exited with {self.proc.returncode}")
            if _serving(self.proc.pid, self.port):
                return self
        pytest.fail(f"ffmpeg HTTP feed did not listen on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


def _serving(pid: int, port: int) -> bool:
    """True when process `pid` owns a socket on `port` that listens or has accepted its client.

    ffmpeg `-listen 1` closes its listening socket as soon as one client connects. A camera that
    is already retrying connects within a fraction of a second, so LISTEN alone can come and go
    between two polls; the accepted connection (ESTABLISHED) means the feed is serving.
    """
    owned = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # the fd closed while we looked
            if target.startswith("socket:["):
                owned.add(target[8:-1])
    except OSError:
        return False  # the process is gone; the caller's poll() reports it
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()  # sl, local, remote, state, queues, tr, retrnsmt, uid, timeout, inode
            if parts[1].endswith(want) and parts[3] in ("0A", "01") and parts[9] in owned:
                return True  # 0A = LISTEN, 01 = ESTABLISHED
    return False
