"""Helpers for the core tests: the real weights, the real images, and a clear failure when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.fail(f"test data missing: {path} (the shared data folder beside the project)")
    return path


def bus_jpg() -> Path:
    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    if not path.exists():
        pytest.fail(f"{path} missing: the ultralytics wheel ships it; reinstall with `make setup`")
    return path


def yolov5s_ready() -> None:
    """The converted YOLOv5s must be in the cache (`make setup` pulls it); fetch it if not."""
    from split_infer.model import weights

    weights.pull("yolov5s")
