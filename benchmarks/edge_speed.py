"""Edge extractor speed: PyTorch fp32 eager against OpenVINO f32, default precision and INT8.

    python benchmarks/edge_speed.py --json out.json [--imgsz 640x384] [--cut 4] [--threads 1,2]
        [--int8-ir NAME=DIR ...]

Times, in one run and interleaved round by round on the same real frames, batch 1:
the edge part (layers 0..cut) and the full model, each in PyTorch fp32 eager, OpenVINO with the
f32 precision hint, OpenVINO's default precision (bf16 on CPUs that have it) and NNCF INT8.
Reports medians in ms per frame and the ratios to PyTorch. Also measures the fidelity of the split
model with each OpenVINO edge (mAP@0.5 agreement with the unsplit fp32 model's detections, on
frames the INT8 calibration did not see).

Against the limit: the edge part's multiply-accumulates per frame (counted off the IR graph,
split_infer/model/macs.py) over each median latency is the achieved GMAC/s, set against this
CPU's nominal peak for the precision that variant actually ran in (f32, bf16 or int8), on as many
cores as it had threads. The `variants` list has every edge configuration timed: each thread
count (PyTorch with as many threads as OpenVINO), OpenVINO's hints on the INT8 IR (LATENCY or
THROUGHPUT, CPU pinning on or off) and INT8 IRs exported with other NNCF options (`--int8-ir`,
whose edge.json carries their detection agreement), each with the precision, threads and streams
the compiled model reports and the kernels its convolutions got.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation import agreement_map50  # noqa: E402
from report import emit, machine  # noqa: E402
from split_infer.model.export import quantize_int8, to_openvino, video_frames  # noqa: E402
from split_infer.model.macs import count_macs, peak_macs, read_cpuinfo  # noqa: E402
from split_infer.model.postprocess import non_max_suppression  # noqa: E402
from split_infer.model.preprocess import letterbox, parse_imgsz  # noqa: E402

DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "street-640x360.mp4"


def compile_ov(ov_model, precision: str | None, threads: int | None = None, hint: str = "LATENCY",
               pinning: bool | None = None):
    import openvino as ov

    props: dict = {"PERFORMANCE_HINT": hint}  # LATENCY: as the edge runtime compiles it
    if precision:
        props["INFERENCE_PRECISION_HINT"] = precision
    if threads:
        props["INFERENCE_NUM_THREADS"] = threads
    if pinning is not None:
        props["ENABLE_CPU_PINNING"] = pinning
    return ov.Core().compile_model(ov_model, "CPU", props)


def is_int8(ov_model) -> bool:
    return any(n.get_type_name() == "FakeQuantize" for n in ov_model.get_ordered_ops())


def compiled_info(compiled, ov_model) -> dict:
    """What the compiled model really runs: OpenVINO's properties, and the convolutions' runtime precision
    and kernels (the runtime graph's rt_info; e.g. brgconv_avx512_I8 is the VNNI int8 kernel)."""
    info: dict = {}
    for key in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT",
                "ENABLE_CPU_PINNING", "ENABLE_HYPER_THREADING"):
        try:
            value = compiled.get_property(key)
            info[key] = value.get_type_name() if hasattr(value, "get_type_name") else str(value)  # ov.Type: f32
        except RuntimeError:  # a property this OpenVINO does not have
            info[key] = None
    kernels: dict[str, int] = {}
    for node in compiled.get_runtime_model().get_ordered_ops():
        rt = node.get_rt_info()
        if rt["layerType"].astype(str) == "Convolution":
            k = f"{rt['primitiveType'].astype(str)} ({rt['runtimePrecision'].astype(str)})"
            kernels[k] = kernels.get(k, 0) + 1
    info["ir_int8"] = is_int8(ov_model)
    info["conv_kernels"] = kernels
    return info


def run_precision(info: dict) -> str:
    """The precision the variant's convolutions ran in, for its peak (the lowest one most of them ran in)."""
    counts = {"i8": 0, "bf16": 0, "f32": 0}
    for kernel, n in info.get("conv_kernels", {}).items():
        prec = "i8" if kernel.endswith(("(u8)", "(i8)")) else "bf16" if kernel.endswith("(bf16)") else "f32"
        counts[prec] += n
    return max(counts, key=lambda p: counts[p]) if any(counts.values()) else "f32"


def int8_irs(specs: list[str]) -> list[tuple[str, Path]]:
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--int8-ir takes NAME=DIR, got {spec!r}")
        out.append((name, Path(path).expanduser()))
    return out


