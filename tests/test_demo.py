"""`split-infer demo` end to end: a bounded run, a SIGTERM mid-run, and nothing left running after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from media import street_video

from split_infer.codec import DEFAULT_CODEC

ROOT = Path(__file__).resolve().parents[1]


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


def demo(workdir: Path, *extra: str) -> subprocess.Popen:
    video = str(street_video())
    return subprocess.Popen(
        [sys.executable, "-m", "split_infer", "demo", "--camera", video, "--camera", video, "--workdir", str(workdir),
         "--no-live", "--fps", "5", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"), start_new_session=True)


def summary_of(output: str) -> dict:
    start = output.rindex("\n{\n") + 1  # the summary object starts at a line's beginning
    return json.loads(output[start:output.index("\n}", start) + 2])


def test_bounded_demo_run_accounts_for_every_frame_and_leaves_nothing(tmp_path):
    work = tmp_path / "demo-bounded"
    p = demo(work, "--frames", "20")
    try:
        out, _ = p.communicate(timeout=400)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out[-4000:]
    s = summary_of(out)
    assert s["frames_acked"] == 20 and s["detection_records"] + s["cloud_dropped"] == 20, s
    assert s["detection_records"] > 0 and s["bytes_per_frame"] > 0
    assert s["codec"] == DEFAULT_CODEC and s["x264"]["bytes_per_frame"] > 0  # the default codec, beside x264
    assert "cam0" in out and "cam1" in out  # the final table
    assert not leftovers(str(work)), leftovers(str(work))


def test_sigterm_stops_the_demo_cleanly(tmp_path):
    work = tmp_path / "demo-sigterm"
    p = demo(work)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                stats = json.loads((work / "edge-stats.json").read_text())
                if sum(c["acked"] for c in stats["cameras"].values()) >= 5:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert p.poll() is None, p.stdout.read()[-4000:]
            time.sleep(0.5)
        else:
            raise AssertionError("the demo delivered no frames within 300 s")
        assert leftovers(str(work)), "the services should be running now"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 0, out[-4000:]
    assert summary_of(out)["detection_records"] > 0
    time.sleep(0.5)
    assert not leftovers(str(work)), leftovers(str(work))


def test_sigterm_during_start_up_stops_at_once(tmp_path):
    work = tmp_path / "demo-early"
    p = demo(work)
    try:
        deadline = time.monotonic() + 120
        while not (work / "worker.log").exists():  # the services are starting
            assert time.monotonic() < deadline and p.poll() is None, "the demo did not start its services"
            time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=40)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "interrupted during start-up" in out, out[-3000:]
    time.sleep(0.5)
    assert not leftovers(str(work)), leftovers(str(work))


def test_missing_redis_server_is_a_clear_error(tmp_path):
    env = dict(os.environ, PATH="/nonexistent")  # no redis-server on PATH
    out = subprocess.run(
        [sys.executable, "-m", "split_infer", "demo", "--camera", str(street_video()), "--workdir", str(tmp_path / "w"),
         "--no-live", "--frames", "1"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1
    assert "no redis-server binary" in out.stdout and "--redis-url" in out.stdout, out.stdout[-2000:]
