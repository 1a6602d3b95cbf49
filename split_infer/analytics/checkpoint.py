"""The analytics checkpoint in Redis: versioned JSON of `CameraAnalytics.to_state()`, never pickle.

Redis can be written by other programs, so a checkpoint is data only: it is parsed as JSON (no
NaN or Infinity, bounded size and depth) and every value is checked before use; anything else is
one `CheckpointError` and the service starts that camera afresh (docs/analytics.md, "Checkpoint
format"; docs/security.md).
"""

from __future__ import annotations

import json
from typing import Any

from split_infer.analytics.camera import CameraAnalytics
from split_infer.analytics.state import StateError
from split_infer.config import CameraConfig

FORMAT = "split-infer analytics checkpoint"
VERSION = 2  # 1 was a pickle, no longer read
MAX_BYTES = 64 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: not JSON, another format or version, or an invalid state."""


def dump_checkpoint(analytics: CameraAnalytics) -> bytes:
    """The checkpoint of `analytics`; CheckpointError if its state holds a value JSON cannot keep."""
    doc = {"format": FORMAT, "version": VERSION, "analytics": analytics.to_state()}
    try:
        return json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
    except ValueError as e:  # a NaN or an infinity in the state: the checkpoint would not read back
        raise CheckpointError(f"camera {analytics.camera}: state not serialisable: {e}") from None


def _no_constant(name: str) -> Any:
    raise CheckpointError(f"the checkpoint holds {name}, which is not a number")


def parse_checkpoint(raw: bytes) -> dict[str, Any]:
    """The checkpoint's JSON document, format and version checked."""
    if len(raw) > MAX_BYTES:
        raise CheckpointError(f"the checkpoint is {len(raw)} bytes, more than {MAX_BYTES}")
    if not raw.lstrip()[:1] == b"{":
        raise CheckpointError("not a JSON checkpoint (an older pickle checkpoint is not read)")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except RecursionError:
        raise CheckpointError("the checkpoint's JSON is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError, an overlong integer
        raise CheckpointError(f"the checkpoint is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError("the JSON is not an analytics checkpoint")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {doc.get('version')!r}, expected {VERSION}")
    return doc


def load_checkpoint(raw: bytes, camera: CameraConfig) -> CameraAnalytics:
    """The camera's analytics from its checkpoint; CheckpointError (one clear message) otherwise."""
    doc = parse_checkpoint(raw)
    try:
        return CameraAnalytics.from_state(doc.get("analytics"), camera)
    except StateError as e:
        raise CheckpointError(f"invalid checkpoint: {e}") from None
