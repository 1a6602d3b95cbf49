"""The fault matrix: each fault in turn on the running pipeline, and what it cost, frame by frame.

    .venv/bin/python benchmarks/faults.py --json benchmarks/results/faults.json

One pipeline (benchmarks/faultrig.py: embedded Redis with AOF, ingest, workers, analytics, API, an
edge with `--cameras` looped cameras of `--video` at `--fps`) runs through a quiet phase, then
each fault in turn: the fault, the fault's end (the restart, SIGCONT, the link restored), the
wait for records to flow again and a settling time. At the end the edge is stopped with SIGTERM
(it resolves every frame it holds) and the cloud drains. Each frame (camera, session, seq) belongs
to the phase during which the edge extracted it, and ends as one of: acknowledged by the ingest
and then recorded, shed or dead-lettered (with the reason); dropped or rejected on the edge (with
the reason); or never resolved because the edge itself was killed holding it. `lost` = acked and
none of those; `doubled` = more than one detection record for one frame. `recovery_s` = seconds
from the fault's end until a frame captured since the fault began has a record (a killed edge and
the stalled camera: captured since the fault ended; analytics: until it reads a record written
after the restart; the API: until /readyz answers 200, i.e. it serves and reaches Redis).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path

from faultrig import ROOT, Rig, Settings
from report import emit, machine
from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.frames import parse_record
from split_infer.apps.processes import StartError
from split_infer.config import CameraConfig
from split_infer.model.export import ensure_edge_ir
from split_infer.records import AnalyticsEvent, DeadLetter, DetectionResult, ShedRecord

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"
FAULTS = ["worker_sigkill", "ingest_sigkill", "analytics_sigkill", "redis_sigkill_aof", "worker_sigstop_5s",
          "link_cut_10s", "camera_stall_20s", "api_sigkill", "edge_sigkill"]
Frame = tuple[str, str, int]  # camera, session, seq


# -- the faults: each applies itself and returns the time its effect ended ---------------------------
def _kill_restart(name: str) -> Callable[[Rig], float]:
    def apply(rig: Rig) -> float:
        rig.kill(name)
        time.sleep(1.0)
        rig.restart(name)
        return time.time()
    return apply


def _sigstop(rig: Rig) -> float:
    rig.signal("worker0", signal.SIGSTOP)
    time.sleep(5.0)
    rig.signal("worker0", signal.SIGCONT)
    return time.time()


def _link_cut(seconds: float) -> Callable[[Rig], float]:
    def apply(rig: Rig) -> float:
        rig.proxy.cut()
        time.sleep(seconds)
        rig.proxy.restore()
        return time.time()
    return apply


def _camera_stall(rig: Rig) -> float:
    assert rig.feed is not None
    rig.feed.stall()
    time.sleep(20.0)
    rig.feed.resume()
    return time.time()


def fault_table(link_cut_s: float) -> dict[str, Callable[[Rig], float]]:
    return {"worker_sigkill": _kill_restart("worker0"), "ingest_sigkill": _kill_restart("ingest"),
            "analytics_sigkill": _kill_restart("analytics"), "redis_sigkill_aof": _kill_restart("redis"),
            "worker_sigstop_5s": _sigstop, "link_cut_10s": _link_cut(link_cut_s),
            "api_sigkill": _kill_restart("api"), "edge_sigkill": _kill_restart("edge"),
            "camera_stall_20s": _camera_stall}


def recovered(rig: Rig, fault: str, start: float, end: float) -> bool:
    if fault.startswith("analytics"):
        return rig.analytics_read_after(end)
    if fault.startswith("api"):
        return rig.api_healthy()
    since = start if not fault.startswith(("edge", "camera")) else end
    cams = rig.camera_ids[-1:] if fault.startswith("camera") else rig.camera_ids  # the stalled one
    try:
        for c in cams:
            for f in rig.entries(rig.keys.detections_stream(c), last=True):
                rec = DetectionResult.from_fields(f)
                if rec.capture_ts >= since and (rec.done_ts or 0.0) >= end:
                    return True
    except Exception:  # Redis restarting: not yet  # noqa: BLE001
        return False
    return False


def wait_until(rig: Rig, cond: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until `cond()`, reviving whatever died meanwhile; None on timeout."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rig.revive()
        if cond():
            return round(time.time() - t0, 2)
        time.sleep(0.25)
    return None


def boundary(rig: Rig) -> dict[str, tuple[str, int]]:
    """Where each camera's edge counter stands now: (session, next seq)."""
    st = rig.edge_stats()
    return {c: (st.get("session", ""), v.get("seq", 0)) for c, v in st.get("cameras", {}).items()}


