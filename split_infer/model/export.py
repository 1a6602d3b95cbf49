"""Export the edge part of a split model to OpenVINO IR, with the metadata the edge runtime needs.

`split-infer export --model yolov5s --cut 4 --imgsz 640x384 [--int8 --calibration VIDEO]` writes
`edge.xml`/`edge.bin` and `edge.json` (model, cut, input size and normalisation, output names and
shapes, precision, versions). INT8 is NNCF post-training quantisation on frames of real footage;
its detection agreement with the f32 model, on frames of that footage NNCF did not calibrate on,
goes into edge.json (`agreement`), where the edge's `precision: auto` reads it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

import split_infer
from split_infer.codec import bottleneck
from split_infer.codec.basis import Basis
from split_infer.codec.learned import LATENT, LearnedModel
from split_infer.model.loading import load_model
from split_infer.model.preprocess import letterbox, parse_imgsz
from split_infer.model.weights import cache_dir
from split_infer.progress import bar
from split_infer.service import EXIT_CODES_EPILOG, HelpFormatter, checked

META_FILE = "edge.json"
IR_FILE = "edge.xml"
FORMAT_VERSION = 1
CALIBRATION_STRIDE = 3  # every third frame of the calibration video goes to NNCF
AGREEMENT_FRAMES = 60  # held-out frames the INT8 agreement is measured on


def default_ir_dir(model: str, cut: int, imgsz: tuple[int, int], int8: bool = False) -> Path:
    tag = f"{Path(model).stem}-cut{cut}-{imgsz[0]}x{imgsz[1]}" + ("-int8" if int8 else "")
    return cache_dir() / "ir" / tag


def video_frames(path: str | Path, count: int, stride: int = 1, start: int = 0) -> list[np.ndarray]:
    """Up to `count` BGR frames from a video or image, every `stride`-th, from frame `start`."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    frames: list[np.ndarray] = []
    index = 0
    try:
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if index >= start and (index - start) % stride == 0:
                frames.append(frame)
            index += 1
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be read from {path}")
    return frames


def to_openvino(module: Any, imgsz: tuple[int, int], output_names: list[str] | None = None) -> Any:
    """Convert a torch module on images (dynamic batch) to an OpenVINO model.

    A module returning a dict (the edge part) gets its outputs named by the dict's keys; a
    detection model returning (predictions, maps) keeps the predictions.
    """
    # Optional heavy dependencies, needed at export time only (partition is built on torch).
    import openvino as ov
    import torch

    from split_infer.model.partition import first_tensor

    class _Outputs(torch.nn.Module):  # OpenVINO names outputs by position; we rename them after
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> Any:
            out = self.inner(x)
            return tuple(out[k] for k in output_names) if output_names else first_tensor(out)

    example = torch.zeros(1, 3, imgsz[1], imgsz[0])
    with torch.no_grad():
        ov_model = ov.convert_model(_Outputs(module).eval(), example_input=example,
                                    input=[(-1, 3, imgsz[1], imgsz[0])])
    ov_model.inputs[0].get_tensor().set_names({"images"})
    for output, name in zip(ov_model.outputs, output_names or [], strict=False):  # no names: none to set
        output.get_tensor().set_names({name})
    return ov_model


class EdgeWithBottleneck:
    """The edge part followed by a learned codec's encoder (`split-infer codec train`), so that
    OpenVINO runs both and the edge's codec only quantises and entropy-codes the latent."""

    @staticmethod
    def build(edge: Any, codec_model: str | Path) -> tuple[Any, LearnedModel]:
        import torch  # optional heavy dependency (the cloud extra)

        learned = LearnedModel.load(codec_model)
        if learned.tensor not in edge.output_names or len(edge.output_names) != 1:
            raise ValueError(f"codec model {codec_model} encodes {learned.tensor!r}; "
                             f"this cut sends {edge.output_names}")
        arch = learned.arch["encoder"]

        class Module(torch.nn.Module):
            output_names = [LATENT]

            def __init__(self) -> None:
                super().__init__()
                self.edge = edge
                for name, v in learned.weights.items():  # buffers, so the trace embeds them as constants
                    self.register_buffer(name.replace(".", "__"), torch.from_numpy(v))

            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                feats = self.edge(x)[learned.tensor]
                w = {k.replace("__", "."): v for k, v in self.named_buffers() if not k.startswith("edge.")}
                return {LATENT: bottleneck.run_torch(arch, w, feats)}

        return Module().eval(), learned


