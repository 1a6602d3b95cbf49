"""The versioned wire format of one feature frame (see docs/wire-format.md).

Pure numpy + zstandard: this runs on the edge and parses untrusted bytes on the cloud.
Parsing checks every length against the bytes present and against `Limits` before it
allocates anything, verifies the CRC32 first, and decompresses with a hard output cap.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import zstandard

from split_infer.codec.errors import CodecError, LimitExceeded

MAGIC = b"SIFC"
VERSION = 1

# Codec ids on the wire. Never renumber: old payloads must keep their meaning.
CODEC_IDS: dict[str, int] = {"q8-zstd": 1, "temporal": 2, "learned": 3, "video": 4}
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}

FLAG_KEY = 0x01
CUT_NONE = 0xFFFF
VIDEO_SLACK = 1 << 16  # a video packet may exceed its raw codes by headers (lossless settings)

# Decoded dtypes (the dtype the decoder returns).
DTYPES: dict[int, np.dtype[Any]] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4")}
DTYPE_CODES: dict[np.dtype[Any], int] = {v: k for k, v in DTYPES.items()}

# How a tensor's body is coded.
Q_RAW = 0  # body: the decoded dtype's little-endian bytes
Q_AFFINE = 1  # body: uint8 codes; per-channel (axis 1) float32 scales and offsets in the header
Q_DELTA = 2  # body: uint8 codes minus the previous frame's codes, mod 2**bits; scales of the key frame
# body: one packet of an inner video codec (not zstd: it is entropy-coded already) holding the
# tensor's 8-bit codes as a mosaic; per-channel scales and offsets in the header of key frames only
Q_VIDEO = 3

_FIXED = struct.Struct("<4sBBBBIQHH")  # magic, version, codec, flags, n_tensors, stream, seq, cut, params_len
_TENSOR_TAIL = struct.Struct("<BBI")  # quant mode, bits, body length
_CRC = struct.Struct("<I")

Float32Array = npt.NDArray[np.float32]
CodecParams = dict[str, Any]  # a codec's settings in the header: JSON numbers and short strings


@dataclass(frozen=True)
class Limits:
    """Bounds on what a decoder accepts from untrusted bytes (all configurable)."""

    max_payload_bytes: int = 64 << 20
    max_tensors: int = 8
    max_dims: int = 6
    max_dim: int = 1 << 16
    max_elements: int = 16 << 20  # per tensor
    max_total_elements: int = 32 << 20  # per frame
    max_params_bytes: int = 4096
    max_name_len: int = 64

    @classmethod
    def for_shapes(cls, shapes: Mapping[str, Sequence[int]], max_payload_bytes: int = 64 << 20) -> Limits:
        """Limits for a receiver that expects these per-frame tensors (shapes without the batch axis,
        batch 1): a header declaring more tensors, ranks, dimensions or elements is refused before
        anything is decompressed. Codecs that send other tensors (a latent, fewer channels) send fewer
        elements, so they fit too."""
        if not shapes or any(not s or any(int(d) < 1 for d in s) for s in shapes.values()):
            raise ValueError(f"expected feature shapes must be non-empty and positive, got {dict(shapes)}")
        sizes = [math.prod(int(d) for d in s) for s in shapes.values()]
        return cls(max_payload_bytes=max_payload_bytes, max_tensors=len(shapes),
                   max_dims=1 + max(len(s) for s in shapes.values()),
                   max_dim=max(int(d) for s in shapes.values() for d in s),
                   max_elements=max(sizes), max_total_elements=sum(sizes))


DEFAULT_LIMITS = Limits()


@dataclass
class TensorRecord:
    """One tensor as it travels: descriptor plus its (decompressed) body bytes."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    mode: int = Q_RAW
    bits: int = 0
    scales: Float32Array | None = None  # float32 [C], for Q_AFFINE
    offsets: Float32Array | None = None
    body: bytes = b""

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) >= 2 else 1

    def expected_body_len(self) -> int:
        """Exact decompressed size implied by the descriptor (for Q_VIDEO: the most it may take)."""
        n = int(np.prod(self.shape, dtype=np.int64))
        if self.mode == Q_VIDEO:
            return n + VIDEO_SLACK
        return n * self.dtype.itemsize if self.mode == Q_RAW else n

    def carries_scales(self, key: bool) -> bool:
        return self.mode == Q_AFFINE or (self.mode == Q_VIDEO and key)

    def affine(self) -> tuple[Float32Array, Float32Array]:
        """The scales and offsets of a tensor that carries them (`unpack` has checked that it does)."""
        if self.scales is None or self.offsets is None:
            raise CodecError(f"tensor {self.name}: no scales and offsets")
        return self.scales, self.offsets


