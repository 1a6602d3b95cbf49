"""Rate against detection fidelity on real footage: feature codecs vs JPEG vs H.264.

    python benchmarks/rate_fidelity.py --video ../shared/data/street-640x360.mp4 --frames 150 \
        --start 367 --json rate.json --plot rate.png [--learned model.npz ...]

Agreement = mAP@0.5 of a method's detections (traffic classes, ranked to conf 0.001) against the
unsplit fp32 YOLOv5s on the uncompressed frame (conf 0.25, NMS IoU 0.45); see
split_infer/evaluation.py. Every family is measured on the same frames, in one run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from split_infer.codec import make_decoder, make_encoder  # noqa: E402
from split_infer.evaluation import NMS_IOU, RANK_CONF, agreement_map50, f1_score  # noqa: E402
from split_infer.export import video_frames  # noqa: E402
from split_infer.postprocess import non_max_suppression  # noqa: E402
from split_infer.preprocess import letterbox, parse_imgsz  # noqa: E402

JPEG_QUALITIES = (30, 40, 50, 60, 70, 80, 90, 95)
H264_CRFS = (13, 18, 23, 28, 33, 38)
CODEC_SETTINGS: tuple[tuple[str, dict], ...] = (
    ("q8-zstd", {}),
    ("q6-zstd", {}),
    ("q4-zstd", {}),
    *(("temporal", dict(bits=b, deadzone=dz, key_interval=30)) for b, dz in
      ((8, 1), (8, 2), (8, 3), (6, 1), (6, 2), (5, 1), (5, 2), (4, 1), (4, 2))),
    *(("temporal", dict(bits=b, deadzone=dz, key_interval=300)) for b, dz in ((6, 2), (5, 2), (4, 2))),
)
# key frames every 2 s at 10 fps: the same GOP as the H.264 rows
LEARNED_SETTINGS: tuple[dict, ...] = tuple(dict(step=s, deadzone=d, key_interval=20) for s, d in (
    (1.0, 1), (1.0, 2), (1.5, 1), (1.5, 2), (2.0, 1), (2.0, 2), (3.0, 2)))


def read_frames(path: str, start: int, n: int) -> tuple[list[np.ndarray], float]:
    """`n` frames from `start`, and the clip's frame rate (the H.264 GOP is set in seconds)."""
    try:
        frames = video_frames(path, count=n, start=start)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{path}: {e}") from None
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    cap.release()
    return frames, fps


class Model:
    """The unsplit reference and its two halves at the cut, in torch fp32."""

    def __init__(self, name: str, cut: int, imgsz: tuple[int, int], threads: int) -> None:
        import torch

        from split_infer.models import load_model
        from split_infer.partition import partition

        torch.set_num_threads(threads)
        self.torch, self.imgsz = torch, imgsz
        self.edge, self.cloud = partition(load_model(name), cut)

    def features(self, frames_bgr: list[np.ndarray], batch: int = 8) -> list[dict[str, np.ndarray]]:
        out = []
        for i in range(0, len(frames_bgr), batch):
            x = np.stack([letterbox(f, self.imgsz)[0] for f in frames_bgr[i:i + batch]])
            with self.torch.no_grad():
                feats = self.edge(self.torch.from_numpy(x))
            for j in range(len(x)):
                out.append({k: v[j:j + 1].numpy().copy() for k, v in feats.items()})
        return out

    def detect(self, feats: list[dict[str, np.ndarray]], batch: int = 8) -> list[np.ndarray]:
        dets = []
        for i in range(0, len(feats), batch):
            chunk = feats[i:i + batch]
            x = {k: self.torch.from_numpy(np.concatenate([f[k] for f in chunk])) for k in chunk[0]}
            with self.torch.no_grad():
                pred = self.cloud(x).numpy()
            dets += [non_max_suppression(p, conf=RANK_CONF, iou=NMS_IOU) for p in pred]
        return dets

    def detect_frames(self, frames_bgr: list[np.ndarray]) -> list[np.ndarray]:
        return self.detect(self.features(frames_bgr))


def row(method: str, setting: str, nbytes: float, ref, dets, enc_ms: float, dec_ms: float, **extra) -> dict:
    r = {"method": method, "setting": setting, "bytes_per_frame": round(nbytes, 1),
         "agreement_map50": round(agreement_map50(ref, dets), 4), "f1": round(f1_score(ref, dets), 4),
         "encode_ms": round(enc_ms, 2), "decode_ms": round(dec_ms, 2), **extra}
    print(json.dumps(r), file=sys.stderr, flush=True)
    return r


