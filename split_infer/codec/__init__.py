"""Feature codecs: compress the tensors that cross the cut (edge-safe: numpy + zstandard only).

    enc = make_encoder("q8-zstd")          # or "temporal", "temporal-q6", "learned:<path>", kwargs
    payload = enc.encode({"x4": x4})       # bytes in the wire format of docs/wire-format.md
    dec = make_decoder()                   # one per camera stream
    tensors = dec.decode(payload)          # CodecError on anything malformed or out of order
"""

from __future__ import annotations

import re

from split_infer.codec.codecs import Decoder, Encoder, QuantEncoder, TemporalEncoder
from split_infer.codec.errors import CodecError
from split_infer.codec.wire import Limits

__all__ = ["CodecError", "Decoder", "Encoder", "Limits", "make_decoder", "make_encoder"]


def make_encoder(spec: str = "q8-zstd", **kwargs) -> Encoder:
    """Build an encoder from a spec string: "q8-zstd" (bits=8), "q6-zstd", "temporal",
    "temporal-q8" (bits), "learned:<path>". With `budget_bps=` (and `fps=`), "temporal",
    "adaptive" and "learned:<path>" pick their own setting to stay within that budget."""
    if spec.startswith("learned:"):
        path = spec.split(":", 1)[1]
        if "budget_bps" in kwargs:
            from split_infer.codec.adaptive import AdaptiveLearnedEncoder

            return AdaptiveLearnedEncoder(path, **kwargs)
        from split_infer.codec.learned import LearnedEncoder

        return LearnedEncoder(path, **kwargs)
    m = re.fullmatch(r"q([2-8])-zstd", spec)
    if m:
        return QuantEncoder(bits=int(m.group(1)), **kwargs)
    m = re.fullmatch(r"temporal(?:-q([2-8]))?", spec)
    if m and "budget_bps" in kwargs:
        from split_infer.codec.adaptive import AdaptiveEncoder

        return AdaptiveEncoder(**kwargs)
    if m:
        if m.group(1):
            kwargs.setdefault("bits", int(m.group(1)))
        return TemporalEncoder(**kwargs)
    if spec == "adaptive":
        from split_infer.codec.adaptive import AdaptiveEncoder

        return AdaptiveEncoder(**kwargs)
    raise ValueError(f"unknown codec spec {spec!r}")


def make_decoder(limits: Limits | None = None, learned_dir: str | None = None) -> Decoder:
    """A decoder for one stream; it reads the codec and its parameters from each payload."""
    return Decoder(limits or Limits(), learned_dir=learned_dir)
