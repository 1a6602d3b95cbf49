"""Rate against detection agreement on real footage: feature codecs against JPEG, x264, x265, SVT-AV1.

    python benchmarks/rate_fidelity.py --video ../shared/data/street-640x360.mp4 --calibrate 367 \
        --json street.json --plot street.png

Frames [0, K) of the clip (`--calibrate K`) are for whatever a codec calibrates on; every row is
measured on frames [K, K + count), all families on the same frames in one run. Video codecs code
every one of those frames (their bytes are per frame of the full stream); detections are scored
on every `--score-every`-th (the head is the slow part on two cores).

Agreement: AP@0.5 against the unsplit fp32 model on the uncompressed frame (reference at conf 0.25,
NMS IoU 0.45; a method's detections ranked down to conf 0.001), pooled over the traffic classes with
at least 25 reference instances in the scored frames (named in `classes`), with a paired 95%
bootstrap interval over frames. Class-agnostic AP@0.5 over all traffic classes is reported too.
BD-rate: benchmarks/bdrate.py. Prints a JSON summary; writes the full JSON and a plot.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bdrate import bd_rate, bytes_at, lower_hull  # noqa: E402
from evaluation import NMS_IOU, RANK_CONF, REF_CONF, TRAFFIC_CLASSES, FrameMatches, eligible_classes  # noqa: E402
from report import machine  # noqa: E402
from split_infer.codec import make_decoder, make_encoder  # noqa: E402
from split_infer.codec.basis import Basis, resolve  # noqa: E402
from split_infer.codec.learned import LearnedModel  # noqa: E402
from split_infer.codec.video import INNER  # noqa: E402
from split_infer.model.export import video_frames  # noqa: E402
from split_infer.model.names import COCO_NAMES  # noqa: E402
from split_infer.model.postprocess import non_max_suppression  # noqa: E402
from split_infer.model.preprocess import content, letterbox, parse_imgsz  # noqa: E402

# The reference ends: single points, not rate curves (with their plot markers).
REFERENCE_ENDS = {"edge-whole-model": "*", "noise-floor": "D", "lossless-end": "P"}
SATURATED = 0.995  # a sweep stops after two settings at or above this agreement
BD_BOUNDS = (0.80, 0.99)

# Each family's settings, from its fewest bytes up: a sweep must start below agreement 0.80.
JPEG_QUALITIES = (5, 10, 20, 30, 45, 60, 75, 90, 100)
X26X_CRFS = (43, 39, 35, 31, 27, 23, 19, 15, 11)
AV1_CRFS = (58, 52, 46, 40, 34, 28, 22)
VIDEO_CODEC_CRFS = (40, 36, 33, 30, 27, 24, 21, 18, 15)
# A learned latent is trained on integer codes spanning a few tens of steps, not on 8-bit z-scores:
# its curve lies at lower CRFs.
LEARNED_CRFS = (36, 32, 28, 25, 22, 19, 16, 13, 10, 7, 4, 0)
TEMPORAL_SETTINGS = tuple(dict(bits=b, deadzone=d, key_interval=30) for b, d in ((3, 3), (4, 2), (5, 2), (6, 1),
                                                                                 (8, 1)))


def read_frames(path: str, start: int, n: int) -> tuple[list[np.ndarray], float]:
    """`n` frames from `start` (decoded forward: seeking is inexact on some files), and the fps."""
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

        from split_infer.model.loading import load_model
        from split_infer.model.partition import partition

        torch.set_num_threads(threads)
        self.torch, self.imgsz = torch, imgsz
        self.edge, self.cloud = partition(load_model(name), cut)

    def images(self, frames_bgr: list[np.ndarray]) -> np.ndarray:
        return np.stack([letterbox(f, self.imgsz)[0] for f in frames_bgr])

    def features(self, frames_bgr: list[np.ndarray], batch: int = 8) -> list[dict[str, np.ndarray]]:
        out = []
        for i in range(0, len(frames_bgr), batch):
            with self.torch.no_grad():
                feats = self.edge(self.torch.from_numpy(self.images(frames_bgr[i:i + batch])))
            for j in range(len(feats[next(iter(feats))])):
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


class Bench:
    """One clip's evaluation: the frames, the reference detections, and the rows measured so far."""

    def __init__(self, model: Model, frames: list[np.ndarray], fps: float, score_every: int) -> None:
        self.model, self.fps = model, fps
        self.small = [content(f, model.imgsz) for f in frames]  # what a pixel codec would send
        self.scored = list(range(0, len(frames), score_every))
        t0 = time.perf_counter()
        self.feats = model.features(self.small)
        ref = model.detect([self.feats[i] for i in self.scored])
        self.full_model_ms = (time.perf_counter() - t0) / len(frames) * 1e3  # rough: edge on all, head on scored
        self.ref = ref
        self.classes = eligible_classes(ref)
        if not self.classes:
            raise SystemExit("no traffic class has 25 reference instances in the scored frames: use more frames")
        self.rows: list[dict] = []

    def score(self, family: str, setting: str, sizes: list[int], dets: list[np.ndarray], enc_ms: float,
              dec_ms: float, **extra) -> dict:
        m = FrameMatches(self.ref, dets, self.classes)
        lo, hi = m.bootstrap()
        r = {"family": family, "setting": setting, "bytes_per_frame": round(float(np.mean(sizes)), 1),
             "agreement": round(m.ap(), 4), "agreement_ci": [round(lo, 4), round(hi, 4)],
             "class_agnostic_ap": round(FrameMatches(self.ref, dets, TRAFFIC_CLASSES, class_agnostic=True).ap(), 4),
             "encode_ms": round(enc_ms, 2), "decode_ms": round(dec_ms, 2), **extra}
        self.rows.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
        return r

    def sweep(self, settings: Iterable, measure: Callable[..., dict]) -> None:
        """Run settings from fewest bytes up; stop once two in a row are saturated."""
        saturated = 0
        for s in settings:
            r = measure(s)
            saturated = saturated + 1 if r["agreement"] >= SATURATED else 0
            if saturated >= 2:
                break

    # -- pixel anchors ---------------------------------------------------------------------------

    def jpeg(self, q: int) -> dict:
        t0 = time.perf_counter()
        blobs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, q])[1].tobytes() for f in self.small]
        t1 = time.perf_counter()
        decoded = [cv2.imdecode(np.frombuffer(blobs[i], np.uint8), cv2.IMREAD_COLOR) for i in self.scored]
        t2 = time.perf_counter()
        n = len(self.small)
        return self.score("jpeg", f"q{q}", [len(b) for b in blobs], self.model.detect_frames(decoded),
                          (t1 - t0) / n * 1e3, (t2 - t1) / len(self.scored) * 1e3)

    def ffmpeg(self, family: str, setting: str, codec_args: list[str], workdir: Path) -> dict:
        """Code the clip as one stream with ffmpeg (2 s GOP), decode it back, score it."""
        h, w = self.small[0].shape[:2]
        out = workdir / f"{family}.mkv"
        raw = b"".join(np.ascontiguousarray(f).tobytes() for f in self.small)
        t0 = time.perf_counter()
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}",
                        "-r", f"{self.fps:.3f}", "-i", "-", *codec_args, "-pix_fmt", "yuv420p", str(out)],
                       input=raw, check=True)
        t1 = time.perf_counter()
        # the stream's own bytes, without the container: ffprobe sums the packets
        sizes = [int(s) for s in subprocess.run(
            ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size", "-of", "csv=p=0",
             str(out)], capture_output=True, text=True, check=True).stdout.split()]
        t2 = time.perf_counter()
        dec = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
                             capture_output=True, check=True).stdout
        t3 = time.perf_counter()
        decoded = np.frombuffer(dec, np.uint8).reshape(-1, h, w, 3)
        if len(decoded) != len(self.small) or len(sizes) < len(self.small):
            raise RuntimeError(f"{family} round trip returned {len(decoded)} frames / {len(sizes)} packets "
                               f"for {len(self.small)}")
        out.unlink()
        n = len(self.small)
        return self.score(family, setting, sizes, self.model.detect_frames([decoded[i] for i in self.scored]),
                          (t1 - t0) / n * 1e3, (t3 - t2) / n * 1e3, gop=self.gop)

    @property
    def gop(self) -> int:
        return max(1, round(2 * self.fps))

    def x26x(self, lib: str, preset: str, crf: int, workdir: Path) -> dict:
        family = {"libx264": "x264", "libx265": "x265"}[lib] + f"-{preset}"
        args = ["-c:v", lib, "-preset", preset, "-tune", "zerolatency", "-crf", str(crf), "-g", str(self.gop)]
        if lib == "libx265":
            args += ["-x265-params", f"keyint={self.gop}:min-keyint={self.gop}:log-level=none"]
        return self.ffmpeg(family, f"crf{crf}", args, workdir)

    def av1(self, crf: int, workdir: Path) -> dict:
        return self.ffmpeg("svt-av1", f"crf{crf}", ["-c:v", "libsvtav1", "-preset", "8", "-crf", str(crf),
                                                    "-g", str(self.gop), "-svtav1-params", "pred-struct=1"], workdir)

    # -- feature codecs --------------------------------------------------------------------------

    def codec(self, family: str, spec: str, settings: dict, learned_dir: str | None = None) -> dict:
        enc, dec = make_encoder(spec, **settings), make_decoder(learned_dir=learned_dir)
        sizes, keys, decoded, enc_t, dec_t = [], [], {}, 0.0, 0.0
        scored = set(self.scored)
        for i, f in enumerate(self.feats):
            t0 = time.perf_counter()
            out = enc.encode_frame(f)
            t1 = time.perf_counter()
            y = dec.decode(out.payload)
            dec_t += time.perf_counter() - t1
            enc_t += t1 - t0
            sizes.append(len(out.payload))
            keys.append(out.key)
            if i in scored:
                decoded[i] = y
        n = len(self.feats)
        key_sizes = [s for s, k in zip(sizes, keys, strict=True) if k]
        setting = spec + "".join(f" {k}={v}" for k, v in settings.items() if k != "cut")
        return self.score(family, setting, sizes, self.model.detect([decoded[i] for i in self.scored]),
                          enc_t / n * 1e3, dec_t / n * 1e3, key_frames=len(key_sizes),
                          key_frame_bytes=round(float(np.mean(key_sizes)), 1) if key_sizes else None,
                          max_frame_bytes=max(sizes))

    # -- reference ends --------------------------------------------------------------------------

    def whole_model_on_edge(self) -> dict:
        """Send only detections (conf >= 0.25; 6 float16 each plus a 4-byte count): the fewest bytes,
        at the cost of running the whole model on the edge."""
        dets = [d[d[:, 4] >= REF_CONF] for d in self.ref]
        sizes = [4 + 12 * len(d) for d in dets]
        return self.score("edge-whole-model", "detections f16", sizes, dets, self.full_model_ms, 0.0,
                          note="edge ms: the full model in torch fp32 on this machine")

    def openvino_f32(self) -> dict:
        """Noise floor: the same features from OpenVINO's f32 edge part (no coding at all)."""
        import openvino as ov

        from split_infer.model.export import to_openvino

        names = list(self.feats[0])
        compiled = ov.Core().compile_model(to_openvino(self.model.edge, self.model.imgsz, names), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})
        feats = []
        for i in self.scored:
            res = compiled(self.model.images([self.small[i]]))
            feats.append({k: np.asarray(res[compiled.output(k)]) for k in names})
        nbytes = sum(v.nbytes for v in feats[0].values())
        return self.score("noise-floor", "openvino f32 features", [nbytes], self.model.detect(feats), 0.0, 0.0)


