"""Edge extractor speed: PyTorch fp32 eager against OpenVINO f32, default precision and INT8.

    python benchmarks/edge_speed.py --json out.json [--imgsz 640x384] [--cut 4]

Times, in one run and interleaved round by round on the same real frames, batch 1:
the edge part (layers 0..cut) and the full model, each in PyTorch fp32 eager, OpenVINO with the
f32 precision hint, OpenVINO's default precision (bf16 on CPUs that have it) and NNCF INT8.
Reports medians in ms per frame and the ratios to PyTorch. Also measures the fidelity of the split
model with each OpenVINO edge (mAP@0.5 agreement with the unsplit fp32 model's detections, on
frames the INT8 calibration did not see).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import agreement_map50  # noqa: E402
from report import emit  # noqa: E402
from split_infer.model.export import quantize_int8, to_openvino, video_frames  # noqa: E402
from split_infer.model.postprocess import non_max_suppression  # noqa: E402
from split_infer.model.preprocess import letterbox, parse_imgsz  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def compile_ov(ov_model, precision: str | None):
    import openvino as ov

    props = {"PERFORMANCE_HINT": "LATENCY"}  # as the edge runtime compiles it
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
    return ov.Core().compile_model(ov_model, "CPU", props)


def main(argv: list[str] | None = None) -> int:
    import torch

    from split_infer.model.loading import load_model
    from split_infer.model.partition import first_tensor, partition

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--model", default="yolov5s")
    parser.add_argument("--cut", type=int, default=4)
    parser.add_argument("--imgsz", default="640x384")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per variant (after warm-up)")
    parser.add_argument("--fidelity-frames", type=int, default=120)
    args = parser.parse_args(argv)
    imgsz = parse_imgsz(args.imgsz)
    if not args.video.exists():
        print(f"video not found: {args.video}", file=sys.stderr)
        return 1

    model = load_model(args.model)
    edge, _ = partition(model, args.cut)
    n_total = int(__import__("cv2").VideoCapture(str(args.video)).get(7))
    # Calibrate INT8 on the first half of the clip; time and evaluate on the second half.
    calib_count = min(120, n_total // 2 // 3)
    frames = video_frames(args.video, count=args.fidelity_frames, stride=max(1, (n_total // 2) // args.fidelity_frames),
                          start=n_total // 2)
    batches = [letterbox(f, imgsz) for f in frames]

    class Full(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return first_tensor(self.model(x))

    full = Full().eval()
    runners: dict[str, dict[str, callable]] = {}
    for part, module, names in (("edge", edge, edge.output_names), ("full", full, None)):
        ov_model = to_openvino(module, imgsz, names)
        int8_model = quantize_int8(to_openvino(module, imgsz, names), args.video, imgsz, calib_count)
        compiled = {"ov_f32_ms": compile_ov(ov_model, "f32"), "ov_default_ms": compile_ov(ov_model, None),
                    "ov_int8_ms": compile_ov(int8_model, None)}

        def torch_run(x, module=module):
            with torch.no_grad():
                return module(torch.from_numpy(x))

        runners[part] = {"torch_fp32_ms": torch_run, **{k: (lambda x, c=c: c(x)) for k, c in compiled.items()}}
        runners[part + "_compiled"] = compiled

    # Interleaved timing: every round times every variant once on the same frame, so machine noise
    # (other processes on these 2 cores) spreads over all variants alike.
    timings = {part: {k: [] for k in runners[part]} for part in ("edge", "full")}
    for r in range(args.rounds + 3):
        x = batches[r % len(batches)][0][None]
        for part in ("edge", "full"):
            for key, fn in runners[part].items():
                t = time.perf_counter()
                fn(x)
                if r >= 3:  # warm-up rounds are not counted
                    timings[part][key].append((time.perf_counter() - t) * 1000)
    result = {part: {k: round(statistics.median(v), 2) for k, v in timings[part].items()} for part in timings}
    e = result["edge"]
    result["ratios"] = {"ov_default_vs_torch": round(e["torch_fp32_ms"] / e["ov_default_ms"], 2),
                        "ov_int8_vs_torch": round(e["torch_fp32_ms"] / e["ov_int8_ms"], 2),
                        "ov_f32_vs_torch": round(e["torch_fp32_ms"] / e["ov_f32_ms"], 2)}
    result["full_ratios"] = {k.replace("_ms", "_vs_torch"): round(result["full"]["torch_fp32_ms"] / v, 2)
                             for k, v in result["full"].items() if k != "torch_fp32_ms"}

    # Fidelity: split model with each OpenVINO edge + the fp32 head, against the unsplit fp32 model.
    _, cloud = partition(model, args.cut)
    reference, predicted = [], {k: [] for k in ("ov_f32_ms", "ov_default_ms", "ov_int8_ms")}
    with torch.no_grad():
        for x, _lb in batches:
            xb = x[None]
            reference.append(non_max_suppression(first_tensor(model(torch.from_numpy(xb))).numpy()[0], 0.25, 0.45))
            for key, compiled in runners["edge_compiled"].items():
                out = compiled(xb)
                feats = {n: torch.from_numpy(np.array(out[compiled.output(n)])) for n in edge.output_names}
                predicted[key].append(non_max_suppression(cloud(feats).numpy()[0], 0.001, 0.45))
    result["fidelity_map50_vs_unsplit_fp32"] = {k.replace("_ms", ""): round(agreement_map50(reference, v), 4)
                                                for k, v in predicted.items()}
    result.update({"model": args.model, "cut": args.cut, "imgsz": list(imgsz), "rounds": args.rounds,
                   "fidelity_frames": len(batches), "int8_calibration": f"{calib_count} frames of the first half of "
                   f"{args.video.name}; timing and fidelity on its second half", "machine": machine(),
                   "torch_threads": torch.get_num_threads(), "openvino": __import__("openvino").get_version(),
                   "torch": torch.__version__})
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
