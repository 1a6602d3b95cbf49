"""Batching policies replayed against traces of eight cameras, on two cost curves.

    .venv/bin/python benchmarks/batching.py --json out.json [--measure] [--cost-file F ...]
        [--trace FILE ...] [--duration 60] [--seed 0] [--slo-ms 200]

Cost curves (ms per batch of the cloud head):
- "cpu": this machine, the real YOLOv5s head at cut 4, 640x384, torch CPU (--threads, default 1),
  profiled with --measure (or when benchmarks/cost_cpu.json is missing) and saved there;
- "gpu": benchmarks/cost_gpu.json when a measured GPU curve exists (benchmarks/gpu_head_cost.py),
  else benchmarks/cost_gpu_model.json, a MODEL (fixed + per-frame cost), not a measurement;
- one more per --cost-file F (named after the file).

Traces (split_infer.batching.traces, fixed seed) are sized to each curve: rates are multiples of
the curve's batch-1 capacity mu1 = 1000 / ms(1): night 0.1 mu1, steady and poisson 0.6 mu1, rush
(a compressed day) peaking at 1.0 mu1 before bursts; each lasts --duration seconds, or longer
when needed for ~2000 frames at 0.6 mu1. They are written as CSV files under
--trace-dir; --trace FILE replays a recorded trace as is against every curve.

A curve whose batch of one cannot meet --slo-ms (ms(1) + ~60 ms of edge and network time >= 75%
of it) is also run at a relaxed objective of 4 x ms(1) (rounded up to 100 ms), as curve
"<curve>-slo<ms>", so that the policies can be told apart on it as well.

JSON layout: "traces" -> "<trace>@<curve>" -> policy -> {throughput_fps, p50_ms, p99_ms, slo_met,
per_camera_slo_met, shed, mean_batch, ...}; "curves" describes each curve; "targets" checks the
issue's targets per trace ("adaptive-gpu-prior", on the CPU curves only, is the adaptive policy
started from the GPU curve as its profile: it shows the policy learning that batching gains
nothing here; it is not one of the "other" policies of the targets). Every policy object is the one
the worker uses (make_policy).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine  # noqa: E402
from split_infer.batching import traces as T  # noqa: E402
from split_infer.batching.cost import CostModel  # noqa: E402
from split_infer.batching.policy import make_policy  # noqa: E402
from split_infer.batching.simulate import simulate  # noqa: E402
from split_infer.service import configure_logging  # noqa: E402

HERE = Path(__file__).resolve().parent
CPU_FILE = HERE / "cost_cpu.json"
GPU_FILE = HERE / "cost_gpu.json"
GPU_MODEL_FILE = HERE / "cost_gpu_model.json"
SIZES = (1, 2, 4, 8, 16)
LOADS = {"night": 0.1, "steady": 0.6, "poisson": 0.6, "rush": 1.0}  # x batch-1 capacity


def measure_cpu(threads: int, repeats: int) -> CostModel:
    import platform

    import torch

    from split_infer.batching.head_cost import head_runner

    torch.set_num_threads(threads)
    run, source = head_runner("cpu", cut=4, imgsz=(640, 384))
    cpu = platform.processor() or platform.machine()
    # min of the repeats: this machine is shared with other work, whose load otherwise shows up
    # as a batching gain that is not there (the medians are kept in the file too)
    model = CostModel.profile(run, SIZES, warmup=1, repeats=repeats, statistic="min",
                              device=f"cpu ({cpu}, {os.cpu_count()} cores, torch {threads} thread(s))")
    model.meta.update({"source": source, "imgsz": [640, 384], "cut": 4, "measured": True,
                       "load_average_1m": round(os.getloadavg()[0], 2),  # a shared machine: say how busy
                       "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return model


def policies(slo_ms: float, cost: CostModel) -> list:
    out = [make_policy("fixed", batch_size=b) for b in SIZES]
    out += [
        make_policy("triton", max_batch=16, name="triton"),  # Triton's defaults: no delay
        make_policy("triton", max_batch=16, preferred=(4, 8, 16), max_queue_delay_ms=10, name="triton-pref-d10"),
        make_policy("triton", max_batch=16, timeout_ms=slo_ms * 0.75, timeout_action="shed", name="triton-timeout"),
        make_policy("aimd", slo_ms=slo_ms, max_batch=16),
        make_policy("adaptive", slo_ms=slo_ms, max_batch=16, cost=cost.copy()),
    ]
    return out


def targets(results: dict[str, dict], bursty: bool) -> dict:
    ad = results["adaptive"]["slo_met"]
    others = {k: v["slo_met"] for k, v in results.items() if not k.startswith("adaptive")}
    fixed = {k: v for k, v in others.items() if k.startswith("fixed-")}
    bo, bf = max(others, key=others.get), max(fixed, key=fixed.get)
    t = {"adaptive": ad, "best_other": [bo, others[bo]], "best_fixed": [bf, fixed[bf]],
         "adaptive_ge_best_other": ad >= others[bo]}
    if bursty:
        t["bursty"] = {"adaptive_ge_99pct": ad >= 0.99, "best_fixed_le_95pct": fixed[bf] <= 0.95}
    return t


def markdown(out: dict) -> str:
    """Tables for docs/batching.md: slo_met per policy, then latency of adaptive vs the best other."""
    keys = list(out["traces"])
    pols = [p for p in out["traces"][keys[0]] if p != "adaptive-gpu-prior"]
    lines = ["| trace@curve (objective) | " + " | ".join(pols) + " |", "|---" * (len(pols) + 1) + "|"]
    for k in keys:
        row = out["traces"][k]
        best = max(row[p]["slo_met"] for p in pols if p != "adaptive")
        cells = []
        for p in pols:
            met = row[p]["slo_met"]
            cells.append(f"**{met:.4f}**" if met >= best and met > 0 else f"{met:.4f}")
        lines.append(f"| {k} ({out['trace_info'][k]['slo_ms']:g} ms) | " + " | ".join(cells) + " |")
    lines += ["",
              "| trace@curve | frames | policy | throughput fps | p50 ms | p99 ms | slo_met | worst camera | shed"
              " | mean batch |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        t = out["targets"][k]
        for p in dict.fromkeys(["adaptive", t["best_other"][0], t["best_fixed"][0]]):
            r = out["traces"][k][p]
            lines.append(f"| {k} | {out['trace_info'][k]['frames']} | {p} | {r['throughput_fps']} | {r['p50_ms']}"
                         f" | {r['p99_ms']} | {r['slo_met']:.4f} | {min(r['per_camera_slo_met'].values()):.4f}"
                         f" | {sum(r['shed'].values())} | {r['mean_batch']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True, help="write the results here")
    ap.add_argument("--measure", action="store_true", help="profile this machine's head now (else reuse cost_cpu.json)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads when measuring")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--cost-file", type=Path, action="append", default=[], help="another cost curve (JSON)")
    ap.add_argument("--trace", type=Path, action="append", default=[], help="replay a recorded trace file as is")
    ap.add_argument("--trace-dir", type=Path, default=ROOT / "runs" / "batching-traces")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per generated trace")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-ms", type=float, default=200.0)
    ap.add_argument("--markdown", type=Path, help="also write the result tables (markdown) here")
    ap.add_argument("--noise", type=float, default=0.05, help="lognormal sigma of each batch's service time")
    args = ap.parse_args(argv)
    configure_logging([("", logging.WARNING)])

    if args.measure or not CPU_FILE.exists():
        cpu = measure_cpu(args.threads, args.repeats)
        cpu.save(CPU_FILE)
    else:
        cpu = CostModel.load(CPU_FILE)
    curves = {"cpu": cpu}
    curves["gpu"] = CostModel.load(GPU_FILE if GPU_FILE.exists() else GPU_MODEL_FILE)
    for f in args.cost_file:
        curves[f.stem] = CostModel.load(f)

    args.trace_dir.mkdir(parents=True, exist_ok=True)
    recorded = [T.Trace.load(p) for p in args.trace]
    # (curve name, cost, objective): every curve at --slo-ms; a curve whose batch of one cannot
    # meet it (ms(1) + ~60 ms edge/network >= objective) again at a relaxed objective so that
    # the policies can be told apart there too.
    runs_for: list[tuple[str, CostModel, float]] = []
    for cname, cost in curves.items():
        runs_for.append((cname, cost, args.slo_ms))
        if cost.ms(1) + 60.0 >= 0.75 * args.slo_ms:
            relaxed = float(math.ceil(4 * cost.ms(1) / 100.0) * 100)
            runs_for.append((f"{cname}-slo{relaxed:g}", cost, relaxed))
    out: dict = {"slo_ms": args.slo_ms, "noise_sigma": args.noise, "seed": args.seed,
                 "layout": "traces['<trace>@<curve>'][policy] -> {throughput_fps, p50_ms, p99_ms, slo_met,"
                           " per_camera_slo_met, ...}",
                 "curves": {}, "trace_info": {}, "traces": {}, "targets": {}}
    for cname, cost, slo_ms in runs_for:
        mu1 = 1000.0 / cost.ms(1)
        out["curves"][cname] = {**cost.to_json(), "slo_ms": slo_ms, "batch1_capacity_fps": round(mu1, 2),
                                "best_capacity_fps": round(max(b * 1000.0 / cost.ms(b) for b in cost.sizes), 2)}
        # long enough for ~2000 frames at 0.6 mu1 (a slow CPU head otherwise sees a few dozen)
        duration = max(args.duration, 2000.0 / (0.6 * mu1))
        runs = [(T.GENERATORS[k](load * mu1, duration_s=duration, seed=args.seed), load) for k, load in LOADS.items()]
        runs += [(tr, None) for tr in recorded]
        for trace, load in runs:
            key = f"{trace.name}@{cname}"
            path = trace.save(args.trace_dir / f"{key.replace('@', '-')}.csv") if load is not None else None
            res = {}
            pols = policies(slo_ms, cost)
            if cost is cpu and "gpu" in curves:  # learning: profiled on a GPU, running on this CPU
                gpu_prior = make_policy("adaptive", slo_ms=slo_ms, max_batch=16, cost=curves["gpu"].copy())
                gpu_prior.name = "adaptive-gpu-prior"
                pols.append(gpu_prior)
            for pol in pols:
                r = simulate(trace, pol, cost.ms, slo_ms, noise=args.noise, seed=args.seed)
                res[pol.name] = r.summary()
                if pol.name == "adaptive-gpu-prior":
                    half = r.batch_sizes[len(r.batch_sizes) // 2:] or [0]
                    res[pol.name]["mean_batch_second_half"] = round(sum(half) / len(half), 3)
            out["traces"][key] = res
            out["trace_info"][key] = {"slo_ms": slo_ms, "frames": len(trace), "duration_s": round(trace.duration_s, 1),
                                      "cameras": len(trace.cameras), "mean_rate_fps": round(trace.rate_fps(), 2),
                                      "load_x_batch1_capacity": load,
                                      "file": str(path) if path else str(trace.meta.get("source"))}
            out["targets"][key] = targets(res, trace.name in T.BURSTY)
            # can a frame meet the objective at all? (batch of one + the fastest edge/network, 20 ms)
            feasible = cost.ms(1) + 20.0 < slo_ms
            out["trace_info"][key]["objective_feasible"] = out["targets"][key]["objective_feasible"] = feasible
            t = out["targets"][key]
            print(f"{key:18} {'' if feasible else '(objective infeasible) '}frames={len(trace):6}"
                  f"  adaptive {t['adaptive']:.4f}  best other {t['best_other'][0]} {t['best_other'][1]:.4f}"
                  f"  best fixed {t['best_fixed'][0]} {t['best_fixed'][1]:.4f}", file=sys.stderr)
    out["machine"] = machine()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(out))
    print(json.dumps(out["targets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