def summarise(rows: list[dict], video_codec_families: list[str]) -> dict:
    fams: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        fams.setdefault(r["family"], []).append((r["bytes_per_frame"], r["agreement"]))
    hull = {f: [[round(b, 1), a] for b, a in lower_hull(p)] for f, p in fams.items()}
    anchors = {"x264": [f for f in fams if f.startswith("x264")], "x265": [f for f in fams if f.startswith("x265")]}
    all_pairs: dict[str, dict] = {}
    best: dict[str, tuple] = {}
    for codec in video_codec_families:
        for anchor_fams in anchors.values():
            for a in anchor_fams:
                pct, interval = bd_rate(fams.get(codec, []), fams[a], BD_BOUNDS)
                all_pairs[f"{codec} vs {a}"] = {"bd_rate": None if pct is None else round(pct, 1),
                                                "interval": interval and [round(x, 4) for x in interval]}
    for anchor_name, anchor_fams in anchors.items():
        # the codec's figure against the stronger anchor preset: the one that needs fewer bytes
        cands = [(v["bd_rate"], k, v["interval"]) for k, v in all_pairs.items()
                 if k.split(" vs ")[1] in anchor_fams and v["bd_rate"] is not None]
        if cands:
            worst_anchor = {}
            for pct, k, iv in cands:
                codec, a = k.split(" vs ")
                worst_anchor.setdefault(codec, []).append((pct, a, iv))
            per_codec = {c: max(v) for c, v in worst_anchor.items()}  # vs the strongest preset
            c, (pct, a, iv) = min(per_codec.items(), key=lambda kv: kv[1][0])
            best[anchor_name] = (pct, c, a, iv)
    bd = {f"codec_vs_{k}": v[0] for k, v in best.items()}
    bd.update({f"codec_vs_{k}_pair": f"{v[1]} vs {v[2]}" for k, v in best.items()})
    bd["interval"] = next((v[3] for v in best.values()), None)
    bd["all"] = all_pairs
    at = {q: {f: (None if (b := bytes_at(lower_hull(p), float(q))) is None else round(b, 1)) for f, p in fams.items()}
          for q in ("0.95", "0.97")}
    return {"hull": hull, "bd_rate": bd, "bytes_at": at}


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    fams: dict[str, list[dict]] = {}
    for r in res["rows"]:
        fams.setdefault(r["family"], []).append(r)
    colours = plt.get_cmap("tab20").colors  # one colour per curve: the default cycle repeats after 10
    curves = [f for f in fams if f not in REFERENCE_ENDS]
    for fam, rs in fams.items():
        rs = sorted(rs, key=lambda r: r["bytes_per_frame"])
        x = [r["bytes_per_frame"] / 1000 for r in rs]
        y = [r["agreement"] for r in rs]
        err = [[r["agreement"] - r["agreement_ci"][0] for r in rs], [r["agreement_ci"][1] - r["agreement"] for r in rs]]
        if fam in REFERENCE_ENDS:  # single points, in black
            ax.errorbar(x, y, yerr=err, fmt=REFERENCE_ENDS[fam], ms=7, color="black", label=fam)
            continue
        style = "s--" if fam.startswith(("video", "temporal", "q8")) else "o-"
        ax.errorbar(x, y, yerr=err, fmt=style, ms=3, lw=1, capsize=2, label=fam,
                    color=colours[curves.index(fam) % len(colours)])
    for thr in (0.95, 0.97):
        ax.axhline(thr, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("kB per frame (log)")
    classes = ", ".join(COCO_NAMES[c] for c in res["classes"])
    ax.set_ylabel(f"agreement AP@0.5 vs unsplit fp32 ({classes})")
    f = res["frames"]
    bd = res["bd_rate"]
    best = "; ".join(f"{bd[f'codec_vs_{a}_pair']} {bd[f'codec_vs_{a}']:+.1f}%" for a in ("x264", "x265")
                     if bd.get(f"codec_vs_{a}") is not None)
    ax.set_title(f"{Path(f['video']).name}: frames {f['start']}-{f['start'] + f['count'] - 1}. "
                 f"Best BD-rate: {best or 'none'}", fontsize=8)
    ax.set_ylim(0.5, 1.005)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def calibrate_basis(args, work: Path) -> dict:
    """The operator's per-camera step, with the project's own command, on frames [0, K)."""
    out = work / f"{Path(args.video).stem}.basis.npz"
    cmd = [sys.executable, "-m", "split_infer.cli", "codec", "calibrate", "--video", args.video,
           "--frames", f"0:{args.calibrate}", "--out", str(out), "--model", args.model, "--cut", str(args.cut),
           "--imgsz", args.imgsz]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    meta = Basis.load(out).meta
    keep = Path(args.json).with_suffix("").as_posix() + ".basis.npz"  # kept beside the results
    Path(keep).write_bytes(out.read_bytes())
    return {"model": str(out), "kept_as": keep, **meta["trained_on"], "seconds": round(time.perf_counter() - t0, 1),
            "command": "split-infer " + " ".join(cmd[3:]), "role": "per-camera calibration on this clip"}


def inner_codecs(text: str) -> list[tuple[str, str]]:
    """'h264:veryfast,hevc:fast' -> [("h264", "veryfast"), ("hevc", "fast")]."""
    out = []
    for item in text.split(","):
        inner, _, preset = item.partition(":")
        if inner not in INNER or not preset:
            raise ValueError(f"want INNER:PRESET with INNER one of {sorted(INNER)}, got {item!r}")
        out.append((inner, preset))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True)
    ap.add_argument("--calibrate", type=int, default=0, metavar="K",
                    help="frames [0, K) are the codecs' to calibrate on; evaluation starts at frame K")
    ap.add_argument("--frames", type=int, default=10**6, help="evaluate at most this many frames (default: to the end)")
    ap.add_argument("--score-every", type=int, default=1, help="score detections on every N-th evaluated frame")
    ap.add_argument("--model", default="yolov5s")
    ap.add_argument("--cut", type=int, default=4)
    ap.add_argument("--imgsz", default="640x384")
    ap.add_argument("--families", default="ends,jpeg,x264,x265,av1,video,basis,temporal",
                    help="comma list of ends, jpeg, x264, x265, av1, video (no reduction), basis (one calibrated "
                         "with --calibrate), temporal; --cross-basis and --reduction rows come on top")
    ap.add_argument("--cross-basis", action="append", default=[],
                    help="a basis calibrated on another clip (path or shipped name): the cross-camera row")
    ap.add_argument("--reduction-inner", action="append", default=[], metavar="LABEL=INNER:PRESET,...",
                    help="the inner codecs that code --reduction LABEL's latent, e.g. cam=h264:veryfast,hevc:fast "
                         "(default h264:veryfast)")
    ap.add_argument("--reduction", action="append", default=[], metavar="LABEL=PATH",
                    help="a learned bottleneck (split-infer codec train) coded by the video codec: families "
                         "video-INNER+LABEL; its training record comes from the model file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", required=True)
    ap.add_argument("--plot")
    args = ap.parse_args(argv)
    try:  # LABEL=INNER:PRESET,... -> {LABEL: [(inner, preset), ...]}, refused before the long run starts
        args.reduction_inner = {label: inner_codecs(codecs)
                                for label, _, codecs in (s.partition("=") for s in args.reduction_inner)}
    except ValueError as e:
        ap.error(f"--reduction-inner: {e}")
    return args


