"""`Last-Event-ID` replay for the live feed: what a reconnecting client missed, from the Redis streams.

Every `detections` and `event` SSE carries the id `<kind>:<camera>:<stream id>` (e.g.
`event:cam-1:1733050000123-0`); EventSource sends the last one back as `Last-Event-ID` when it
reconnects (a new EventSource passes it as `?last_event_id=`). The feed then first sends the entries
that came after it, read from the streams (bounded: the newest REPLAY_MAX, with a `replay` event
saying how many and whether some were left out), then the live ones.

Why this is complete: the hub sends each read's entries sorted by stream id, and one XREAD sees
every stream at one instant, so an entry the client did not get is, in its own stream, after the
cursor, and in any other stream no older than the cursor's millisecond. Entries of other streams
within that same millisecond may come twice (same id: a client drops what it has seen).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi.sse import ServerSentEvent

from split_infer.api.store import Store, as_str, detection_record, event

REPLAY_MAX = 1000
KINDS = ("detections", "event")
ID_PATTERN = r"^(detections|event):([A-Za-z0-9_.-]{1,64}):(\d{1,19})-(\d{1,19})$"  # in the API schema too
_ID = re.compile(ID_PATTERN)


def event_id(kind: str, camera: str, entry_id: str) -> str:
    return f"{kind}:{camera}:{entry_id}"


def stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Cursor:
    """The last event a client received."""

    kind: str
    camera: str
    ms: int
    seq: int

    @classmethod
    def parse(cls, text: str) -> Cursor:
        m = _ID.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"Last-Event-ID {text[:80]!r} is not an id of this feed "
                             "(<detections|event>:<camera>:<ms>-<seq>)")
        return cls(m.group(1), m.group(2), int(m.group(3)), int(m.group(4)))

    @property
    def entry_id(self) -> str:
        return f"{self.ms}-{self.seq}"

    def lower_bound(self, kind: str, camera: str) -> str:
        """XRANGE lower bound of what the client may lack in stream (kind, camera)."""
        return f"({self.entry_id}" if (kind, camera) == (self.kind, self.camera) else f"{self.ms}-0"


async def replay(store: Store, cursor: Cursor, streams: dict[str, tuple[str, str]], positions: dict[str, str],
                 wants: Any) -> list[ServerSentEvent]:
    """The events after `cursor` up to the hub's `positions` (from there the live feed goes on), in
    stream-id order, the newest REPLAY_MAX of them, after a `replay` event that says what it holds."""
    keys = [k for k, (_, cam) in streams.items() if wants(cam) and k in positions]
    async with store.r.pipeline(transaction=False) as p:
        for k in keys:
            kind, cam = streams[k]
            p.xrevrange(k, max=positions[k], min=cursor.lower_bound(kind, cam), count=REPLAY_MAX + 1)
        replies = await p.execute()
    found: list[tuple[tuple[int, int], str, str, Any, str]] = []
    truncated = False
    for k, entries in zip(keys, replies, strict=True):
        kind, cam = streams[k]
        truncated |= len(entries) > REPLAY_MAX
        found += [(stream_order(as_str(i)), kind, cam, f, as_str(i)) for i, f in entries[:REPLAY_MAX]]
    found.sort(key=lambda x: x[0])
    if len(found) > REPLAY_MAX:
        found, truncated = found[-REPLAY_MAX:], True
    out = [ServerSentEvent(event="replay", data={"after": event_id(cursor.kind, cursor.camera, cursor.entry_id),
                                                 "events": len(found), "truncated": truncated})]
    for _, kind, cam, fields, entry_id in found:
        item = (detection_record if kind == "detections" else event)(cam, entry_id, fields)
        if item is not None:
            out.append(ServerSentEvent(event=kind, id=event_id(kind, cam, entry_id), raw_data=item.model_dump_json()))
    return out
