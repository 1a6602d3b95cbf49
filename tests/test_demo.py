"""`split-infer demo` end to end: a bounded run, a SIGTERM mid-run, and nothing left running after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from split_infer.codec import DEFAULT_CODEC
from support.data import ROOT, street_video
from support.processes import Services
from support.wait import wait_for

pytestmark = [pytest.mark.unit, pytest.mark.e2e]


def leftovers(marker: str) -> list[str]:
    """Command lines of live processes that mention the demo's work dir."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(f"{pid}: {cmd}")
    return found


def demo(services: Services, workdir: Path, *extra: str) -> subprocess.Popen:
    """`split-infer demo` on two feeds of the street video; its output is `services.log("demo")`."""
    video = str(street_video())
    return services.start("demo", "demo", "--camera", video, "--camera", video, "--workdir", str(workdir),
                          "--no-live", "--fps", "5", *extra)


def summary_of(output: str) -> dict:
    start = output.rindex("\n{\n") + 1  # the summary object starts at a line's beginning
    return json.loads(output[start:output.index("\n}", start) + 2])


def test_bounded_demo_run_accounts_for_every_frame_and_leaves_nothing(tmp_path):
    work = tmp_path / "demo-bounded"
    services = Services(tmp_path)
    p = demo(services, work, "--frames", "20")
    try:
        services.wait_exit("demo", 400)
    finally:
        services.kill_all()
    out = services.log("demo")
    assert p.returncode == 0, out[-4000:]
    s = summary_of(out)
    assert s["frames_acked"] == 20 and s["detection_records"] + s["cloud_dropped"] == 20, s
    assert s["detection_records"] > 0 and s["bytes_per_frame"] > 0
    assert s["codec"] == DEFAULT_CODEC and s["x264"]["bytes_per_frame"] > 0  # the default codec, beside x264
    assert "cam0" in out and "cam1" in out  # the final table
    assert not leftovers(str(work)), leftovers(str(work))


def test_sigterm_stops_the_demo_cleanly(tmp_path):
    work = tmp_path / "demo-sigterm"
    services = Services(tmp_path)
    p = demo(services, work)

    def delivering() -> bool:
        assert p.poll() is None, services.log("demo")[-4000:]
        try:
            stats = json.loads((work / "edge-stats.json").read_text())
            return sum(c["acked"] for c in stats["cameras"].values()) >= 5
        except (OSError, ValueError, KeyError):
            return False

    try:
        wait_for(delivering, 300, "the demo to deliver frames", every=0.5)
        assert leftovers(str(work)), "the services should be running now"
        # Encrypted and authenticated with no manual step: mutual TLS, and an edge token that no
        # command line shows (`ps`): the edge reads it from a 0600 file.
        token = (work / "edge.token").read_text()
        assert len(token) >= 24 and (work / "edge.token").stat().st_mode & 0o077 == 0
        assert not [c for c in leftovers(str(work)) if token in c], "the token is on a command line"
        assert "TLS, client certificates required" in (work / "ingest.log").read_text()
        p.send_signal(signal.SIGTERM)
        services.wait_exit("demo", 120)
    finally:
        services.kill_all()
    out = services.log("demo")
    assert p.returncode == 0, out[-4000:]
    assert summary_of(out)["detection_records"] > 0
    wait_for(lambda: not leftovers(str(work)), 5, "the demo's services to be gone")
    assert not leftovers(str(work)), leftovers(str(work))


def test_sigterm_during_start_up_stops_at_once(tmp_path):
    work = tmp_path / "demo-early"
    services = Services(tmp_path)
    p = demo(services, work)

    def starting() -> bool:  # the demo has begun starting its services
        assert p.poll() is None, "the demo did not start its services"
        return (work / "worker.log").exists()

    try:
        wait_for(starting, 120, "the demo to start its services", every=0.2)
        p.send_signal(signal.SIGTERM)
        services.wait_exit("demo", 40)
    finally:
        services.kill_all()
    out = services.log("demo")
    assert p.returncode == 130 and "interrupted during start-up" in out, out[-3000:]
    wait_for(lambda: not leftovers(str(work)), 5, "the demo's services to be gone")
    assert not leftovers(str(work)), leftovers(str(work))


def test_missing_redis_server_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH="/nonexistent")  # no redis-server on PATH
    out = subprocess.run(
        [sys.executable, "-m", "split_infer", "demo", "--camera", str(street_video()), "--workdir", str(tmp_path / "w"),
         "--no-live", "--frames", "1"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "no redis-server binary" in out.stdout and "--redis-url" in out.stdout, out.stdout[-2000:]
