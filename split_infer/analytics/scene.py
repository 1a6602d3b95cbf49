"""A camera's lines and zones as the dashboard draws them (`GET /api/cameras/{camera}/scene`).

Written by analytics when it takes a camera, from the same config it counts with, so the lines on
the screen are the lines that count. Coordinates stay in their configured units; the dashboard
places them on the frame as split_infer/analytics/scene_config.py `resolve` does.
"""

from __future__ import annotations

import json
from typing import Any

from split_infer.config import CameraConfig


def scene_document(cam: CameraConfig) -> dict[str, Any]:
    return {
        "camera": cam.id,
        "frame_size": None if cam.frame_size is None else list(cam.frame_size),
        "lines": [{"name": ln.name, "units": (ln.units or cam.units).value, "a": list(ln.a), "b": list(ln.b)}
                  for ln in cam.lines],
        "zones": [{"name": z.name, "units": (z.units or cam.units).value, "polygon": [list(p) for p in z.polygon]}
                  for z in cam.zones],
    }


def scene_json(cam: CameraConfig) -> str:
    return json.dumps(scene_document(cam), separators=(",", ":"))
