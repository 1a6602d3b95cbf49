"""`Last-Event-ID` replay of the live feed, over HTTP: `split-infer api` as its own process, real Redis.

A client reads some events, disconnects, entries land in the streams meanwhile, and it comes back
with the last id it saw (as EventSource does, header `Last-Event-ID`; or `?last_event_id=` for a new
EventSource): it must get exactly the missed entries, in stream order, then the live ones.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from split_infer.records import AnalyticsEvent
from support.api import api_server

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

TIMEOUT = httpx.Timeout(10, read=5)


def record(cam: str, seq: int) -> dict:
    """A detection record with the fields the worker writes (split_infer/cloud/worker.py)."""
    now = time.time()
    return {"camera": cam, "session": "s1", "seq": seq, "capture_ts": repr(now - 0.1), "ingest_ts": repr(now - 0.05),
            "done_ts": repr(now), "width": 640, "height": 360, "detections": "[]", "batch": 1, "head_ms": 20.0,
            "worker": "w1", "timings": "{}"}


def crossing(cam: str, seq: int) -> dict:
    return AnalyticsEvent("line_cross", cam, seq, time.time(), 7, "car", line="road", direction="in").to_fields()


class Feed:
    """The `detections`, `event` and `replay` events of an open SSE response, with their ids."""

    def __init__(self, resp: httpx.Response) -> None:
        self.lines = resp.iter_lines()

    def take(self, n: int, timeout: float = 15, kinds: tuple[str, ...] = ("detections", "event", "replay"),
             ) -> list[tuple[str, str | None, dict]]:
        """The next n events of `kinds` as (event, id, data)."""
        out: list[tuple[str, str | None, dict]] = []
        name, ident, data = "message", None, []
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                if name in kinds:
                    out.append((name, ident, json.loads("\n".join(data))))
                name, ident, data = "message", None, []
                if len(out) == n:
                    return out
            assert time.monotonic() < deadline, f"only {len(out)} of {n} events in {timeout} s: {out}"
        raise AssertionError(f"the feed ended after {len(out)} of {n} events")


def det(cam: str, seq: int) -> tuple[str, str, dict]:
    return ("detections", cam, record(cam, seq))


def ev(cam: str, seq: int) -> tuple[str, str, dict]:
    return ("event", cam, crossing(cam, seq))


def write(r, keys, entries: list[tuple[str, str, dict]]) -> list[str]:
    """XADD each (kind, camera, fields); the feed ids they must come back under."""
    ids = []
    for kind, cam, fields in entries:
        stream = keys.detections_stream(cam) if kind == "detections" else keys.events_stream(cam)
        ids.append(f"{kind}:{cam}:{r.xadd(stream, fields).decode()}")
        time.sleep(0.002)  # distinct milliseconds: the order of ids is the order written
    return ids


def test_a_reconnecting_client_gets_what_it_missed_then_the_live_feed(r, keys, prefix):
    r.sadd(keys.cameras, "cam-1", "cam-2")
    write(r, keys, [det("cam-1", 0), det("cam-2", 0)])
    with api_server(prefix) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as api:
        with api.stream("GET", "/api/v1/live") as resp:
            assert resp.status_code == 200
            feed = Feed(resp)
            feed.take(1, kinds=("state",))  # the hub follows the streams (from their tails) once it sent a state
            seen = write(r, keys, [det("cam-1", 1), ev("cam-2", 1)])
            got = feed.take(2)
            assert [i for _, i, _ in got] == seen, "live events carry <kind>:<camera>:<stream id>"
        last = seen[-1]

        # Missed while away: both cameras, both kinds.
        missed = write(r, keys, [det("cam-1", 2), det("cam-2", 2), ev("cam-1", 2), det("cam-1", 3)])
        with api.stream("GET", "/api/v1/live", headers={"Last-Event-ID": last}) as resp:
            assert resp.status_code == 200
            feed = Feed(resp)
            head, *replayed = feed.take(1 + len(missed))
            assert head[0] == "replay" and head[2] == {"after": last, "events": len(missed), "truncated": False}
            assert [i for _, i, _ in replayed] == missed, "exactly the missed ones, in stream order"
            assert [d["seq"] for k, _, d in replayed if k == "detections"] == [2, 2, 3]
            # Then the live feed, without a gap or a repeat.
            after = write(r, keys, [det("cam-2", 3)])
            assert [i for _, i, _ in feed.take(1)] == after

        # A new EventSource cannot send the header: the query parameter does the same; a camera filter holds.
        more = write(r, keys, [det("cam-2", 4), det("cam-1", 4)])
        params = {"last_event_id": after[0], "camera": "cam-1"}
        with api.stream("GET", "/api/v1/live", params=params) as resp:
            head, replayed = Feed(resp).take(2)
            assert head[2]["events"] == 1 and replayed[1] == more[1]


def test_replay_is_bounded_to_the_newest_entries_and_says_so(r, keys, prefix):
    from split_infer.api.replay import REPLAY_MAX

    r.sadd(keys.cameras, "cam-1")
    stream = keys.detections_stream("cam-1")
    first = r.xadd(stream, record("cam-1", 0)).decode()
    pipe = r.pipeline(transaction=False)
    for seq in range(1, REPLAY_MAX + 51):
        pipe.xadd(stream, record("cam-1", seq))
    pipe.execute()
    with api_server(prefix) as base, httpx.Client(base_url=base, timeout=TIMEOUT) as api:
        with api.stream("GET", "/api/v1/live", headers={"Last-Event-ID": f"detections:cam-1:{first}"}) as resp:
            head, *replayed = Feed(resp).take(1 + REPLAY_MAX, timeout=30)
        assert head[2]["events"] == REPLAY_MAX and head[2]["truncated"] is True
        seqs = [d["seq"] for _, _, d in replayed]
        assert seqs == list(range(51, REPLAY_MAX + 51)), "the newest ones, oldest first"

        bad = api.get("/api/v1/live", headers={"Last-Event-ID": "1733050000123-0; DROP"})
        assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["detail"]
