"""Which frame the latest snapshot of a camera shows (`Keys.snapshot_frame`, a hash).

The edge sends a thumbnail inside one FeatureFrame, so the ingest knows the frame it belongs to:
it writes the JPEG (`Keys.snapshot`) and this hash next to it. The two keys are written together
but not atomically (they may live on different Redis Cluster slots), so the hash holds the JPEG's
digest: a reader that finds another JPEG than the one named here knows the pair is torn and does
not claim a frame for it. The dashboard then draws the boxes of exactly that frame, or none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from split_infer.records.encoding import Fields, RawFields, RecordError, lenient


def jpeg_digest(jpeg: bytes) -> str:
    """A short digest that tells two thumbnails apart (not a security check)."""
    return hashlib.blake2b(jpeg, digest_size=8).hexdigest()


@dataclass(frozen=True)
class SnapshotFrame:
    camera: str
    session: str
    seq: int
    capture_ts: float
    digest: str  # jpeg_digest of the snapshot it names
    codec: str = ""  # the feature codec of that frame, e.g. "video" (shown on the dashboard)

    def to_fields(self) -> Fields:
        return {"camera": self.camera, "session": self.session, "seq": self.seq,
                "capture_ts": repr(self.capture_ts), "digest": self.digest, "codec": self.codec}

    @classmethod
    def from_fields(cls, raw: RawFields) -> SnapshotFrame | None:
        """The hash as written, or None when it is missing or unreadable (then no frame is claimed)."""
        try:
            g = lenient(raw)
            return cls(camera=g["camera"], session=g.get("session", ""), seq=int(g["seq"]),
                       capture_ts=float(g["capture_ts"]), digest=g["digest"], codec=g.get("codec", ""))
        except (KeyError, ValueError, TypeError, RecordError):
            return None

    def names(self, jpeg: bytes) -> bool:
        """Whether this hash is about `jpeg` (not a torn pair)."""
        return self.digest == jpeg_digest(jpeg)
