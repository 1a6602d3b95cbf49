"""Training-free feature codecs: stateless per-frame quantisation and temporal delta coding,
the encoder base class and the one generic decoder.

One encoder and one decoder per camera stream. The decoder reads everything it needs from the
payload header and keeps the reference of stateful streams; it refuses (CodecError) to decode a
delta frame against anything but the frame right before it. Codecs whose frames need more than
codes -> floats (the learned bottleneck, the inner video codec) register a frame decoder by their
wire name (`register_frame_decoder`), so this module names none of them.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np

from split_infer.codec import quant
from split_infer.codec.errors import CodecError, LimitExceeded
from split_infer.codec.wire import (
    DEFAULT_LIMITS,
    Q_AFFINE,
    Q_DELTA,
    Q_RAW,
    CodecParams,
    Limits,
    TensorRecord,
    WireFrame,
    pack,
    unpack,
)

Tensors = dict[str, np.ndarray]  # tensor name -> array, what an encoder takes and a decoder returns


class EncodedFrame(NamedTuple):
    """What one `Encoder.encode_frame` call made: the payload, and whether it is a key frame."""

    payload: bytes
    key: bool
    seq: int


# wire codec name -> factory of a per-stream frame decoder: (frame, decoder) -> tensors
FrameDecoder = Callable[[WireFrame, "Decoder"], Tensors]
_FRAME_DECODERS: dict[str, Callable[[], FrameDecoder]] = {}
_Factory = TypeVar("_Factory", bound=Callable[[], FrameDecoder])


def register_frame_decoder(codec: str) -> Callable[[_Factory], _Factory]:
    """Class decorator: frames of wire codec `codec` decode through a fresh instance per stream."""
    def wrap(factory: _Factory) -> _Factory:
        _FRAME_DECODERS[codec] = factory
        return factory
    return wrap


def _check_tensors(tensors: Tensors) -> Tensors:
    if not isinstance(tensors, dict) or not tensors:
        raise CodecError("encode() takes a non-empty dict of name -> float array")
    out = {}
    for name, x in tensors.items():
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim < 2:
            raise CodecError(f"tensor {name!r}: need a float array [N, C, ...], got {x.dtype} {x.shape}")
        if not np.all(np.isfinite(x)):
            raise CodecError(f"tensor {name!r}: contains NaN or inf")
        out[name] = np.ascontiguousarray(x, dtype=np.float32)
    return out


class Encoder:
    """Base: sequence numbers and key-frame requests."""

    codec = ""

    def __init__(self, cut: int | None = None, zstd_level: int = 3) -> None:
        self.cut, self.zstd_level, self.seq, self._force_key = cut, zstd_level, 0, True
        self.stream = secrets.randbits(32)  # tells this encoder's deltas from another's

    def request_key_frame(self) -> None:
        """Make the next frame self-contained (after a gap, on the decoder's request)."""
        self._force_key = True

    @property
    def params(self) -> CodecParams:
        return {}

    def report(self) -> dict[str, Any]:
        """The setting in use (the bandwidth-adaptive encoder reports what it chose)."""
        return {"codec": self.codec, **self.params}

    def encode(self, tensors: Tensors) -> bytes:
        """The payload of one frame (see `encode_frame` for whether it is a key frame)."""
        return self.encode_frame(tensors).payload

    def encode_frame(self, tensors: Tensors) -> EncodedFrame:
        try:
            tensors = _check_tensors(tensors)
            key = self._force_key or self._wants_key(tensors)
            records = self._encode(tensors, key)
            payload = pack(WireFrame(self.codec, self.seq, key, records, self.params, self.cut, self.stream),
                           self.zstd_level)
        except Exception:
            self._force_key = True  # our reference may be half-updated: restart cleanly
            raise
        out = EncodedFrame(payload, key, self.seq)
        self._force_key = False
        self.seq += 1
        self._after(len(payload), key)
        return out

    def _wants_key(self, tensors: Tensors) -> bool:
        return False

    def _after(self, nbytes: int, key: bool) -> None:
        pass

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        raise NotImplementedError


class QuantEncoder(Encoder):
    """Stateless: per-frame, per-channel min/max quantisation to `bits`, zstd. Every frame is a key frame."""

    codec = "q8-zstd"

    def __init__(self, bits: int = 8, **kw: Any) -> None:
        super().__init__(**kw)
        if not 2 <= bits <= 8:
            raise ValueError("bits must be 2..8")
        self.bits = bits

    @property
    def params(self) -> CodecParams:
        return {"bits": self.bits}

    def _wants_key(self, tensors: Tensors) -> bool:
        return True

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        recs = []
        for name, x in tensors.items():
            scale, offset = quant.affine_params(*quant.channel_range(x), self.bits)
            codes = quant.quantise(x, scale, offset, self.bits)
            recs.append(TensorRecord(name, np.dtype("<f4"), x.shape, Q_AFFINE, self.bits, scale, offset,
                                     codes.tobytes()))
        return recs


@dataclass
class _Ref:
    """The reconstruction both ends share for one tensor of a temporal stream."""

    codes: np.ndarray  # uint8, the tensor's shape
    scale: np.ndarray
    offset: np.ndarray
    bits: int


class TemporalEncoder(Encoder):
    """Temporal delta coding with per-channel scales fixed at each key frame.

    Key frame: per-channel scales from the frame's range widened by `headroom`, absolute codes.
    Delta frame: code difference to the previous *reconstruction*; differences under `deadzone`
    steps are sent as zero (so the error stays bounded: the decoder's reference is ours).
    """

    codec = "temporal"

    def __init__(self, bits: int = 8, deadzone: int = 2, key_interval: int = 30, headroom: float = 0.05,
                 **kw: Any) -> None:
        super().__init__(**kw)
        if not 2 <= bits <= 8 or deadzone < 1 or key_interval < 1:
            raise ValueError("bits 2..8, deadzone >= 1, key_interval >= 1")
        self.bits, self.deadzone, self.key_interval, self.headroom = bits, deadzone, key_interval, headroom
        self._refs: dict[str, _Ref] = {}
        self._since_key = 0

    @property
    def params(self) -> CodecParams:
        return {"bits": self.bits, "deadzone": self.deadzone, "key_interval": self.key_interval}

    def _wants_key(self, tensors: Tensors) -> bool:
        if self._since_key >= self.key_interval or set(tensors) != set(self._refs):
            return True
        return any(self._refs[n].codes.shape != x.shape or self._refs[n].bits != self.bits
                   for n, x in tensors.items())

    def _after(self, nbytes: int, key: bool) -> None:
        self._since_key = 1 if key else self._since_key + 1

    def _key_scales(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = quant.channel_range(x)
        pad = (hi - lo) * self.headroom
        return quant.affine_params(lo - pad, hi + pad, self.bits)

    def _encode(self, tensors: Tensors, key: bool) -> list[TensorRecord]:
        recs = []
        if key:
            self._refs = {}
        for name, x in tensors.items():
            if key:
                scale, offset = self._key_scales(x)
                codes = quant.quantise(x, scale, offset, self.bits)
                self._refs[name] = _Ref(codes, scale, offset, self.bits)
                recs.append(TensorRecord(name, np.dtype("<f4"), x.shape, Q_AFFINE, self.bits, scale, offset,
                                         codes.tobytes()))
                continue
            ref = self._refs[name]
            codes = quant.quantise(x, ref.scale, ref.offset, ref.bits)
            diff = codes.astype(np.int16)
            diff -= ref.codes
            if self.deadzone > 1:
                diff[np.abs(diff) < self.deadzone] = 0
            step = diff.astype(np.uint8)  # two's complement wrap: ref + step == new code (mod 256)
            ref.codes += step
            if ref.bits < 8:
                step &= (1 << ref.bits) - 1
            recs.append(TensorRecord(name, np.dtype("<f4"), x.shape, Q_DELTA, ref.bits, body=step.tobytes()))
        return recs


class Decoder:
    """Decodes any codec's payloads for one stream; keeps the reference of stateful codecs."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, learned_dir: str | None = None,
                 expected: Mapping[str, Sequence[int]] | None = None) -> None:
        self.limits, self.learned_dir = limits, learned_dir  # learned_dir: model files for frames that name one
        # The per-frame tensors (shapes without the batch axis) the receiver expects, if it knows them:
        # a frame of the plain codes codecs that declares any other is refused from its header alone.
        self.expected: dict[str, tuple[int, ...]] | None = (
            {k: (1, *(int(d) for d in v)) for k, v in expected.items()} if expected else None)
        self.cache: dict[str, Any] = {}  # per-decoder state of registered frame decoders (loaded models)
        self._frame_decoders: dict[str, FrameDecoder] = {}
        self._refs: dict[str, _Ref] = {}
        self._last_seq: int | None = None
        self._stream: int | None = None
        self._codec: str | None = None
        self.needs_key_frame = True  # nothing to predict from yet
        self.last_frame: WireFrame | None = None  # header of the last decoded frame (codec, seq, params)

    @property
    def last_frame_self_contained(self) -> bool:
        """Whether the last decoded payload decodes on its own with the plain codes decoder (no
        state, no model, no inner codec): such payloads can be queued for any worker unchanged."""
        f = self.last_frame
        return f is not None and f.key and f.codec not in _FRAME_DECODERS

    def decode(self, payload: bytes) -> Tensors:
        try:
            frame = unpack(payload, self.limits, self._check_header)
            out = self._decode(frame)
        except LimitExceeded as e:
            self.needs_key_frame = True
            if self.expected is None:
                raise
            raise LimitExceeded(f"{e}: the frame's tensors do not match the expected {self.expected}") from None
        except CodecError:
            self.needs_key_frame = True
            raise
        except Exception as e:  # never let a hostile payload surface as anything but a CodecError
            self.needs_key_frame = True
            raise CodecError(f"undecodable payload: {type(e).__name__}: {e}") from e
        self._last_seq, self._codec, self._stream = frame.seq, frame.codec, frame.stream
        self.needs_key_frame, self.last_frame = False, frame
        return out

    def _check_header(self, frame: WireFrame) -> None:
        """Before any body is decompressed, when the expected tensors are known: every tensor carries
        one frame, and the plain codes codecs (whose tensors are the features themselves) carry
        exactly the expected ones. Other codecs (a latent, fewer channels) are bounded by `limits`
        and checked once decoded."""
        if self.expected is None:
            return
        got = {t.name: t.shape for t in frame.tensors}
        if any(shape[0] != 1 for shape in got.values()):
            raise CodecError(f"one frame per payload: tensors must be [1, ...], got {got}")
        if frame.codec not in _FRAME_DECODERS and got != self.expected:
            raise CodecError(f"declared feature tensors {got} do not match the expected {self.expected}")

    def _decode(self, frame: WireFrame) -> Tensors:
        if not frame.key:
            self._check_order(frame)
        if frame.codec not in _FRAME_DECODERS:
            return self.decode_codes(frame)
        if frame.key or frame.codec not in self._frame_decoders:
            self._frame_decoders[frame.codec] = _FRAME_DECODERS[frame.codec]()
        return self._frame_decoders[frame.codec](frame, self)

    def decode_codes(self, frame: WireFrame) -> Tensors:
        """Affine, delta or raw codes -> tensors, keeping the reference of delta streams."""
        refs: dict[str, _Ref] = {}
        out: Tensors = {}
        for t in frame.tensors:
            if t.mode == Q_RAW:
                out[t.name] = np.frombuffer(t.body, t.dtype).reshape(t.shape).copy()
                continue
            codes = np.frombuffer(t.body, np.uint8).reshape(t.shape)
            if t.mode == Q_AFFINE:
                if not frame.key and frame.codec != "q8-zstd":
                    raise CodecError(f"tensor {t.name}: absolute codes in a delta frame")
                ref = _Ref(codes.copy(), *t.affine(), t.bits)
            else:  # Q_DELTA
                if frame.key:
                    raise CodecError(f"tensor {t.name}: delta codes in a key frame")
                prev = self._refs.get(t.name)
                if prev is None or prev.codes.shape != t.shape or prev.bits != t.bits:
                    raise CodecError(f"tensor {t.name}: delta does not match the reference (shape/bits)")
                new = prev.codes + codes
                if t.bits < 8:
                    new &= (1 << t.bits) - 1
                ref = _Ref(new, prev.scale, prev.offset, t.bits)
            refs[t.name] = ref
            out[t.name] = quant.dequantise(ref.codes, ref.scale, ref.offset, t.dtype)
        if not frame.key and set(refs) != set(self._refs):
            raise CodecError("delta frame carries a different set of tensors than its reference")
        self._refs = refs  # commit only after the whole frame decoded
        return out

    def _check_order(self, frame: WireFrame) -> None:
        if self.needs_key_frame or self._last_seq is None:
            raise CodecError(f"delta frame {frame.seq} but no valid reference: waiting for a key frame")
        if frame.stream != self._stream:
            raise CodecError(f"delta frame of stream {frame.stream:08x} after a reference of stream "
                             f"{self._stream:08x} (encoder restarted?); waiting for a key frame")
        if frame.codec != self._codec:
            raise CodecError(f"delta frame of codec {frame.codec!r} after a {self._codec!r} reference")
        if frame.seq != self._last_seq + 1:
            what = "lost frame(s)" if frame.seq > self._last_seq + 1 else "reordered or repeated frame"
            raise CodecError(f"{what}: got frame {frame.seq} after {self._last_seq}; waiting for a key frame")
