"""Feature codecs: compress the tensors that cross the cut (edge-safe: numpy, zstandard, PyAV).

    enc = make_encoder("video")            # or "q8-zstd", "temporal-q6", "learned:<path>", kwargs
    out = enc.encode_frame({"x4": x4})     # out.payload: bytes in docs/wire-format.md; out.key
    dec = make_decoder()                   # one per camera stream
    tensors = dec.decode(out.payload)      # CodecError on anything malformed or out of order

Encoders register here by spec pattern (`register_encoder`), frame decoders by wire codec name
(`codecs.register_frame_decoder`); `make_encoder` and the generic `Decoder` name none of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

# Importing learned and video registers their frame decoders.
from split_infer.codec import learned, reduction, video
from split_infer.codec.adaptive import AdaptiveEncoder, AdaptiveLearnedEncoder
from split_infer.codec.codecs import Decoder, EncodedFrame, Encoder, QuantEncoder, TemporalEncoder
from split_infer.codec.errors import CodecError
from split_infer.codec.wire import Limits

# What the edge sends unless told otherwise: the best codec measured on footage it was not tuned
# on (docs/bandwidth.md): the video codec after the linear channel reduction calibrated on the
# street clip for YOLOv5s at cut 4. The learned bottleneck beats it on its own camera but
# collapses on another one, so it stays a per-camera option.
DEFAULT_CODEC = "video:yolov5s-cut4-street"

__all__ = ["DEFAULT_CODEC", "CodecError", "Decoder", "EncodedFrame", "Encoder", "Limits", "make_decoder",
           "make_encoder", "register_encoder", "encoder_specs"]

# builder(match, **kwargs) -> Encoder
EncoderBuilder = Callable[..., Encoder]
# (pattern, builder, help): the first pattern that fully matches a spec builds its encoder
_ENCODERS: list[tuple[re.Pattern[str], EncoderBuilder, str]] = []


def register_encoder(pattern: str, help: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Register `builder(match, **kwargs) -> Encoder` for specs matching `pattern`."""
    def wrap(builder: EncoderBuilder) -> EncoderBuilder:
        _ENCODERS.append((re.compile(pattern), builder, help))
        return builder
    return wrap


def encoder_specs() -> list[str]:
    """One line per registered spec pattern, for help texts."""
    return [h for _, _, h in _ENCODERS]


@register_encoder(r"q([2-8])-zstd", "q<bits>-zstd: stateless per-frame quantisation to 2-8 bits, zstd")
def _quant(m: re.Match[str], **kw: Any) -> Encoder:
    return QuantEncoder(bits=int(m.group(1)), **kw)


@register_encoder(r"temporal(?:-q([2-8]))?", "temporal[-q<bits>]: delta coding of 2-8-bit codes, zstd")
def _temporal(m: re.Match[str], **kw: Any) -> Encoder:
    if "budget_bps" in kw:
        return AdaptiveEncoder(**kw)
    if m.group(1):
        kw.setdefault("bits", int(m.group(1)))
    return TemporalEncoder(**kw)


@register_encoder(r"adaptive", "adaptive: temporal, stepping its setting to stay within budget_bps")
def _adaptive(m: re.Match[str], **kw: Any) -> Encoder:
    return AdaptiveEncoder(**kw)


@register_encoder(r"video(?:-(h264|hevc))?(?:-crf(\d+(?:\.\d+)?))?(?::(.+))?",
                  "video[-h264|-hevc][-crf<N>][:<reduction>]: feature mosaic through x264/x265, after a channel "
                  "reduction (a .basis.npz or learned .npz path, or the name of a shipped one)")
def _video(m: re.Match[str], **kw: Any) -> Encoder:
    if m.group(1):
        kw.setdefault("inner", m.group(1))
    if m.group(2):
        kw.setdefault("crf", float(m.group(2)))
    if m.group(3):
        kw.setdefault("reduction", reduction.resolve(m.group(3)))
    return video.VideoEncoder(**kw)


@register_encoder(r"learned:(.+)", "learned:<model.npz>: learned bottleneck + temporal coding of its latent")
def _learned(m: re.Match[str], **kw: Any) -> Encoder:
    if "budget_bps" in kw:
        return AdaptiveLearnedEncoder(m.group(1), **kw)
    return learned.LearnedEncoder(m.group(1), **kw)


def make_encoder(spec: str = "q8-zstd", **kwargs: Any) -> Encoder:
    """Build an encoder from a spec string (see `encoder_specs()`), e.g. "video", "video-hevc-crf32",
    "q8-zstd", "temporal-q6", "learned:<path>"; keyword arguments set the encoder's parameters. With
    `budget_bps=` (and `fps=`), "temporal", "adaptive" and "learned:<path>" pick their own setting."""
    for pattern, builder, _ in _ENCODERS:
        m = pattern.fullmatch(spec)
        if m:
            return builder(m, **kwargs)
    raise ValueError(f"unknown codec spec {spec!r}; known: {'; '.join(encoder_specs())}")


def make_decoder(limits: Limits | None = None, learned_dir: str | None = None,
                 expected: dict[str, list[int]] | dict[str, tuple[int, ...]] | None = None) -> Decoder:
    """A decoder for one stream; it reads the codec and its parameters from each payload. With
    `expected` (per-frame shapes without the batch axis) and no `limits`, the limits are derived
    from them: frames declaring other or larger tensors are refused before decompression."""
    if limits is None:
        limits = Limits.for_shapes(expected) if expected else Limits()
    return Decoder(limits, learned_dir=learned_dir, expected=expected)
