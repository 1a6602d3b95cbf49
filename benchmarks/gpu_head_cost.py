"""Measure the real cloud head's cost per batch size on a CUDA GPU and write a cost file.

    python benchmarks/gpu_head_cost.py [--out benchmarks/cost_gpu.json] [--sizes 1 2 4 8 16]
                                       [--warmup 10] [--repeats 50] [--cut 4] [--imgsz 640x384]

YOLOv5s (split_infer.model.loading) split at `cut` (split_infer.model.partition); the edge part runs once per
batch size to make the features, then the cloud part is timed: `warmup` untimed runs, then
`repeats` runs each bracketed by torch.cuda.synchronize(); the file holds the median ms per batch.
fp32, torch.inference_mode, cuDNN benchmark off (the worker's settings). benchmarks/batching.py
uses benchmarks/cost_gpu.json, when present, as its GPU curve instead of the model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import machine  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "cost_gpu.json")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--imgsz", default="640x384", help="WIDTHxHEIGHT")
    ap.add_argument("--model", default="yolov5s")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU curve only", file=sys.stderr)
        return 2
    from split_infer.model.loading import load_model
    from split_infer.model.partition import partition

    w, h = (int(v) for v in args.imgsz.lower().split("x"))
    dev = torch.device("cuda")
    edge, cloud = partition(load_model(args.model), args.cut)
    edge, cloud = edge.to(dev).eval(), cloud.to(dev).eval()
    batch_ms, spread = {}, {}
    with torch.inference_mode():
        for b in args.sizes:
            feats = edge(torch.rand(b, 3, h, w, device=dev))
            for _ in range(args.warmup):
                cloud(feats)
            torch.cuda.synchronize()
            samples = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                cloud(feats)
                torch.cuda.synchronize()
                samples.append((time.perf_counter() - t0) * 1000.0)
            samples.sort()
            batch_ms[str(b)] = round(statistics.median(samples), 4)
            spread[str(b)] = {"p10": round(samples[len(samples) // 10], 4),
                              "p90": round(samples[len(samples) * 9 // 10], 4)}
            print(f"batch {b:3}: median {batch_ms[str(b)]:.3f} ms  ({batch_ms[str(b)] / b:.3f} ms/frame)",
                  file=sys.stderr)
    out = {"device": f"cuda: {torch.cuda.get_device_name(0)}", "batch_ms": batch_ms, "measured": True,
           "source": f"real head: split_infer {args.model} cut {args.cut}, {w}x{h}, fp32, torch {torch.__version__}",
           "statistic": "median", "warmup": args.warmup, "repeats": args.repeats, "spread_ms": spread,
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": machine()}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