def resize_for(frame: np.ndarray, imgsz: tuple[int, int]) -> np.ndarray:
    """The letterbox's content size: the frame as the model sees it, before padding."""
    h, w = frame.shape[:2]
    s = min(imgsz[0] / w, imgsz[1] / h)
    size = (round(w * s), round(h * s))
    return frame if size == (w, h) else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def jpeg_rows(model: Model, frames, ref, label: str) -> list[dict]:
    rows = []
    for q in JPEG_QUALITIES:
        t0 = time.perf_counter()
        blobs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes() for f in frames]
        t1 = time.perf_counter()
        decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]
        t2 = time.perf_counter()
        n = len(frames)
        rows.append(row("jpeg", f"q{q} {label}", sum(map(len, blobs)) / n, ref, model.detect_frames(decoded),
                        (t1 - t0) / n * 1e3, (t2 - t1) / n * 1e3, family="jpeg", resolution=label))
    return rows


def h264_rows(model: Model, frames, ref, fps: float, label: str, workdir: Path) -> list[dict]:
    rows = []
    h, w = frames[0].shape[:2]
    gop = max(1, round(2 * fps))
    raw = b"".join(np.ascontiguousarray(f).tobytes() for f in frames)
    for crf in H264_CRFS:
        out = workdir / f"h264_{label}_{crf}.h264"
        t0 = time.perf_counter()
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                        "-r", f"{fps:.3f}", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-tune",
                        "zerolatency", "-crf", str(crf), "-g", str(gop), "-pix_fmt", "yuv420p", "-f", "h264",
                        str(out)], input=raw, check=True)
        t1 = time.perf_counter()
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                             capture_output=True, check=True).stdout
        t2 = time.perf_counter()
        decoded = list(np.frombuffer(dec, np.uint8).reshape(-1, h, w, 3))
        if len(decoded) != len(frames):
            raise RuntimeError(f"H.264 round trip returned {len(decoded)} frames for {len(frames)}")
        n = len(frames)
        rows.append(row("h264", f"crf{crf} {label}", out.stat().st_size / n, ref, model.detect_frames(decoded),
                        (t1 - t0) / n * 1e3, (t2 - t1) / n * 1e3, family="h264", resolution=label, gop=gop))
        out.unlink()
    return rows


def codec_rows(model: Model, feats, ref, spec: str, settings: dict, family: str = "codec", **extra) -> list[dict]:
    learned_dir = str(Path(spec.split(":", 1)[1]).parent) if spec.startswith("learned:") else None
    enc, dec = make_encoder(spec, **settings), make_decoder(learned_dir=learned_dir)
    sizes, enc_t, dec_t, decoded, keys = [], 0.0, 0.0, [], []
    for f in feats:
        t0 = time.perf_counter()
        p = enc.encode(f)
        t1 = time.perf_counter()
        decoded.append(dec.decode(p))
        t2 = time.perf_counter()
        enc_t, dec_t = enc_t + t1 - t0, dec_t + t2 - t1
        sizes.append(len(p))
        keys.append(dec.last_frame.key)
    n = len(feats)
    key_sizes = [s for s, k in zip(sizes, keys) if k]
    setting = spec + "".join(f" {k}={v}" for k, v in settings.items() if k != "cut")
    return [row(spec.split(":")[0], setting, sum(sizes) / n, ref, model.detect(decoded), enc_t / n * 1e3,
                dec_t / n * 1e3, family=family, key_frames=len(key_sizes),
                key_frame_bytes=round(float(np.mean(key_sizes)), 1) if key_sizes else None,
                max_frame_bytes=max(sizes), **extra)]