class EdgeWithBasis:
    """The edge part followed by the video codec's channel reduction (`split-infer codec calibrate`):
    a 1x1 convolution, so OpenVINO runs it beside the extractor and the codec gets the reduced
    tensor (same name, k channels) and only packs and codes it."""

    @staticmethod
    def build(edge: Any, basis_path: str | Path) -> tuple[Any, Basis]:
        import torch  # optional heavy dependency (the cloud extra)

        basis = Basis.load(basis_path)
        if basis.tensor not in edge.output_names or len(edge.output_names) != 1:
            raise ValueError(f"basis {basis_path} reduces {basis.tensor!r}; this cut sends {edge.output_names}")
        proj = torch.nn.Conv2d(basis.channels, basis.components, 1)
        with torch.no_grad():
            proj.weight.copy_(torch.from_numpy(basis.encode_matrix)[:, :, None, None])
            proj.bias.copy_(torch.from_numpy(-basis.encode_matrix @ basis.mean))  # type: ignore[union-attr]

        class Module(torch.nn.Module):
            output_names = [basis.tensor]

            def __init__(self) -> None:
                super().__init__()
                self.edge, self.proj = edge, proj

            def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
                return {basis.tensor: self.proj(self.edge(x)[basis.tensor])}

        return Module().eval(), basis