# -- the ledger ---------------------------------------------------------------------------------------
def read_ledger(rig: Rig) -> dict:
    outcomes: dict[Frame, list[dict]] = defaultdict(list)
    for line in rig.sent_log.read_text().splitlines() if rig.sent_log.exists() else []:
        if line.strip():
            o = json.loads(line)
            outcomes[(o["camera"], o["session"], o["seq"])].append(o)
    records: Counter[Frame] = Counter()
    for c in rig.camera_ids:
        for f in rig.entries(rig.keys.detections_stream(c)):
            d = DetectionResult.from_fields(f)
            records[(d.camera, d.session, d.seq)] += 1
    shed = {}
    for f in (f for c in rig.camera_ids for f in rig.entries(rig.keys.dropped_stream(c))):
        sr = ShedRecord.from_fields(f)
        shed[(sr.camera, sr.session, sr.seq)] = sr.reason
    dead = {}
    for f in (f for c in rig.camera_ids for f in rig.entries(rig.keys.dead_letter_stream(c))):
        dl = DeadLetter.from_fields(f)
        dead[(dl.camera, dl.session, int(dl.seq) if dl.seq.isdigit() else -1)] = dl.reason
    return {"outcomes": outcomes, "records": records, "shed": shed, "dead": dead}


def reason_kind(reason: str) -> str:
    """A reason with its numbers (camera, frame) taken out, so alike ones are counted together."""
    return re.sub(r"\d+", "N", reason)[:200] or "(no reason)"


def account(ledger: dict, frames: set[Frame]) -> dict:
    """The row's counts for these frames."""
    outcomes, records, shed, dead = ledger["outcomes"], ledger["records"], ledger["shed"], ledger["dead"]
    row: dict = {"captured": len(frames), "acked": 0, "recorded": 0, "shed": Counter(), "dead_lettered": Counter(),
                 "edge_dropped": Counter(), "never_resolved": 0, "recorded_not_acked": 0, "lost": 0, "doubled": 0,
                 "lost_frames": [], "doubled_frames": []}
    for fr in sorted(frames):
        final = [o["outcome"] for o in outcomes.get(fr, [])]
        n = records.get(fr, 0)
        row["recorded"] += n > 0
        if n > 1:
            row["doubled"] += 1
            row["doubled_frames"].append(fr)
        if fr in shed:
            row["shed"][reason_kind(shed[fr])] += 1
        if fr in dead:
            row["dead_lettered"][reason_kind(dead[fr])] += 1
        if "acked" in final:
            row["acked"] += 1
            if n == 0 and fr not in shed and fr not in dead:
                row["lost"] += 1
                row["lost_frames"].append(fr)
        elif final:
            o = outcomes[fr][-1]
            row["edge_dropped"][reason_kind(o["outcome"] + (f": {o['error']}" if o.get("error") else ""))] += 1
            row["recorded_not_acked"] += n > 0
        else:
            row["never_resolved"] += 1
            row["recorded_not_acked"] += n > 0
    for k in ("shed", "dead_lettered", "edge_dropped"):
        row[k] = dict(row[k])
    row["lost_frames"], row["doubled_frames"] = row["lost_frames"][:20], row["doubled_frames"][:20]
    return row


