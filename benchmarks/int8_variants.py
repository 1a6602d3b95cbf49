"""INT8 edge IRs exported with other NNCF options, for edge_speed.py's `--int8-ir` (issue 14).

    python benchmarks/int8_variants.py --out /tmp/int8v [--only fbc_false,performance]

Each variant goes through `export_edge` exactly as `split-infer export --int8` does (same frames,
same held-out agreement written into edge.json), with only `quantize_int8`'s NNCF call changed.
Prints NAME=DIR lines to pass to edge_speed.py.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from split_infer.model import export as E  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"
FIRST_CONV = "__module.inner.layers.0.conv/aten::_convolution/Convolution"  # yolov5s layer 0 in the IR


def options() -> dict[str, dict]:
    import nncf  # optional heavy dependency

    mixed, perf = nncf.QuantizationPreset.MIXED, nncf.QuantizationPreset.PERFORMANCE
    first = nncf.IgnoredScope(names=[FIRST_CONV])
    return {
        "fbc_false": {"preset": mixed, "fast_bias_correction": False},
        "performance": {"preset": perf},
        "ignore_first": {"preset": mixed, "ignored_scope": first},
        "target_cpu": {"preset": mixed, "target_device": nncf.TargetDevice.CPU},
        "perf_fbc_false": {"preset": perf, "fast_bias_correction": False},
        "perf_ignore_first": {"preset": perf, "ignored_scope": first},
    }


def export_variant(name: str, opts: dict, out: Path, video: Path) -> Path:
    import nncf

    def quantize(ov_model, calibration, imgsz, count=120):
        frames = E.video_frames(calibration, count=count, stride=E.CALIBRATION_STRIDE)
        data = [E.letterbox(f, imgsz)[0][None] for f in frames]
        with contextlib.redirect_stdout(sys.stderr):
            return nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data), **opts)

    original = E.quantize_int8
    E.quantize_int8 = quantize
    try:
        return E.export_edge("yolov5s", 4, (640, 384), out / name, int8=True, calibration=video)
    finally:
        E.quantize_int8 = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--only", help="comma-separated variant names (default: all)")
    args = parser.parse_args(argv)
    table = options()
    names = args.only.split(",") if args.only else list(table)
    for name in names:
        print(f"{name}={export_variant(name, table[name], args.out, args.video)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
