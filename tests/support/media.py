"""Real video for the edge and pipeline tests: short clips of the shared footage, a loopback HTTP feed.

A missing ffmpeg binary is a test failure with a clear message, never a skip.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from split_infer.apps.processes import free_port
from support.data import street_video
from support.processes import Services, require_binary
from support.wait import wait_for


def ffmpeg_bin() -> str:
    return require_binary("ffmpeg", "apt-get install -y ffmpeg")


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
        self.services = Services()

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
        proc = self.services.spawn("ffmpeg", cmd)
        # Probing the socket would consume ffmpeg's single client: read the kernel's socket tables.
        # Generous timeout: ffmpeg starts slowly on a loaded 2-core machine.
        wait_for(lambda: self._exited(proc) or _serving(proc.pid, self.port), 30,
                 f"the ffmpeg HTTP feed to listen on port {self.port}")
        return self

    def _exited(self, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            pytest.fail(f"ffmpeg HTTP feed exited with {proc.returncode}:\n{self.services.log_tail('ffmpeg')}")
        return False

    def freeze(self) -> None:
        """The server hangs (SIGSTOP) with its client's connection open: a silent stream."""
        self.services.signal("ffmpeg", signal.SIGSTOP)

    def stop(self) -> None:
        """The feed dies at once, as a camera's stream server would crash."""
        self.services.kill("ffmpeg")


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