def read_crossings(rig: Rig, sessions: list[str]) -> tuple[Counter[Frame], Counter[Frame]]:
    """Line crossings per frame: those the live analytics service published (its events streams; an
    event names camera, seq and capture ts, matched to the detection record with that camera and seq
    and the nearest capture ts, for the session), and the reference: a fresh offline CameraAnalytics
    with the same line run over every detection record that exists, per camera, in capture order
    (sessions in the order they ran, then seq; a doubled record once)."""
    order = {s: i for i, s in enumerate(sessions)}
    live: Counter[Frame] = Counter()
    ref: Counter[Frame] = Counter()
    for c in rig.camera_ids:
        recs = {}
        for f in rig.entries(rig.keys.detections_stream(c)):
            fr = parse_record(f)
            recs.setdefault((fr.session or "", fr.seq), fr)
        by_seq: dict[int, list[tuple[float, str]]] = defaultdict(list)
        for (sess, seq), fr in recs.items():
            by_seq[seq].append((fr.capture_ts, sess))
        for f in rig.entries(rig.keys.events_stream(c)):
            ev = AnalyticsEvent.from_fields(f)
            if ev.type == "line_cross" and by_seq.get(ev.seq):
                sess = min(by_seq[ev.seq], key=lambda t: abs(t[0] - ev.ts))[1]
                live[(c, sess, ev.seq)] += 1
        offline = CameraAnalytics(CameraConfig.model_validate({"id": c, "url": "redis", "lines": [rig.line]}))
        for (sess, seq), fr in sorted(recs.items(), key=lambda kv: (order.get(kv[0][0], len(order)), kv[0][1])):
            n = sum(ev.type == "line_cross" for ev in offline.process(fr))
            if n:
                ref[(c, sess, seq)] += n
    return live, ref


def crossings_row(live: Counter[Frame], ref: Counter[Frame], frames: set[Frame], captured: int,
                  baseline: float | None) -> dict:
    """A phase's crossings: live, reference, and the live rate per 100 captured frames against the
    no-fault phase's rate (`baseline`; None for the no-fault phase itself)."""
    n_live, n_ref = sum(live[f] for f in frames), sum(ref[f] for f in frames)
    rate = round(100 * n_live / captured, 2) if captured else None
    ratio = round(rate / baseline, 2) if rate is not None and baseline else None
    return {"crossings": n_live, "crossings_reference": n_ref, "crossings_per_100_frames": rate,
            "crossings_rate_vs_no_fault": ratio}


def phase_frames(ledger: dict, marks: list[dict[str, tuple[str, int]]], session_end: dict[str, dict[str, int]],
                 sessions: list[str]) -> list[set[Frame]]:
    """Frames of each phase: extracted between mark i and mark i+1 (sessions in the order they ran)."""
    every: set[Frame] = set(ledger["outcomes"]) | set(ledger["records"]) | set(ledger["shed"]) | set(ledger["dead"])
    order = {s: i for i, s in enumerate(sessions)}
    last: dict[tuple[str, str], int] = {}  # (camera, session) -> next seq, for frames no one reported
    for cam, sess, seq in every:
        last[(cam, sess)] = max(last.get((cam, sess), 0), seq + 1)
    for sess, cams in session_end.items():
        for cam, seq in cams.items():
            last[(cam, sess)] = max(last.get((cam, sess), 0), seq)
    every |= {(cam, sess, q) for (cam, sess), n in last.items() for q in range(n)}

    def pos(cam: str, sess: str, seq: int) -> tuple[int, int]:
        return (order.get(sess, len(order)), seq)

    out: list[set[Frame]] = [set() for _ in range(len(marks))]
    for fr in every:
        p = pos(*fr)
        i = 0
        for j, m in enumerate(marks):
            if fr[0] in m and p >= pos(fr[0], *m[fr[0]]):
                i = j
        out[i].add(fr)
    return out


