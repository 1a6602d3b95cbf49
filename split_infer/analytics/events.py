"""Analytics events (line crossings, zone entries and exits) and their Redis encodings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

EventType = Literal["line_cross", "zone_enter", "zone_exit"]


@dataclass(frozen=True)
class Event:
    type: EventType
    camera: str
    seq: int
    ts: float  # capture_ts of the frame it happened on
    track_id: int
    class_name: str
    line: str | None = None
    direction: Literal["in", "out"] | None = None
    zone: str | None = None
    dwell_s: float | None = None
    reason: Literal["left", "lost"] | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_fields(self) -> dict[str, str]:
        """Flat string fields for a stream entry."""
        return {k: (f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in self.as_dict().items()}

    def to_json(self, entry_id: str | None = None) -> str:
        d = self.as_dict()
        if entry_id is not None:
            d["id"] = entry_id
        return json.dumps(d, separators=(",", ":"))
