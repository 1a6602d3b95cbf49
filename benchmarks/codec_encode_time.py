"""Encode/decode time of each codec setting on real cut-4 features, one thread (the edge budget).

    OMP_NUM_THREADS=1 python benchmarks/codec_encode_time.py --video ../shared/data/street-640x360.mp4 \
        --learned model.npz --frames 40

Times are per frame over a consecutive run (so temporal codecs see real delta frames); the
median and the minimum are both reported because the 2-core machine is shared. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from split_infer.codec import DEFAULT_CODEC, make_decoder, make_encoder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", required=True)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--start", type=int, default=367)
    ap.add_argument("--learned", action="append", default=[])
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rate_fidelity import Model, read_frames

    frames, _ = read_frames(args.video, args.start, args.frames)
    feats = Model("yolov5s", 4, (640, 384), 1).features(frames)
    specs = [(DEFAULT_CODEC, {}), ("video", {}), (DEFAULT_CODEC, dict(inner="hevc", preset="ultrafast")),
             ("q8-zstd", {}), ("temporal", dict(bits=5, deadzone=2)), ("temporal", dict(bits=8, deadzone=1))]
    specs += [(f"learned:{p}", dict(step=s, deadzone=2)) for p in args.learned for s in (1.0, 2.0)]
    rows = []
    for spec, kw in specs:
        learned_dir = str(Path(spec.split(":", 1)[1]).parent) if spec.startswith("learned:") else None
        enc, dec = make_encoder(spec, **kw), make_decoder(learned_dir=learned_dir)
        encode_s, decode_s = [], []
        for f in feats:
            t0 = time.perf_counter()
            p = enc.encode(f)
            t1 = time.perf_counter()
            dec.decode(p)
            t2 = time.perf_counter()
            encode_s.append(t1 - t0)
            decode_s.append(t2 - t1)
        rows.append({"setting": spec + "".join(f" {k}={v}" for k, v in kw.items()),
                     "encode_ms_median": round(float(np.median(encode_s)) * 1e3, 2),
                     "encode_ms_min": round(float(np.min(encode_s)) * 1e3, 2),
                     "decode_ms_median": round(float(np.median(decode_s)) * 1e3, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    # the default codec when `split-infer export --codec-model` put the reduction inside the IR:
    # the encoder gets the reduced tensor and only normalises, packs and codes it
    from split_infer.codec.basis import Basis, resolve

    basis = Basis.load(resolve(DEFAULT_CODEC.split(":", 1)[1]))
    reduced = [{"x4": basis.encode(f["x4"])} for f in feats]
    enc, encode_s = make_encoder(DEFAULT_CODEC), []
    for f in reduced:
        t0 = time.perf_counter()
        enc.encode(f)
        encode_s.append(time.perf_counter() - t0)
    rows.append({"setting": f"{DEFAULT_CODEC}, reduction inside the edge IR (codes only)",
                 "encode_ms_median": round(float(np.median(encode_s)) * 1e3, 2),
                 "encode_ms_min": round(float(np.min(encode_s)) * 1e3, 2)})
    print(json.dumps(rows[-1]), file=sys.stderr)
    from report import machine

    print(json.dumps({"benchmark": "codec_encode_time", "threads": 1, "frames": len(feats), "start": args.start,
                      "video": args.video, "machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