def video_variants(args: argparse.Namespace, work: Path) -> tuple[list[tuple[str, str, str, str | None]], list[dict]]:
    """The video codec's families (family, inner codec, preset, basis file or None); how each basis was calibrated."""
    fams = set(args.families.split(","))
    variants: list[tuple[str, str, str, str | None]] = [("video-h264", "h264", "veryfast", None)] * ("video" in fams)
    training: list[dict] = []
    if args.calibrate and "basis" in fams:
        own = calibrate_basis(args, work)
        training.append(own)
        variants += [("video-h264+basis", "h264", "veryfast", own["model"]),
                     ("video-hevc+basis", "hevc", "ultrafast", own["model"])]
    for path in args.cross_basis:
        meta = Basis.load(resolve(path)).meta
        training.append({"model": str(path), **meta.get("trained_on", {}), "command": meta.get("command"),
                         "role": "cross-camera: calibrated on another clip"})
        copy = work / f"cross-{Path(path).name.removesuffix('.basis.npz')}.basis.npz"  # where the decoder looks
        copy.write_bytes(resolve(path).read_bytes())
        variants.append(("video-h264+cross-basis", "h264", "veryfast", str(copy)))
    for spec in args.reduction:
        label, _, path = spec.partition("=")
        if not label or not path:
            raise SystemExit(f"--reduction wants LABEL=PATH, got {spec!r}")
        meta = LearnedModel.load(path).meta
        training.append({"model": path, "label": label, "trained_on": meta.get("trained_on"),
                         "fine_tuned_from": meta.get("fine_tuned_from"), "command": meta.get("command"),
                         "steps": meta.get("steps"), "train_seconds": meta.get("train_seconds"),
                         "threads": meta.get("threads")})
        copy = work / f"{label}.npz"  # where the decoder looks
        copy.write_bytes(Path(path).read_bytes())
        for inner, preset in args.reduction_inner.get(label, [("h264", "veryfast")]):
            variants.append((f"video-{inner}+{label}", inner, preset, str(copy)))
    return variants, training


