"""Packaging (issue 13): one extra per role, no torch where a role does not need it, exact pins only
in constraints.txt, one OpenCV (headless), one source for the version.

The role checks ask pip itself what it would install (`pip install --dry-run --report`) against the
package index, so they fail, never skip, when pip cannot reach the index.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]

# The CUDA stack that torch drags in: what an API or analytics host must not download.
TORCH_STACK = re.compile(r"^(torch|torchvision|triton|nvidia-.*|cuda-.*)$")


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def _own_extras(requirement: str) -> set[str]:
    """`split-infer[worker,api]` -> {"worker", "api"}; other requirements -> empty."""
    req = Requirement(requirement)
    return set(req.extras) if _name(requirement) == PROJECT["name"] else set()


def _closure(extra: str) -> set[str]:
    """Every third-party requirement name an extra brings, through `split-infer[...]` references."""
    names: set[str] = set()
    for requirement in EXTRAS[extra]:
        nested = _own_extras(requirement)
        names |= set().union(*(_closure(e) for e in nested)) if nested else {_name(requirement)}
    return names


# -- metadata (fast) -------------------------------------------------------------------------------


@pytest.mark.unit
def test_pyproject_has_ranges_only_and_constraints_has_the_pins():
    requirements = list(PROJECT["dependencies"]) + [r for reqs in EXTRAS.values() for r in reqs]
    exact = [r for r in requirements if any(s.operator in ("==", "===") for s in Requirement(r).specifier)]
    assert not exact, f"exact pins belong in constraints.txt, not pyproject.toml: {exact}"
    assert not [r for r in requirements if Requirement(r).url], "no direct URLs in the package metadata"
    pinned = {_name(line.split("@")[0].split("==")[0]) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    assert {"torch", "torchvision", "opencv-python", "opencv-python-headless"} <= pinned


@pytest.mark.unit
def test_extras_per_role_and_cloud_is_their_union():
    roles = ("ingest", "worker", "api", "analytics")
    assert {*roles, "export", "train", "ultralytics", "cloud", "dev"} <= set(EXTRAS)
    assert _closure("cloud") == set().union(*(_closure(role) for role in roles))
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert "torch" not in base | _closure("ingest") | _closure("api") | _closure("analytics")
    for role in ("worker", "export", "train", "ultralytics"):
        assert "torch" in _closure(role), role
    assert "nncf" in _closure("export") and "ultralytics" in _closure("ultralytics")
    assert {"fastapi", "uvicorn", "redis"} <= _closure("api")
    assert {"trackers", "supervision", "paho-mqtt", "redis"} <= _closure("analytics")


@pytest.mark.unit
@pytest.mark.parametrize("module", ["split_infer.api.app", "split_infer.analytics.service"])
def test_torch_free_roles_import_no_torch(module):
    code = (f"import sys, {module}\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'ultralytics')]\n"
            "sys.exit(f'imports {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.unit
def test_the_version_has_one_source():
    version = PROJECT["version"]
    assert importlib.metadata.version("split-infer") == version, "stale install: pip install -e . again"
    written = [str(p.relative_to(ROOT)) for p in (ROOT / "split_infer").rglob("*.py")
               if re.search(rf"['\"]{re.escape(version)}['\"]", p.read_text())]
    assert not written, f"the version is read from the installed metadata, never written in code: {written}"


@pytest.mark.unit
def test_the_venv_has_one_opencv_and_it_is_headless():
    """The `opencv-python` that ultralytics and trackers require is the empty stand-in: cv2's files
    all belong to opencv-python-headless. (A venv made before the stand-in: `make setup`.)"""
    try:
        files = importlib.metadata.files("opencv-python") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    cv2_files = [str(f) for f in files if str(f).startswith("cv2")]
    assert not cv2_files, f"the real opencv-python is installed ({len(cv2_files)} cv2 files): run `make setup`"
    headless = importlib.metadata.files("opencv-python-headless") or []
    assert any(str(f).startswith("cv2/") for f in headless)


# -- what pip would install per role (the index) ---------------------------------------------------


def dry_run(target: str) -> list[dict[str, Any]]:
    """pip's own resolution of `pip install -c constraints.txt TARGET`, as a fresh host would get it."""
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
               "--ignore-installed", "--no-input", "-c", "constraints.txt", target]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        pytest.fail(f"pip could not resolve {target} (is the package index reachable?):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout)
    return list(report["install"])


def _names(install: list[dict[str, Any]]) -> set[str]:
    return {item["metadata"]["name"].lower().replace("_", "-") for item in install}


def _assert_one_headless_opencv(install: list[dict[str, Any]]) -> None:
    for item in install:
        if item["metadata"]["name"].lower() != "opencv-python":
            continue
        url = item["download_info"]["url"]
        assert url.rstrip("/").endswith("shims/opencv-python"), f"the real opencv-python would be installed: {url}"
        assert [_name(r) for r in item["metadata"].get("requires_dist", [])] == ["opencv-python-headless"]
    names = _names(install)
    assert "opencv-contrib-python" not in names
    if "opencv-python" in names or "numpy" in names:
        assert "opencv-python-headless" in names


@pytest.mark.unit
@pytest.mark.e2e
@pytest.mark.parametrize("target", [".", ".[ingest]", ".[api]", ".[analytics]"])
def test_torch_free_roles_install_no_torch(target):
    install = dry_run(target)
    names = _names(install)
    assert "split-infer" in names and "numpy" in names  # the report is what it claims to be
    heavy = sorted(n for n in names if TORCH_STACK.match(n))
    assert not heavy, f"pip install '{target}' would bring the torch stack: {heavy}"
    _assert_one_headless_opencv(install)


@pytest.mark.unit
@pytest.mark.e2e
@pytest.mark.parametrize("target", [".[worker]", ".[cloud,dev]"])
def test_torch_roles_get_torch_and_one_headless_opencv(target):
    install = dry_run(target)
    assert "torch" in _names(install)
    _assert_one_headless_opencv(install)