def export_edge(model_name: str, cut: int, imgsz: tuple[int, int], out_dir: Path | None = None,
                int8: bool = False, calibration: str | Path | None = None, calibration_frames: int = 120,
                codec_model: str | Path | None = None, on_stage: Callable[[str], None] | None = None) -> Path:
    """Write the edge IR and its metadata; returns the output directory. `on_stage` hears what it
    is doing now (the CLI's progress bar).

    With `codec_model`, the IR ends in that learned codec's encoder and outputs its latent, or (a
    .basis.npz) in the video codec's channel reduction and outputs the reduced tensor."""
    # Optional heavy dependencies, needed at export time only (partition is built on torch).
    import openvino as ov
    import torch

    from split_infer.model.partition import partition

    stage = on_stage or (lambda _: None)
    out_dir = Path(out_dir) if out_dir else default_ir_dir(model_name, cut, imgsz, int8)
    stage(f"loading {model_name}")
    model = load_model(model_name)
    edge, cloud = partition(model, cut)
    learned: LearnedModel | Basis | None = None
    if codec_model:
        wrap = EdgeWithBasis if str(codec_model).endswith(".basis.npz") else EdgeWithBottleneck
        edge, learned = wrap.build(edge, codec_model)
    if int8 and calibration is None:
        raise ValueError("--int8 needs --calibration VIDEO (frames of real footage to calibrate on)")
    stage("converting to OpenVINO")
    ov_model = to_openvino(edge, imgsz, edge.output_names)
    agreement: dict[str, Any] = {}
    if int8:
        assert calibration is not None
        stage(f"quantising to INT8 on {calibration_frames} frames of {Path(calibration).name} (NNCF)")
        ov_model = quantize_int8(ov_model, calibration, imgsz, calibration_frames)
        stage("measuring the INT8 detection agreement on held-out frames")
        agreement = int8_agreement(ov_model, model, edge, cloud, calibration, imgsz, calibration_frames,
                                   measurable=learned is None)
    stage(f"saving {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, out_dir / IR_FILE, compress_to_fp16=False)
    shapes = {}
    with torch.no_grad():
        feats = edge(torch.zeros(1, 3, imgsz[1], imgsz[0]))
    for name in edge.output_names:
        shapes[name] = list(feats[name].shape[1:])
    meta = {
        "format_version": FORMAT_VERSION,
        "model": Path(model_name).stem if model_name.endswith(".pt") else model_name,
        "cut": cut,
        "imgsz": list(imgsz),  # width, height
        "input": {"name": "images", "layout": "NCHW", "color": "RGB", "scale": 1 / 255, "pad_value": 114},
        "outputs": [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in edge.output_names],
        "precision": "int8" if int8 else "fp32",
        "calibration": str(calibration) if int8 else None,
        **agreement,
        "codec_model": ({"path": str(codec_model), "model_id": learned.model_id, "replaces": learned.tensor,
                         "kind": "basis" if str(codec_model).endswith(".basis.npz") else "learned"}
                        if learned else None),
        "versions": {"split_infer": split_infer.__version__, "openvino": ov.get_version(), "torch": torch.__version__},
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
    return out_dir


def quantize_int8(ov_model: Any, calibration: str | Path, imgsz: tuple[int, int], count: int = 120) -> Any:
    """NNCF post-training INT8 quantisation on letterboxed frames spread over the calibration video."""
    import nncf  # optional heavy dependency, for INT8 only

    frames = video_frames(calibration, count=count, stride=CALIBRATION_STRIDE)
    data = [letterbox(f, imgsz)[0][None] for f in frames]
    # NNCF draws its own bars on stdout, which carries the command's result: send them to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(ov_model, nncf.Dataset(data), subset_size=len(data),
                             preset=nncf.QuantizationPreset.MIXED)


def int8_agreement(ov_model: Any, model: Any, edge: Any, cloud: Any, calibration: str | Path,
                   imgsz: tuple[int, int], calibration_frames: int, measurable: bool = True) -> dict[str, Any]:
    """edge.json's `agreement` (None when it cannot be measured) and how it was measured: on the
    frames after the calibration span, or (a short video) on the frames between calibration frames."""
    if not measurable:  # the IR ends in a codec model: the head would need its decoder too
        return {"agreement": None, "agreement_note": "not measured: the IR ends in a codec model"}
    from split_infer.model.agreement import ir_agreement

    start = CALIBRATION_STRIDE * calibration_frames
    try:
        frames = video_frames(calibration, AGREEMENT_FRAMES, CALIBRATION_STRIDE, start)
    except ValueError:  # nothing after the calibration span
        frames = []
    if len(frames) < AGREEMENT_FRAMES // 2:
        start = 1
        frames = video_frames(calibration, AGREEMENT_FRAMES, CALIBRATION_STRIDE, start)
    images = np.stack([letterbox(f, imgsz)[0] for f in frames])
    value = ir_agreement(ov_model, edge, cloud, images, len(getattr(model, "names", {}) or {}) or 80)
    held_out = {"video": str(calibration), "first": start, "stride": CALIBRATION_STRIDE, "count": len(frames)}
    if not np.isfinite(value):
        return {"agreement": None, "agreement_frames": held_out,
                "agreement_note": "not measured: the f32 model found no traffic object in the held-out frames"}
    return {"agreement": round(value, 4), "agreement_frames": held_out,
            "agreement_measure": "pooled AP@0.5 vs the f32 model's detections (conf 0.25), traffic classes"}


def ensure_edge_ir(model_name: str, cut: int, imgsz: tuple[int, int]) -> Path:
    """The default fp32 IR for (model, cut, imgsz), exported on first use."""
    out = default_ir_dir(model_name, cut, imgsz)
    if not (out / META_FILE).exists():
        export_edge(model_name, cut, imgsz, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="split-infer export", description="Export the edge part to OpenVINO IR.",
                                     formatter_class=HelpFormatter, epilog=EXIT_CODES_EPILOG)
    parser.add_argument("--model", default="yolov5s", help="model name (yolov5s, yolov5n) or checkpoint path")
    parser.add_argument("--cut", type=int, default=4, help="last layer run on the edge")
    parser.add_argument("--imgsz", type=checked(parse_imgsz), default="640x384", help="WIDTHxHEIGHT, multiples of 32")
    parser.add_argument("--out", type=Path, help="output directory (default: the cache)")
    parser.add_argument("--int8", action="store_true", help="NNCF post-training INT8 quantisation")
    parser.add_argument("--calibration", help="video whose frames calibrate INT8 (default: none; --int8 needs one)")
    parser.add_argument("--calibration-frames", type=int, default=120, help="frames taken for INT8 calibration")
    parser.add_argument("--codec-model", help="learned codec (.npz) whose encoder, or video codec basis "
                        "(.basis.npz) whose reduction, the IR should end in (default: none, the raw features)")
    parser.add_argument("--progress", action="store_true", help="show progress bars even when stderr is no terminal")
    args = parser.parse_args(argv)
    if args.int8 and not args.calibration:
        parser.error("--int8 needs --calibration VIDEO (frames of real footage to calibrate on)")
    try:
        with bar(f"export {args.model} cut {args.cut}", forced=args.progress) as progress:
            out = export_edge(args.model, args.cut, args.imgsz, args.out, args.int8, args.calibration,
                              args.calibration_frames, args.codec_model, on_stage=progress.stage)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"split-infer export: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