def edge_variants(torch_edge, edge_models: dict, threads: list[int], extra_irs: list[tuple[str, Path]]) -> list[dict]:
    """Every edge configuration to time: PyTorch and OpenVINO f32 / default / INT8 at each thread count,
    OpenVINO's hints on the INT8 IR at the most threads, and each extra INT8 IR at each thread count."""
    import openvino as ov

    variants: list[dict] = []
    for t in threads:
        variants.append({"name": f"torch_fp32_t{t}", "runtime": "pytorch", "ir": None, "threads": t,
                         "fn": (lambda x, t=t: torch_edge(x, t))})
        for label, ir, prec in (("ov_f32", "f32", "f32"), ("ov_default", "f32", None), ("ov_int8", "int8", None)):
            variants.append({"name": f"{label}_t{t}", "runtime": "openvino", "ir": ir, "threads": t, "hint": "LATENCY",
                             "model": edge_models[ir], "compiled": compile_ov(edge_models[ir], prec, t)})
    t_max = max(threads)
    for hint, pinning in (("THROUGHPUT", None), ("LATENCY", True), ("LATENCY", False)):
        variants.append({"name": f"ov_int8_{hint.lower()}_pin{pinning}_t{t_max}", "runtime": "openvino",
                         "ir": "int8", "threads": t_max, "hint": hint, "pinning": pinning, "model": edge_models["int8"],
                         "compiled": compile_ov(edge_models["int8"], None, t_max, hint, pinning)})
    for name, path in extra_irs:
        meta = json.loads((path / "edge.json").read_text())
        m = ov.Core().read_model(str(path / "edge.xml"))
        for t in threads:
            variants.append({"name": f"ov_int8_{name}_t{t}", "runtime": "openvino", "ir": str(path), "threads": t,
                             "hint": "LATENCY", "agreement": meta.get("agreement"), "model": m,
                             "compiled": compile_ov(m, None, t)})
    for v in variants:
        if "compiled" in v:
            v["fn"] = (lambda x, c=v["compiled"]: c(x))
    return variants


def time_interleaved(runners: dict, variants: list[dict], batches: list, rounds: int, reset) -> tuple[dict, list]:
    """Every round times every runner and variant once on the same frame, so machine noise (other
    processes on these 2 cores) spreads over all of them alike. `reset` restores PyTorch's threads."""
    timings: dict = {part: {k: [] for k in runners[part]} for part in ("edge", "full")}
    vtimes: list[list[float]] = [[] for _ in variants]
    for r in range(rounds + 3):
        x = batches[r % len(batches)][0][None]
        reset()
        for part in ("edge", "full"):
            for key, fn in runners[part].items():
                t = time.perf_counter()
                fn(x)
                if r >= 3:  # warm-up rounds are not counted
                    timings[part][key].append((time.perf_counter() - t) * 1000)
        for i, v in enumerate(variants):
            t = time.perf_counter()
            v["fn"](x)
            if r >= 3:
                vtimes[i].append((time.perf_counter() - t) * 1000)
    reset()
    return timings, vtimes


def sgemm_ceiling(threads: list[int], n: int = 2048, reps: int = 5) -> dict[int, float]:
    """fp32 GMAC/s a large PyTorch matmul reaches per thread count (best of `reps`): a measured ceiling,
    since /proc/cpuinfo's clock is the nominal one and the cores may run faster."""
    import torch

    before = torch.get_num_threads()
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[t] = round(n**3 / best / 1e9, 1)
    torch.set_num_threads(before)
    return out