def run_video(b: Bench, args: argparse.Namespace, work: Path) -> tuple[list[str], list[dict]]:
    """Sweep every video codec family; returns their names and the bases' training records."""
    variants, training = video_variants(args, work)
    for fam, inner, preset, basis in variants:
        crfs = LEARNED_CRFS if basis and not basis.endswith(".basis.npz") else VIDEO_CODEC_CRFS
        b.sweep(crfs, lambda c, fam=fam, inner=inner, preset=preset, basis=basis: b.codec(
            fam, "video", dict(inner=inner, preset=preset, crf=c, key_interval=b.gop, cut=args.cut,
                               **({"reduction": basis} if basis else {})), learned_dir=str(work)))
    return [fam for fam, *_ in variants], training


def run_families(b: Bench, args: argparse.Namespace, fams: set[str], work: Path) -> tuple[list[str], list[dict]]:
    """Each requested family's rows into `b`; returns the feature codec's families (BD-rate's) and training."""
    video_fams: list[str] = []
    training: list[dict] = []
    if "ends" in fams:
        b.whole_model_on_edge()
        b.openvino_f32()
        b.codec("lossless-end", "q8-zstd", dict(cut=args.cut))
    if fams & {"video", "basis"} or args.cross_basis or args.reduction:
        video_fams, training = run_video(b, args, work)
    if "temporal" in fams:
        video_fams.append("temporal")
        b.sweep(TEMPORAL_SETTINGS, lambda s: b.codec("temporal", "temporal", dict(s, cut=args.cut)))
    if "jpeg" in fams:
        b.sweep(JPEG_QUALITIES, b.jpeg)
    if "x264" in fams:
        for preset in ("veryfast", "medium"):
            b.sweep(X26X_CRFS, lambda c, p=preset: b.x26x("libx264", p, c, work))
    if "x265" in fams:
        b.sweep(X26X_CRFS, lambda c: b.x26x("libx265", "medium", c, work))
    if "av1" in fams:
        b.sweep(AV1_CRFS, lambda c: b.av1(c, work))
    return video_fams, training


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fams = set(filter(None, args.families.split(",")))
    model = Model(args.model, args.cut, parse_imgsz(args.imgsz), args.threads)
    frames, fps = read_frames(args.video, args.calibrate, args.frames)
    t_start = time.perf_counter()
    b = Bench(model, frames, fps, args.score_every)
    with tempfile.TemporaryDirectory() as tmp:
        video_fams, training = run_families(b, args, fams, Path(tmp))
    rows = b.rows
    curve_rows = [r for r in rows if r["family"] not in REFERENCE_ENDS]
    res = {"benchmark": "rate_fidelity",
           "frames": {"video": args.video, "start": args.calibrate, "count": len(frames), "scored": len(b.scored),
                      "score_every": args.score_every, "fps": round(fps, 3)},
           "classes": list(b.classes), "model": args.model, "cut": args.cut, "imgsz": list(model.imgsz),
           "agreement": "AP@0.5 vs unsplit fp32 (ref conf 0.25, NMS IoU 0.45, ranked to conf 0.001), classes "
                        "pooled; agreement_ci: paired 95% bootstrap over scored frames (200 resamples)",
           "training": training,
           "machine": {**machine(), "threads": args.threads, "precision": "fp32 (torch) for every detector run"},
           "wall_s": None, "rows": rows, **summarise(curve_rows, video_fams)}
    res["wall_s"] = round(time.perf_counter() - t_start, 1)
    Path(args.json).write_text(json.dumps(res, indent=1))
    if args.plot:
        plot(res, args.plot)
    print(json.dumps({k: res[k] for k in ("frames", "classes", "bd_rate", "bytes_at")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