@dataclass
class WireFrame:
    """One payload, parsed: the header's fields and the tensors (bodies decompressed)."""

    codec: str
    seq: int
    key: bool
    tensors: list[TensorRecord]
    params: CodecParams = field(default_factory=dict)
    cut: int | None = None
    stream: int = 0  # random id of the encoder instance: a delta only follows its own stream


def _check_params(params: object, limits: Limits) -> CodecParams:
    if not isinstance(params, dict) or len(params) > 32:
        raise CodecError("codec params must be a JSON object with at most 32 keys")
    for k, v in params.items():
        if not isinstance(k, str) or len(k) > 64:
            raise CodecError("codec param names must be short strings")
        if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, str) and len(v) > 256):
            raise CodecError(f"codec param {k!r} must be a number or a short string")
    return params


def pack(frame: WireFrame, level: int = 3) -> bytes:
    """Serialise a frame. Bodies are zstd-compressed here (level: zstd level)."""
    if frame.codec not in CODEC_IDS:
        raise CodecError(f"unknown codec {frame.codec!r}")
    if not 1 <= len(frame.tensors) <= 255:
        raise CodecError("a frame carries 1 to 255 tensors")
    params = json.dumps(_check_params(frame.params, DEFAULT_LIMITS), separators=(",", ":"), sort_keys=True).encode()
    cut = CUT_NONE if frame.cut is None else int(frame.cut)
    if not 0 <= cut <= CUT_NONE or not 0 <= frame.seq < 1 << 64 or len(params) > 0xFFFF \
            or not 0 <= frame.stream < 1 << 32:
        raise CodecError("cut, seq or params out of range")
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    out = [_FIXED.pack(MAGIC, VERSION, CODEC_IDS[frame.codec], FLAG_KEY if frame.key else 0,
                       len(frame.tensors), frame.stream, frame.seq, cut, len(params)), params]
    bodies = []
    for t in frame.tensors:
        name = t.name.encode()
        if not 1 <= len(name) <= 255 or not 1 <= len(t.shape) <= 255:
            raise CodecError(f"bad tensor name or rank: {t.name!r} {t.shape}")
        body = t.body if t.mode == Q_VIDEO else cctx.compress(t.body)
        bodies.append(body)
        out.append(struct.pack(f"<B{len(name)}sBB{len(t.shape)}I", len(name), name,
                               DTYPE_CODES[np.dtype(t.dtype)], len(t.shape), *t.shape))
        out.append(_TENSOR_TAIL.pack(t.mode, t.bits, len(body)))
        if t.carries_scales(frame.key):
            out.append(np.asarray(t.scales, "<f4").tobytes())
            out.append(np.asarray(t.offsets, "<f4").tobytes())
    out += bodies
    data = b"".join(out)
    return data + _CRC.pack(zlib.crc32(data))