def run(s: Settings, faults: list[str], workdir: Path, *, quiet_s: float = 15, settle_s: float = 8,
        recover_timeout: float = 120, link_cut_s: float = 10, drain_timeout: float = 120,
        log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    table = fault_table(link_cut_s)
    rig = Rig(s, workdir)
    t_start = time.time()
    try:
        rig.start()
        if wait_until(rig, lambda: all(v.get("acked", 0) > 0 for v in rig.edge_stats().get("cameras", {}).values())
                      and len(rig.edge_stats().get("cameras", {})) == s.cameras, 240) is None:
            raise StartError("no frames acknowledged within 240 s:\n" + rig.children.log_tail("edge"))
        log(f"pipeline up in {time.time() - t_start:.0f} s")
        marks, sessions = [boundary(rig)], [rig.edge_stats()["session"]]
        session_end: dict[str, dict[str, int]] = {}
        rows: list[dict] = []
        time.sleep(quiet_s)
        rows.append({"fault": "none", "recovery_s": None, "revived": []})
        for fault in faults:
            marks.append(boundary(rig))
            rig.revived = []
            t0, before = time.time(), rig.edge_stats()
            log(f"fault: {fault}")
            if fault == "edge_sigkill":
                session_end[before["session"]] = {c: v["seq"] for c, v in before["cameras"].items()}
            end = table[fault](rig)
            rec = wait_until(rig, partial(recovered, rig, fault, t0, end), recover_timeout)
            if fault == "edge_sigkill":
                wait_until(rig, lambda: rig.edge_stats().get("session") not in sessions, 60)
                sessions.append(rig.edge_stats().get("session", ""))
            log(f"  recovered in {rec} s")
            time.sleep(settle_s)
            after = rig.edge_stats()
            reconnects = (after.get("reconnects", 0) - before.get("reconnects", 0)
                          if after.get("session") == before.get("session") else None)
            rows.append({"fault": fault, "fault_s": round(end - t0, 2), "recovery_s": rec, "revived": rig.revived,
                         "edge_reconnects": reconnects})
            if fault.startswith("camera"):  # what the stalled camera's capture saw
                cap = [st.get("cameras", {}).get(rig.camera_ids[-1], {}).get("capture", {}) for st in (before, after)]
                rows[-1]["stalled_camera"] = {k: cap[1].get(k, 0) - cap[0].get(k, 0) for k in ("reconnects", "stalls")}
        marks.append(boundary(rig))  # frames after this: the drain phase, counted with the last row
        rig.expected_down.add("edge")
        rig.children.terminate("edge", 120)
        final = rig.edge_stats()
        session_end.setdefault(final.get("session", ""), {c: v["seq"] for c, v in final.get("cameras", {}).items()})
        ledger = read_ledger(rig)
        acked = {fr for fr, os_ in ledger["outcomes"].items() if any(o["outcome"] == "acked" for o in os_)}

        def settled() -> bool:
            led = read_ledger(rig)
            return all(fr in led["records"] or fr in led["shed"] or fr in led["dead"] for fr in acked)
        drained = wait_until(rig, settled, drain_timeout)
        ledger = read_ledger(rig)
        per_phase = phase_frames(ledger, marks[:-1], session_end, sessions)
        for row, frames in zip(rows, per_phase, strict=True):
            row.update(account(ledger, frames))
        totals = account(ledger, set().union(*per_phase))
        backlog = rig.analytics_backlog() if s.with_analytics else None  # all read: its events are written
        if s.with_analytics:
            live, ref = read_crossings(rig, sessions)
            base = None
            for i, (row, frames) in enumerate(zip(rows, per_phase, strict=True)):
                row.update(crossings_row(live, ref, frames, row["captured"], base))
                base = row["crossings_per_100_frames"] if i == 0 else base  # the no-fault phase's rate
            totals.update(crossings_row(live, ref, set().union(*per_phase), totals["captured"], base))
        return {"rows": rows, "totals": totals, "drained_s": drained, "seconds": round(time.time() - t_start, 1),
                "edge_final": {k: final.get(k) for k in ("session", "reconnects", "undelivered")},
                "analytics_backlog": backlog}
    finally:
        rig.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the result here too")
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--fps", type=float, default=2.0, help="per camera (2 x 8: the demo's load, real time on 2 cores)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, in order (of {', '.join(FAULTS)})")
    ap.add_argument("--quiet-s", type=float, default=15.0, help="the no-fault phase")
    ap.add_argument("--settle-s", type=float, default=8.0, help="after each recovery")
    ap.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    if not args.video.exists() or any(f not in FAULTS for f in faults):
        print(f"missing video {args.video} or unknown fault in {faults}", file=sys.stderr)
        return 1
    s = Settings(args.video, args.cameras, args.fps, args.workers, stalling_camera="camera_stall_20s" in faults)
    ensure_edge_ir("yolov5s", 4, s.imgsz)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        result = run(s, faults, workdir, quiet_s=args.quiet_s, settle_s=args.settle_s)
    except StartError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    out = {"benchmark": "faults", "cameras": s.cameras, "fps_per_camera": s.fps, "workers": s.workers,
           "video": args.video.name, "redis": "embedded, appendonly yes, appendfsync always",
           **result, "machine": {**machine(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}}
    emit(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
