"""The project's process supervisor: child services in their own process groups, logs in a work
dir, started and stopped in order. The demo, the pipeline benchmark and the tests use it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis


class StartError(RuntimeError):
    """A child could not be started, or died while starting or running."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM arrived while waiting for a child to start."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_or_free(port: int) -> int:
    """`port` if nothing listens there, else a free one (the demo must not fail on a busy 8080)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


def _die_with_parent() -> None:
    """Child pre-exec: own process group, and SIGTERM when the demo process dies (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Children:
    """The demo's child processes, each in its own process group, logs in the work dir."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def spawn(self, name: str, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)
        self.procs[name] = p
        return p

    def log_tail(self, name: str, n: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def terminate(self, name: str, timeout: float = 15.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        return p.returncode

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):  # edge first, Redis last
            self.terminate(name)


def start_redis(children: Children, workdir: Path) -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise StartError("no redis-server binary on PATH: install it (apt-get install -y redis-server) "
                        "or point the demo at a running Redis with --redis-url redis://HOST:PORT/DB")
    port = free_port()
    data = workdir / "redis"
    data.mkdir(exist_ok=True)
    children.spawn("redis", [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(data), "--daemonize", "no"])
    r = redis.Redis(port=port)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            r.ping()
            return f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            if "redis" in children.dead():
                raise StartError(f"redis-server exited:\n{children.log_tail('redis')}") from None
            time.sleep(0.1)
    raise StartError("redis-server did not answer within 15 s")


def wait_log(children: Children, name: str, text: str, timeout: float,
             stopped: Callable[[], bool] = lambda: False) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopped():
            raise Interrupted
        if text in children.log_tail(name, 20000):
            return
        if name in children.dead():
            raise StartError(f"{name} exited during start-up:\n{children.log_tail(name)}")
        time.sleep(0.2)
    raise StartError(f"{name} did not start within {timeout:.0f} s:\n{children.log_tail(name)}")
