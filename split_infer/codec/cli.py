"""`split-infer codec ...`: train and inspect learned feature codecs.

    split-infer codec train --footage street.mp4@0:367 --minutes 60 --out models/street.npz
    split-infer codec train --footage cam7.mp4@0:250 --init models/street.npz --minutes 10 --out models/cam7.npz
    split-infer codec calibrate --video cam7.mp4 --frames 0:250 --out models/cam7.basis.npz
    split-infer codec info models/street.npz
"""

from __future__ import annotations

import argparse
import json
import sys

from split_infer.codec.basis import Basis
from split_infer.codec.learned import LearnedModel
from split_infer.model.preprocess import parse_imgsz
from split_infer.service import HelpFormatter

# train.Precision's values, spelled here so that `--help` needs no torch (tests/test_codec_learned.py checks they agree)
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")


class _Formatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (the project's formatter), the module's examples kept as written."""


def _span(text: str) -> tuple[int, int | None]:
    a, _, b = text.partition(":")
    return int(a or 0), (int(b) if b else None)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="yolov5s", help="the detector whose features are coded")
    p.add_argument("--cut", type=int, default=4, help="the layer after which the model is split")
    p.add_argument("--imgsz", default="640x384", help="model input WIDTHxHEIGHT")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="split-infer codec", description=__doc__,
                                 formatter_class=_Formatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or fine-tune with --init) a learned bottleneck on a camera's footage",
                       formatter_class=_Formatter)
    t.add_argument("--footage", action="append", required=True, metavar="VIDEO[@A:B][/N]",
                   help="frames A..B-1 of VIDEO, every N-th; repeat for several cameras")
    t.add_argument("--out", required=True, help="model file to write (.npz)")
    t.add_argument("--init", help="start from this model: per-camera fine-tuning (default: a fresh model)")
    t.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget, teacher features included")
    t.add_argument("--steps", type=int,
                   help="train exactly this many steps instead (default: as many as --minutes allow)")
    t.add_argument("--channels", type=int, default=16, help="latent channels (taken from --init when given)")
    t.add_argument("--res-blocks", type=int, default=1, help="residual blocks in the (cloud-side) decoder")
    t.add_argument("--rate-weight", type=float, default=0.004, help="weight of the latent's bits in the loss")
    t.add_argument("--lr", type=float, help="peak learning rate (default 2e-3, or 5e-4 when fine-tuning)")
    t.add_argument("--batch", type=int, default=4, help="whole frames per step")
    _model_flags(t)
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--precision", choices=TRAIN_PRECISIONS, default="auto",
                   help="forward passes in bf16 autocast (auto: where the CPU has AMX) or fp32")
    t.add_argument("--mirror", action="store_true",
                   help="also train on each frame's mirror image (twice the scenes from the same footage)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the initialisation and the batches")
    c = sub.add_parser("calibrate", help="fit the video codec's channel reduction to a camera's footage (seconds)",
                       formatter_class=_Formatter)
    c.add_argument("--video", required=True, help="the camera's footage (a file or URL OpenCV reads)")
    c.add_argument("--out", required=True, help="basis file to write (NAME.basis.npz)")
    c.add_argument("--frames", type=_span, default=(0, None), help="frame range A:B to calibrate on (default: all)")
    c.add_argument("--every", type=int, default=2, help="use every N-th frame")
    c.add_argument("--components", type=int, default=64, help="channels kept (of 128 at cut 4)")
    c.add_argument("--metric", choices=("consumer", "identity"), default="consumer",
                   help="consumer: error measured at the head's convolutions; identity: plain PCA")
    _model_flags(c)
    i = sub.add_parser("info", help="print a model file's metadata", formatter_class=_Formatter)
    i.add_argument("path", help="a learned model (.npz) or a basis (.basis.npz)")
    args = ap.parse_args(argv)
    if args.cmd == "info":
        m = Basis.load(args.path) if args.path.endswith(".basis.npz") else LearnedModel.load(args.path)
        print(json.dumps({"id": m.model_id, **m.meta}, indent=1))
        return 0
    if args.cmd == "calibrate":
        from split_infer.codec.calibrate import calibrate  # torch, a cloud/dev dependency

        calibrate(args.video, args.out, frames=args.frames, every=args.every, components=args.components,
                  metric=args.metric, model_name=args.model, cut=args.cut, imgsz=parse_imgsz(args.imgsz))
        return 0
    from split_infer.codec.train import Footage, train  # torch, a cloud/dev dependency

    train([Footage.parse(f) for f in args.footage], args.out, channels=args.channels, res_blocks=args.res_blocks,
          batch=args.batch, lr=args.lr or (5e-4 if args.init else 2e-3), rate_weight=args.rate_weight,
          init=args.init, model_name=args.model, cut=args.cut, imgsz=parse_imgsz(args.imgsz),
          threads=args.threads, seed=args.seed, minutes=args.minutes,
          steps=args.steps, precision=args.precision, mirror=args.mirror)
    return 0


if __name__ == "__main__":
    sys.exit(main())
