"""`split-infer detect`: the split model in one process, edge on OpenVINO, head in the cloud runtime.

    split-infer detect IMAGE_VIDEO_OR_URL --model yolov5s --cut 4 [--out PATH]

Writes one JSON object per frame (`frame`, `detections`) to stdout or PATH and a summary on stderr.
The features go through the same codec the pipeline uses, so the bytes reported are wire bytes.
`SplitDetector` is also the in-process baseline of the pipeline benchmark and tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from split_infer.codec import DEFAULT_CODEC, make_decoder, make_encoder
from split_infer.edge.extractor import EdgeExtractor
from split_infer.model.export import ensure_edge_ir
from split_infer.model.preprocess import parse_imgsz
from split_infer.progress import bar
from split_infer.service import StopEvent, checked, service_main

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SplitDetector:
    """Edge extractor (OpenVINO) -> codec -> head, for one stream of frames."""

    def __init__(self, model: str = "yolov5s", cut: int = 4, imgsz: tuple[int, int] = (640, 384),
                 device: str = "AUTO", codec: str | None = DEFAULT_CODEC, head_runtime: str = "auto",
                 conf: float = 0.25, iou: float = 0.45, model_dir: str | Path | None = None,
                 precision: str | None = None, edge_precision: str | None = None):
        """`precision`: both parts' OpenVINO hint; `edge_precision` overrides it for the extractor."""
        from split_infer.cloud.head import Head  # torch: the head runs in the cloud runtime

        model_dir = Path(model_dir) if model_dir else ensure_edge_ir(model, cut, imgsz)
        self.extractor = EdgeExtractor(model_dir, device, precision=edge_precision or precision)
        self.head = Head(model, cut, imgsz, runtime=head_runtime, conf=conf, iou=iou, precision=precision)
        self.codec = codec
        self._codec = (make_encoder(codec), make_decoder()) if codec else None  # None: raw float32
        self.bytes_sent: list[int] = []

    def __call__(self, frame_bgr: np.ndarray) -> list[dict]:
        x, lb = self.extractor.preprocess(frame_bgr)
        feats = self.extractor.infer(x)
        if self._codec is not None:
            encoder, decoder = self._codec
            payload = encoder.encode(feats)
            self.bytes_sent.append(len(payload))
            feats = decoder.decode(payload)
        else:
            self.bytes_sent.append(sum(v.nbytes for v in feats.values()))
        return self.head.detect(feats, [lb])[0]


def read_frames(source: str) -> Iterator[np.ndarray]:
    """Frames of an image, a video file or a stream URL (OpenCV's FFmpeg backend)."""
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        img = cv2.imread(source)
        if img is None:
            raise FileNotFoundError(f"cannot read image {source}")
        yield img
        return
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video or stream {source}")
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def frame_count(source: str, max_frames: int) -> int | None:
    """How many frames detect will read, for the progress bar; None for a stream (no end known)."""
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        return 1
    cap = cv2.VideoCapture(source) if Path(source).is_file() else None
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap is not None and cap.isOpened() else 0
    if cap is not None:
        cap.release()
    if count <= 0:
        return max_frames or None
    return min(count, max_frames) if max_frames else count


def main(argv: list[str] | None = None) -> int:
    return service_main("split-infer detect", __doc__, argv, _add_arguments, _run)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="image, video file or stream URL")
    parser.add_argument("--model", default="yolov5s", help="model name (yolov5s, yolov5n) or checkpoint path")
    parser.add_argument("--cut", type=int, default=4, help="last layer run on the edge part")
    parser.add_argument("--imgsz", type=checked(parse_imgsz), default="640x384", help="WIDTHxHEIGHT, multiples of 32")
    parser.add_argument("--device", default="AUTO", help="OpenVINO device for the edge part")
    parser.add_argument("--codec", default=DEFAULT_CODEC,
                        help="feature codec spec (docs/codec.md); 'none' sends raw float32")
    parser.add_argument("--head-runtime", default="auto", choices=["auto", "torch", "openvino"],
                        help="what runs the head")
    parser.add_argument("--conf", type=float, default=0.25, help="confidence threshold")
    parser.add_argument("--iou", type=float, default=0.45, help="NMS IoU threshold")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    parser.add_argument("--out", type=Path, help="write JSON lines here (default: stdout)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar even when stderr is no terminal")


def _run(args: argparse.Namespace, stop: StopEvent) -> int:
    """Detect until the source ends, --max-frames, or SIGINT/SIGTERM; then print the summary."""
    try:
        detector = SplitDetector(args.model, args.cut, args.imgsz, args.device,
                                 None if args.codec == "none" else args.codec, args.head_runtime, args.conf, args.iou)
        frames = read_frames(args.source)
        out = args.out.open("w") if args.out else sys.stdout
        n, start = 0, time.perf_counter()
        total = frame_count(args.source, args.max_frames)
        try:
            with bar(f"detect {Path(args.source).name}", total, forced=args.progress) as progress:
                for n, frame in enumerate(frames, 1):
                    dets = detector(frame)
                    out.write(json.dumps({"frame": n - 1, "detections": dets}) + "\n")
                    progress.advance()
                    if (args.max_frames and n >= args.max_frames) or stop.is_set():
                        break
        finally:
            if args.out:
                out.close()
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"split-infer detect: {e}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    if n == 0:
        print(f"split-infer detect: no frames read from {args.source}", file=sys.stderr)
        return 1
    per_frame = sum(detector.bytes_sent) / n
    print(json.dumps({"frames": n, "fps": round(n / elapsed, 2), "cut": args.cut, "codec": args.codec,
                      "bytes_per_frame": round(per_frame), "raw_float32_bytes_per_frame":
                      sum(int(np.prod(o["shape"])) * 4 for o in detector.extractor.meta["outputs"])}),
          file=sys.stderr)
    return 0
