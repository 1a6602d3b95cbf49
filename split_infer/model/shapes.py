"""The shapes of the tensors that cross a cut, worked out without torch in the asking process.

The ingest needs them to bound its decoders, but importing torch to get them kept ~890 MB resident
for the life of the process. So a short-lived child (`python -m split_infer.model.shapes`) loads
the model once, and the answer is cached as JSON per model file, cut and input size.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from split_infer.model.weights import cache_dir, converted_path

Shapes = dict[str, tuple[int, ...]]


class ShapesError(RuntimeError):
    """The child could not work out the shapes (missing weights, bad model spec...)."""


def _model_identity(model: str) -> str:
    """The spec plus the size and mtime of its weights file, so a replaced checkpoint is re-measured."""
    candidates = [Path(model), converted_path(model)]
    stats = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in candidates if p.is_file()]
    return "|".join([model, *stats])


def cache_path(model: str, cut: int, imgsz: tuple[int, int]) -> Path:
    key = f"{_model_identity(model)}|cut{cut}|{imgsz[0]}x{imgsz[1]}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "shapes" / f"{Path(model).stem}-cut{cut}-{imgsz[0]}x{imgsz[1]}-{digest}.json"


def _parse(text: str) -> Shapes:
    raw = json.loads(text)
    if not isinstance(raw, dict) or not raw:
        raise ValueError("expected a non-empty JSON object of tensor name -> shape")
    shapes: Shapes = {}
    for name, dims in raw.items():
        if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ValueError(f"tensor {name!r} has a bad shape {dims!r}")
        shapes[str(name)] = tuple(dims)
    return shapes


def expected_shapes(model: str, cut: int, imgsz: tuple[int, int], timeout_s: float = 600) -> Shapes:
    """Per-frame shapes (without batch) of the tensors crossing `cut` of `model` at WIDTHxHEIGHT."""
    path = cache_path(model, cut, imgsz)
    try:
        return _parse(path.read_text())
    except (OSError, ValueError):
        pass  # not cached yet, or a damaged cache file: measure again
    cmd = [sys.executable, "-m", "split_infer.model.shapes", model, str(cut), f"{imgsz[0]}x{imgsz[1]}"]
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ShapesError(f"working out the shapes of {model} cut {cut} took over {timeout_s:.0f} s") from None
    if run.returncode != 0:
        raise ShapesError(f"cannot work out the shapes of {model} cut {cut}: {run.stderr.strip()[-1000:]}")
    try:
        shapes = _parse(run.stdout)
    except ValueError as e:
        raise ShapesError(f"the shapes child printed something unexpected: {e}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    partial.write_text(json.dumps({k: list(v) for k, v in shapes.items()}))
    partial.replace(path)  # atomic: a concurrent reader sees the old state or the whole file
    return shapes


def main(argv: list[str] | None = None) -> int:
    """Child entry point: MODEL CUT WIDTHxHEIGHT -> JSON of the crossing shapes on stdout."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m split_infer.model.shapes MODEL CUT WIDTHxHEIGHT", file=sys.stderr)
        return 2
    # torch, in this short-lived child only: the point of the module
    from split_infer.model.loading import load_model
    from split_infer.model.partition import crossing_shapes
    from split_infer.model.preprocess import parse_imgsz

    shapes = crossing_shapes(load_model(args[0]), int(args[1]), parse_imgsz(args[2]))
    print(json.dumps({k: list(v) for k, v in shapes.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