def against_the_limit(variants: list[dict], vtimes: list[list[float]], macs, threads: list[int]) -> tuple[dict, list]:
    """MACs per frame over each variant's median, against this CPU's nominal peak for what it ran, and
    against that peak at the clock a large fp32 matmul implies (when it beats the nominal peak)."""
    cpu = read_cpuinfo()
    sgemm = sgemm_ceiling(threads)
    # The clock the measured matmul implies at full FMA use, from the fewest threads (the least disturbed
    # by other jobs on a shared machine); never below the nominal one.
    t0 = min(threads)
    factor = max(1.0, sgemm[t0] / peak_macs(cpu, "f32", t0)["gmacs_per_s"])
    clock = dict.fromkeys(threads, factor)
    torch_ms = {v["threads"]: statistics.median(vt) for v, vt in zip(variants, vtimes, strict=True)
                if v["runtime"] == "pytorch"}
    rows = []
    for v, vt in zip(variants, vtimes, strict=True):
        ms = statistics.median(vt)
        info = compiled_info(v["compiled"], v["model"]) if "compiled" in v else {
            "INFERENCE_PRECISION_HINT": "f32", "torch_threads": v["threads"]}
        prec = run_precision(info)
        peak = peak_macs(cpu, prec, min(v["threads"], os.cpu_count() or 1))
        gmacs = macs.total / (ms / 1000) / 1e9
        row = {k: v[k] for k in ("name", "runtime", "ir", "threads", "hint", "pinning", "agreement") if k in v}
        row.update({"median_ms": round(ms, 2), "p10_ms": round(float(np.percentile(vt, 10)), 2),
                    "p90_ms": round(float(np.percentile(vt, 90)), 2), "run_precision": prec,
                    "gmacs_per_s": round(gmacs, 1), "peak_gmacs_per_s": peak["gmacs_per_s"],
                    "fraction_of_peak": round(gmacs / peak["gmacs_per_s"], 3),
                    "fraction_of_peak_at_sgemm_clock": round(gmacs / peak["gmacs_per_s"] / clock[v["threads"]], 3),
                    "vs_torch_same_threads": round(torch_ms[v["threads"]] / ms, 2), "compiled": info})
        rows.append(row)
    int8_rows = [r for r in rows if r["run_precision"] == "i8"]
    best = min(int8_rows, key=lambda r: r["median_ms"]) if int8_rows else None
    summary = {
        "macs_per_frame": macs.total, "gmacs_per_frame": round(macs.total / 1e9, 3), "macs_by_type": macs.by_type,
        "macs_counted": "off the edge IR graph: Convolution / GroupConvolution / MatMul, output elements x input "
                        "channels per group x kernel size (split_infer/model/macs.py)",
        "peaks": {p: {t: peak_macs(cpu, p, t) for t in threads} for p in ("f32", "bf16", "i8")},
        "cpu": {"vendor": cpu.vendor, "family": cpu.family, "model_name": cpu.model_name, "mhz": cpu.mhz},
        "sgemm_fp32_gmacs_per_s": sgemm,
        "sgemm_implied_clock_mhz": round(cpu.mhz * factor),
        "sgemm_note": "PyTorch fp32 2048^3 matmul, best of 5: the fp32 ceiling measured here; when it beats the "
                      "nominal fp32 peak the cores run above /proc/cpuinfo's clock (boost), and "
                      "fraction_of_peak_at_sgemm_clock rescales every peak by that clock (measured with "
                      f"{t0} thread{'s' if t0 > 1 else ''})",
        "best_int8": best and {"name": best["name"], "median_ms": best["median_ms"], "threads": best["threads"],
                               "vs_torch_same_threads": best["vs_torch_same_threads"],
                               "vs_best_torch": round(min(torch_ms.values()) / best["median_ms"], 2)},
        "target_int8_vs_torch": 4.0,
    }
    return summary, rows


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
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}",
                        help="comma-separated thread counts for the edge variants (PyTorch and OpenVINO alike)")
    parser.add_argument("--int8-ir", action="append", default=[], metavar="NAME=DIR",
                        help="also time this exported INT8 edge IR (its edge.json gives the agreement); repeatable")
    args = parser.parse_args(argv)
    threads = sorted({int(t) for t in args.threads.split(",")})
    extra_irs = int8_irs(args.int8_ir)
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
        runners[part + "_ir"] = {"ov_f32_ms": ov_model, "ov_default_ms": ov_model, "ov_int8_ms": int8_model}

    edge_models = {"f32": runners["edge_ir"]["ov_f32_ms"], "int8": runners["edge_ir"]["ov_int8_ms"]}
    default_threads = torch.get_num_threads()

    def torch_edge(x, threads):
        torch.set_num_threads(threads)
        return runners["edge"]["torch_fp32_ms"](x)

    variants = edge_variants(torch_edge, edge_models, threads, extra_irs)
    load_before = os.getloadavg()
    timings, vtimes = time_interleaved(runners, variants, batches, args.rounds,
                                       lambda: torch.set_num_threads(default_threads))
    load_after = os.getloadavg()
    result = {part: {k: round(statistics.median(v), 2) for k, v in timings[part].items()} for part in timings}
    e = result["edge"]
    result["ratios"] = {"ov_default_vs_torch": round(e["torch_fp32_ms"] / e["ov_default_ms"], 2),
                        "ov_int8_vs_torch": round(e["torch_fp32_ms"] / e["ov_int8_ms"], 2),
                        "ov_f32_vs_torch": round(e["torch_fp32_ms"] / e["ov_f32_ms"], 2)}
    result["full_ratios"] = {k.replace("_ms", "_vs_torch"): round(result["full"]["torch_fp32_ms"] / v, 2)
                             for k, v in result["full"].items() if k != "torch_fp32_ms"}

    result["against_the_limit"], result["variants"] = against_the_limit(
        variants, vtimes, count_macs(edge_models["f32"]), threads)
    result["against_the_limit"].update({
        "full_model_macs_per_frame": count_macs(runners["full_ir"]["ov_f32_ms"]).total,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "timing": "all variants interleaved round by round on the same frames, batch 1, medians of "
                  f"{args.rounds} rounds after 3 warm-up rounds; the machine is shared with other jobs"})

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
                   "torch_threads": default_threads, "variant_threads": threads,
                   "openvino_compiled": {k: compiled_info(c, runners["edge_ir"][k])
                                         for k, c in runners["edge_compiled"].items()},
                   "openvino": __import__("openvino").get_version(),
                   "torch": torch.__version__})
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
