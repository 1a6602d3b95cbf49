"""Paths the tests use: the project root, and the shared footage and weights beside the project.

The shared data folder is `../shared/data` relative to the repository (the only place that says
so in the tests). Missing data is a test failure with a clear message, never a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from split_infer.model import weights

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of the shared data folder; fails the test when it is missing."""
    path = DATA / name
    if not path.exists():
        pytest.fail(f"test data missing: {path} (the shared data folder beside the project; see SOURCES.md there)")
    return path


def street_video() -> Path:
    """The street footage (640x360, 734 frames, ~10 fps) most edge, cloud and analytics tests use."""
    return shared_file("street-640x360.mp4")


def bus_jpg() -> Path:
    """The bus image that the ultralytics wheel ships (its published detection figures are known)."""
    import ultralytics  # optional heavy dependency: only the tests that need the image pay for it

    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    if not path.exists():
        pytest.fail(f"{path} missing: the ultralytics wheel ships it; reinstall with `make setup`")
    return path


def yolov5s_ready() -> None:
    """The converted YOLOv5s must be in the cache (`make setup` pulls it); fetch it if not."""
    weights.pull("yolov5s")