class _Reader:
    """Reads a payload front to back; every read is checked against the bytes left."""

    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError(f"truncated payload: {what} needs {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, st: struct.Struct, what: str) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size, what))


class _Header(NamedTuple):
    codec_id: int
    flags: int
    n_tensors: int
    stream: int
    seq: int
    cut: int
    params_len: int

    @property
    def key(self) -> bool:
        return bool(self.flags & FLAG_KEY)


HeaderCheck = Callable[[WireFrame], None]  # sees a frame whose bodies are still empty; raises CodecError


def unpack(payload: bytes, limits: Limits = DEFAULT_LIMITS, check: HeaderCheck | None = None) -> WireFrame:
    """Parse and verify a payload. Raises CodecError on anything malformed; never allocates
    more than the declared shapes, and only within `limits`. `check` (if given) vets the header
    and the tensor descriptors before any body is decompressed."""
    body = _checked_body(payload, limits)
    r = _Reader(body)
    header = _read_header(r, limits)
    params = _read_params(r, header.params_len, limits)
    tensors, body_lens = _read_descriptors(r, header, limits)
    frame = WireFrame(CODEC_NAMES[header.codec_id], header.seq, header.key, tensors, params,
                      None if header.cut == CUT_NONE else header.cut, header.stream)
    if check is not None:
        check(frame)
    dctx = zstandard.ZstdDecompressor()
    for t, body_len in zip(tensors, body_lens, strict=True):
        t.body = _read_body(r, t, body_len, dctx)
    if r.pos != len(body):
        raise CodecError(f"{len(body) - r.pos} trailing bytes after the last tensor")
    return frame


def _checked_body(payload: bytes, limits: Limits) -> memoryview:
    """The payload without its CRC, once size, magic, version and CRC are right."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    data = memoryview(payload).cast("B")
    if len(data) > limits.max_payload_bytes:
        raise CodecError(f"payload of {len(data)} bytes exceeds the limit of {limits.max_payload_bytes}")
    if len(data) < _FIXED.size + _CRC.size:
        raise CodecError(f"truncated payload: {len(data)} bytes is shorter than any frame")
    if bytes(data[:4]) != MAGIC:
        raise CodecError("not a split-infer feature frame (bad magic)")
    if data[4] != VERSION:
        raise CodecError(f"unsupported wire format version {data[4]} (this decoder reads {VERSION})")
    body, (crc,) = data[:-_CRC.size], _CRC.unpack(data[-_CRC.size:])
    if zlib.crc32(body) != crc:
        raise CodecError("checksum mismatch: the payload is corrupt or truncated")
    return body


def _read_header(r: _Reader, limits: Limits) -> _Header:
    _, _, *fields = r.unpack(_FIXED, "header")
    h = _Header(*fields)
    if h.codec_id not in CODEC_NAMES:
        raise CodecError(f"unknown codec id {h.codec_id}")
    if h.flags & ~FLAG_KEY:
        raise CodecError(f"unknown flags 0x{h.flags:02x}")
    if not 1 <= h.n_tensors <= limits.max_tensors:
        raise LimitExceeded(f"{h.n_tensors} tensors, allowed 1 to {limits.max_tensors}")
    if h.params_len > limits.max_params_bytes:
        raise CodecError(f"codec params of {h.params_len} bytes exceed {limits.max_params_bytes}")
    return h


def _read_params(r: _Reader, params_len: int, limits: Limits) -> CodecParams:
    if not params_len:
        return {}
    try:
        params = json.loads(bytes(r.take(params_len, "codec params")).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CodecError(f"codec params are not valid JSON: {e}") from None
    return _check_params(params, limits)


def _read_descriptors(r: _Reader, header: _Header, limits: Limits) -> tuple[list[TensorRecord], list[int]]:
    """Every tensor's descriptor (bodies still empty) and its body's length on the wire."""
    tensors: list[TensorRecord] = []
    body_lens: list[int] = []
    total = 0
    for i in range(header.n_tensors):
        name = _read_name(r, i, {t.name for t in tensors}, limits)
        dtype, shape = _read_dtype_and_shape(r, name, limits)
        n = math.prod(shape)
        total += n
        if n > limits.max_elements or total > limits.max_total_elements:
            raise LimitExceeded(f"tensor {name}: {n} elements ({total} in the frame) exceed the limits")
        mode, bits, body_len = r.unpack(_TENSOR_TAIL, "tensor coding")
        _check_coding(name, dtype, mode, bits)
        t = TensorRecord(name, dtype, shape, mode, bits)
        if t.carries_scales(header.key):
            t.scales, t.offsets = _read_scales(r, name, t.channels)
        tensors.append(t)
        body_lens.append(body_len)
    return tensors, body_lens


def _read_name(r: _Reader, i: int, taken: set[str], limits: Limits) -> str:
    (name_len,) = r.take(1, "tensor name length")
    if not 1 <= name_len <= limits.max_name_len:
        raise CodecError(f"tensor {i}: name length {name_len} out of range")
    try:
        name = bytes(r.take(name_len, "tensor name")).decode("ascii")
    except UnicodeDecodeError:
        raise CodecError(f"tensor {i}: name is not ASCII") from None
    if not name.isidentifier() or name in taken:
        raise CodecError(f"tensor {i}: bad or duplicate name {name!r}")
    return name


def _read_dtype_and_shape(r: _Reader, name: str, limits: Limits) -> tuple[np.dtype[Any], tuple[int, ...]]:
    dtype_code, ndim = r.take(2, "tensor dtype and rank")
    if dtype_code not in DTYPES:
        raise CodecError(f"tensor {name}: unknown dtype code {dtype_code}")
    if not 1 <= ndim <= limits.max_dims:
        raise LimitExceeded(f"tensor {name}: rank {ndim}, allowed 1 to {limits.max_dims}")
    shape: tuple[int, ...] = struct.unpack(f"<{ndim}I", r.take(4 * ndim, "tensor shape"))
    if any(not 1 <= d <= limits.max_dim for d in shape):
        raise LimitExceeded(f"tensor {name}: shape {shape} has a dimension outside 1..{limits.max_dim}")
    return DTYPES[dtype_code], shape


def _check_coding(name: str, dtype: np.dtype[Any], mode: int, bits: int) -> None:
    if mode == Q_RAW:
        if bits != 0:
            raise CodecError(f"tensor {name}: raw tensors carry no bit depth")
    elif mode in (Q_AFFINE, Q_DELTA, Q_VIDEO):
        if not 1 <= bits <= 8:
            raise CodecError(f"tensor {name}: bit depth {bits}, allowed 1 to 8")
        if dtype.kind != "f":
            raise CodecError(f"tensor {name}: quantised tensors decode to floats")
    else:
        raise CodecError(f"tensor {name}: unknown coding mode {mode}")


def _read_scales(r: _Reader, name: str, channels: int) -> tuple[Float32Array, Float32Array]:
    scales = np.frombuffer(r.take(4 * channels, "scales"), "<f4").copy()
    offsets = np.frombuffer(r.take(4 * channels, "offsets"), "<f4").copy()
    # |value| <= 255 * 1e30 + 1e30 stays finite in float32: decoded tensors are always finite.
    if not (np.all((scales >= 0) & (scales <= 1e30)) and np.all(np.abs(offsets) <= 1e30)):
        raise CodecError(f"tensor {name}: scales/offsets must be finite (|x| <= 1e30), scales >= 0")
    return scales, offsets


def _read_body(r: _Reader, t: TensorRecord, body_len: int, dctx: zstandard.ZstdDecompressor) -> bytes:
    comp = r.take(body_len, f"tensor {t.name} body")
    cap = t.expected_body_len()
    if t.mode == Q_VIDEO:  # an inner codec's packet: its own decoder parses it, bounded by the shape
        if not 1 <= body_len <= cap:
            raise CodecError(f"tensor {t.name}: video packet of {body_len} bytes, allowed 1 to {cap}")
        return bytes(comp)
    try:
        declared = zstandard.get_frame_parameters(comp).content_size
    except zstandard.ZstdError as e:
        raise CodecError(f"tensor {t.name}: body is not a zstd frame: {e}") from None
    if declared in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) or declared > cap:
        raise CodecError(f"tensor {t.name}: body declares {declared} bytes, allowed {cap}")
    try:
        raw = dctx.decompress(comp, max_output_size=cap)
    except zstandard.ZstdError as e:
        raise CodecError(f"tensor {t.name}: corrupt body: {e}") from None
    if len(raw) != cap:  # outside Q_VIDEO the cap is the exact size
        raise CodecError(f"tensor {t.name}: body has {len(raw)} bytes, shape needs {cap}")
    return raw
