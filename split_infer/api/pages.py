"""Cursor pagination over the Redis streams: cursors, and the Redis-side scan behind filtered pages.

A cursor is the stream id of the last entry a page covered (`1733050000123-0`); the next page
starts strictly after it. Across cameras (GET /events) it also names the camera
(`1733050000123-0:cam-1`): two streams may hold the same id, and the order is (id, camera).

A filtered page (events of one type) is filled by a Lua script that walks the stream newest first
and keeps only the matching entries, so non-matching ones never cross the network, until the page
is full or the range ends. Its work is bounded (`budget` entries per camera and request): when the
bound is hit first, the page may be short, but it always carries a `next_cursor` from which the
client goes on. A page without `next_cursor` means the range holds nothing more, never "gave up".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from split_infer.retention import StreamId

T = TypeVar("T")
SCAN_BUDGET = 5000  # stream entries one request may examine per camera (~a few ms of Redis time)
# At most 19 digits a part: always within Redis's two 64-bit numbers. Also the schema's patterns,
# so that a client (or schemathesis) knows a well-formed cursor before it sends one.
_ID = r"(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,18})"
CURSOR_PATTERN = rf"^{_ID}$"
POSITION_PATTERN = rf"^{_ID}:([A-Za-z0-9_.-]{{1,64}})$"
_CURSOR = re.compile(CURSOR_PATTERN)
_POSITION = re.compile(POSITION_PATTERN)


class BadCursor(ValueError):
    """A cursor this API did not hand out (the API answers 400 with the reason)."""


def parse_cursor(text: str) -> StreamId:
    """The cursor of a one-camera listing: a stream id such as `1733050000123-0`."""
    m = _CURSOR.fullmatch(text)
    if m is None:
        raise BadCursor(f"cursor {text[:80]!r} is not a cursor of this listing: pass the `next_cursor` of the "
                        "previous page unchanged (a Redis stream id, <ms>-<seq>, e.g. 1733050000123-0)")
    return StreamId(int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True, order=True)
class Position:
    """A place in the every-camera event listing, ordered newest last: (stream id, camera)."""

    id: StreamId
    camera: str

    @classmethod
    def parse(cls, text: str) -> Position:
        m = _POSITION.fullmatch(text)
        if m is None:
            raise BadCursor(f"cursor {text[:80]!r} is not a cursor of this listing: pass the `next_cursor` of "
                            "the previous page unchanged (<ms>-<seq>:<camera>, e.g. 1733050000123-0:cam-1)")
        return cls(StreamId(int(m.group(1)), int(m.group(2))), m.group(3))

    def __str__(self) -> str:
        return f"{self.id}:{self.camera}"

    def upper_bound(self, camera: str) -> str | None:
        """XREVRANGE's `max` for `camera`'s stream: the entries after this position in newest-first
        order (None: none can be)."""
        return str(self.id) if camera < self.camera else before(self.id)


def before(sid: StreamId) -> str | None:
    """XREVRANGE's exclusive `max` strictly before `sid`; None before 0-0, where Redis refuses '(0-0'."""
    return None if sid == StreamId(0, 0) else f"({sid}"


# KEYS[1]: a stream. ARGV: max, min (XREVRANGE bounds), type ('' = every entry), limit, budget.
# Returns {entries, cursor, more}: up to `limit` matching entries, newest first; more = 1 when the
# range may hold further matches, to be read from `cursor` on (exclusive).
SCAN_NEWEST_FIRST = """
local hi, lo, want = ARGV[1], ARGV[2], ARGV[3]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local out, scanned, last, cursor = {}, 0, '', ''
while scanned < budget do
  local ask = math.min(budget - scanned, 256)
  local chunk = redis.call('XREVRANGE', KEYS[1], hi, lo, 'COUNT', ask)
  for _, e in ipairs(chunk) do
    scanned = scanned + 1
    last = e[1]
    local match = want == ''
    if not match then
      local f = e[2]
      for i = 1, #f, 2 do
        if f[i] == 'type' then match = f[i + 1] == want break end
      end
    end
    if match then
      if #out == limit then return {out, cursor, 1} end  -- one more exists: the page is full
      out[#out + 1] = e
      cursor = last
    end
  end
  if #chunk < ask then return {out, '', 0} end  -- the range is exhausted
  hi = '(' .. last
end
if #out == limit then return {out, cursor, 1} end
return {out, last, 1}  -- the budget ran out first: go on from the last entry examined
"""


@dataclass(frozen=True)
class Page(Generic[T]):
    """A page of a listing: its items, the cursor of the next page (None: nothing more), and the
    malformed entries skipped within it."""

    items: list[T]
    next_cursor: str | None
    skipped: int


@dataclass(frozen=True)
class Scan:
    """One stream's part of a page: its matching entries (newest first) and where to go on (None: done)."""

    entries: list[tuple[str, dict[Any, Any]]]
    cursor: StreamId | None


async def scan_newest_first(r: Any, stream: str, hi: str | None, lo: str, type_: str | None, limit: int,
                            budget: int) -> Scan:
    """Up to `limit` entries of `stream` in XREVRANGE [lo, hi] whose `type` field is `type_` (None: all;
    hi None: an empty range)."""
    if hi is None:
        return Scan([], None)
    reply: Any = await r.eval(SCAN_NEWEST_FIRST, 1, stream, hi, lo, type_ or "", limit, max(budget, limit + 1))
    raw, cursor, more = reply
    entries = [(_text(eid), dict(zip(flat[::2], flat[1::2], strict=True))) for eid, flat in raw]
    return Scan(entries, StreamId.parse(_text(cursor)) if int(more) else None)


def upper(end_ms: int, cursor: StreamId | None) -> str | None:
    """XREVRANGE `max`: the range's end, or strictly before the cursor when that comes first."""
    return before(cursor) if cursor is not None and cursor.ms <= end_ms else str(end_ms)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
