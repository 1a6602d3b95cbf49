"""Long-running processes under test, through the project's own supervisor.

`Children` (split_infer/apps/processes.py) starts each child in its own process group, with its log in
a work dir, and makes it die with its parent: tests use it as the demo does, so a failed test
leaves nothing running. One-shot commands stay plain `subprocess.run`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from split_infer.apps.processes import Children

# One thread per numeric library: the test machine has 2 cores shared by every process.
SERVICE_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def require_binary(name: str, install: str) -> str:
    """The path of program `name`; fails the test, saying how to install it, when it is missing."""
    exe = shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is not installed ({install}); the tests need it")
    return exe


class Services(Children):
    """`Children` plus what tests need: `split-infer` commands, whole logs, signals, exit codes."""

    def __init__(self, workdir: Path | None = None) -> None:
        """Logs go to `workdir`, or to a temporary folder removed when the test session ends."""
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="split-infer-test-"))
            atexit.register(shutil.rmtree, workdir, ignore_errors=True)
        super().__init__(workdir)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`python -m split_infer ARGS` as child `name` (log: `log(name)`)."""
        return self.spawn(name, [sys.executable, "-m", "split_infer", *args], env={**SERVICE_ENV, **(env or {})})

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exited(self, name: str) -> bool:
        return self.procs[name].poll() is not None

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to child `name`'s process group, unless it has exited."""
        if not self.exited(name):
            try:
                os.killpg(self.procs[name].pid, sig)
            except ProcessLookupError:
                pass  # it exited since the check

    def wait_exit(self, name: str, timeout: float) -> int:
        try:
            return self.procs[name].wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not exit within {timeout} s:\n{self.log(name)[-3000:]}") from None

    def kill(self, name: str) -> None:
        """SIGKILL child `name`'s group, as a crash would, and reap it (no-op for an unknown name)."""
        if name in self.procs:
            self.signal(name, signal.SIGKILL)
            self.procs[name].wait(10)

    def kill_all(self) -> None:
        """Kill every child: a test's teardown, with nothing left to shut down gracefully."""
        for name in self.procs:
            self.kill(name)