def summarise(rows: list[dict]) -> dict:
    out: dict = {}
    for thr in ("0.95", "0.98"):
        best, cheapest = {}, {}
        for fam in ("codec", "jpeg", "h264"):
            fr = [r for r in rows if r["family"] == fam]
            ok = [r for r in fr if r["agreement_map50"] >= float(thr)]
            cheapest[fam] = min(ok, key=lambda r: r["bytes_per_frame"]) if ok else None
            # where none reaches: the family's most faithful row stands in for the ratios
            best[fam] = cheapest[fam] or (max(fr, key=lambda r: r["agreement_map50"]) if fr else None)
        ratio = lambda a, b: round(a["bytes_per_frame"] / b["bytes_per_frame"], 3) if a and b else None  # noqa: E731
        out[thr] = {**{fam: cheapest[fam] and {k: cheapest[fam][k] for k in
                                                 ("setting", "bytes_per_frame", "agreement_map50")}
                       for fam in cheapest},
                    "codec_over_jpeg": ratio(best["codec"], best["jpeg"]),
                    "codec_over_h264": ratio(best["codec"], best["h264"]),
                    "reached": {fam: cheapest[fam] is not None for fam in cheapest}}
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(7 * len(results), 5), squeeze=False)
    for ax, res in zip(axes[0], results):
        groups: dict[str, list[dict]] = {}
        for r in res["rows"]:
            key = r["family"] if r["family"] == "codec" else f"{r['family']} ({r.get('resolution', '')})"
            key = r.get("curve", key)
            groups.setdefault(key, []).append(r)
        for name, rs in groups.items():
            rs = sorted(rs, key=lambda r: r["bytes_per_frame"])
            style = "o" if name.startswith(("codec", "learned")) else "-o"
            ax.plot([r["bytes_per_frame"] / 1000 for r in rs], [r["agreement_map50"] for r in rs], style,
                    label=name, ms=4)
        for thr in (0.95, 0.98):
            ax.axhline(thr, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("kB per frame (log)")
        ax.set_ylabel("agreement mAP@0.5 vs unsplit fp32")
        ax.set_title(f"{Path(res['video']).name}: frames {res['frames'][0]}-{res['frames'][1] - 1}")
        ax.set_ylim(max(0.0, min(r["agreement_map50"] for r in res["rows"]) - 0.02), 1.005)
        ax.grid(True, which="both", lw=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_video(args, model: Model, video: str, workdir: Path) -> dict:
    frames, fps = read_frames(video, args.start, args.frames)
    h, w = frames[0].shape[:2]
    t0 = time.perf_counter()
    feats = model.features(frames)
    ref = model.detect(feats)
    ref_ms = (time.perf_counter() - t0) / len(frames) * 1e3
    res: dict = {"video": video, "frames": [args.start, args.start + len(frames)], "fps": round(fps, 3),
                 "native": [w, h], "imgsz": list(model.imgsz), "cut": args.cut, "model": args.model,
                 "reference": {"method": "unsplit fp32", "ms_per_frame": round(ref_ms, 1),
                               "detections_per_frame": round(float(np.mean(
                                   [(d[:, 4] >= 0.25).sum() for d in ref])), 2)},
                 "notes": []}
    rows = []
    small = [resize_for(f, model.imgsz) for f in frames]
    same = small[0].shape == frames[0].shape
    if same:
        res["notes"].append(f"native resolution {w}x{h} equals the model's input resolution: "
                            "the native rows would duplicate the model-resolution rows and are not repeated")
    if "jpeg" in args.families:
        rows += jpeg_rows(model, small, ref, "model-res")
        if not same:
            rows += jpeg_rows(model, frames, ref, "native")
    if "h264" in args.families:
        rows += h264_rows(model, small, ref, fps, "model-res", workdir)
        if not same:
            rows += h264_rows(model, frames, ref, fps, "native", workdir)
    if "codec" in args.families:
        for spec, settings in CODEC_SETTINGS:
            rows += codec_rows(model, feats, ref, spec, dict(settings, cut=args.cut), curve="codec (training-free)")
    trained = []
    for path in args.learned:
        from split_infer.codec.learned import LearnedModel

        meta = LearnedModel.load(path).meta
        train = meta.get("trained_on", {})
        overlap = 0
        if Path(train.get("video", "")).name == Path(video).name:
            lo, hi = train.get("frames", [0, 0])
            overlap = max(0, min(hi, args.start + len(frames)) - max(lo, args.start))
        trained.append({"model": path, "trained_on": train, "overlap_with_eval_frames": overlap})
        for s in LEARNED_SETTINGS:
            rows += codec_rows(model, feats, ref, f"learned:{path}", s,
                               curve=f"codec (learned, {Path(path).stem})", trained_on=train,
                               overlap_with_eval_frames=overlap)
    res["learned_models"] = trained
    for prev in args.merge:  # rows measured by an earlier run on the very same frames and reference
        for v in json.loads(Path(prev).read_text())["videos"]:
            if Path(v["video"]).name == Path(video).name and v["frames"] == res["frames"]:
                have = {(r["method"], r["setting"]) for r in rows}
                rows += [dict(r, merged_from=prev) for r in v["rows"] if (r["method"], r["setting"]) not in have]
                res["learned_models"] += [m for m in v.get("learned_models", []) if m not in res["learned_models"]]
                res["notes"].append(f"rows not measured in this run come from {prev} (same frames, same reference)")
    res["rows"] = rows
    res["summary"] = summarise(rows)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", action="append", required=True)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--start", type=int, default=0, help="first frame (e.g. past a learned model's training frames)")
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--imgsz", default="640x384")
    ap.add_argument("--learned", action="append", default=[], help="learned codec file(s) to evaluate")
    ap.add_argument("--families", default="jpeg,h264,codec", help="comma list of jpeg, h264, codec ('' = none)")
    ap.add_argument("--merge", action="append", default=[],
                    help="add the rows of an earlier run's JSON on the same video and frames")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    args.families = set(filter(None, args.families.split(",")))
    model = Model(args.model, args.cut, parse_imgsz(args.imgsz), args.threads)
    workdir = Path(args.json).resolve().parent
    results = [run_video(args, model, v, workdir) for v in args.video]
    out = {"benchmark": "rate_fidelity", "agreement": "mAP@0.5 vs unsplit fp32 detections (person, bicycle, car, "
           "motorcycle, bus, truck; ref conf 0.25, NMS IoU 0.45, ranked to conf 0.001)", "videos": results,
           # top-level rows/summary: the first video's, as the schema names them
           "rows": results[0]["rows"], "summary": results[0]["summary"]}
    Path(args.json).write_text(json.dumps(out, indent=1))
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({"summary": {r["video"]: r["summary"] for r in results}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
