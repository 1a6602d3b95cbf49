"""The versioned wire format of one feature frame (see docs/wire-format.md).

Pure numpy + zstandard: this runs on the edge and parses untrusted bytes on the cloud.
Parsing checks every length against the bytes present and against `Limits` before it
allocates anything, verifies the CRC32 first, and decompresses with a hard output cap.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import zstandard

from split_infer.codec.errors import CodecError

MAGIC = b"SIFC"
VERSION = 1

# Codec ids on the wire. Never renumber: old payloads must keep their meaning.
CODEC_IDS: dict[str, int] = {"q8-zstd": 1, "temporal": 2, "learned": 3, "video": 4}
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_IDS.items()}

FLAG_KEY = 0x01
CUT_NONE = 0xFFFF
VIDEO_SLACK = 1 << 16  # a video packet may exceed its raw codes by headers (lossless settings)

# Decoded dtypes (the dtype the decoder returns).
DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4")}
DTYPE_CODES: dict[np.dtype, int] = {v: k for k, v in DTYPES.items()}

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


@dataclass
class TensorRecord:
    """One tensor as it travels: descriptor plus its (decompressed) body bytes."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    mode: int = Q_RAW
    bits: int = 0
    scales: np.ndarray | None = None  # float32 [C], for Q_AFFINE
    offsets: np.ndarray | None = None
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


@dataclass
class Frame:
    codec: str
    seq: int
    key: bool
    tensors: list[TensorRecord]
    params: dict = field(default_factory=dict)
    cut: int | None = None
    stream: int = 0  # random id of the encoder instance: a delta only follows its own stream


def _check_params(params: object, limits: Limits) -> dict:
    if not isinstance(params, dict) or len(params) > 32:
        raise CodecError("codec params must be a JSON object with at most 32 keys")
    for k, v in params.items():
        if not isinstance(k, str) or len(k) > 64:
            raise CodecError("codec param names must be short strings")
        if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (isinstance(v, str) and len(v) > 256):
            raise CodecError(f"codec param {k!r} must be a number or a short string")
    return params


def pack(frame: Frame, level: int = 3) -> bytes:
    """Serialise a frame. Bodies are zstd-compressed here (level: zstd level)."""
    if frame.codec not in CODEC_IDS:
        raise CodecError(f"unknown codec {frame.codec!r}")
    if not 1 <= len(frame.tensors) <= 255:
        raise CodecError("a frame carries 1 to 255 tensors")
    params = json.dumps(_check_params(frame.params, Limits()), separators=(",", ":"), sort_keys=True).encode()
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
    def __init__(self, data: memoryview) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError(f"truncated payload: {what} needs {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        return st.unpack(self.take(st.size, what))


def unpack(payload: bytes, limits: Limits = Limits()) -> Frame:
    """Parse and verify a payload. Raises CodecError on anything malformed; never allocates
    more than the declared shapes, and only within `limits`."""
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

    r = _Reader(body)
    _, _, codec_id, flags, n_tensors, stream, seq, cut, params_len = r.unpack(_FIXED, "header")
    if codec_id not in CODEC_NAMES:
        raise CodecError(f"unknown codec id {codec_id}")
    if flags & ~FLAG_KEY:
        raise CodecError(f"unknown flags 0x{flags:02x}")
    if not 1 <= n_tensors <= limits.max_tensors:
        raise CodecError(f"{n_tensors} tensors, allowed 1 to {limits.max_tensors}")
    if params_len > limits.max_params_bytes:
        raise CodecError(f"codec params of {params_len} bytes exceed {limits.max_params_bytes}")
    try:
        params = json.loads(bytes(r.take(params_len, "codec params")).decode("utf-8")) if params_len else {}
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CodecError(f"codec params are not valid JSON: {e}") from None
    params = _check_params(params, limits)

    tensors, body_lens, total, names = [], [], 0, set()
    for i in range(n_tensors):
        (name_len,) = r.take(1, "tensor name length")
        if not 1 <= name_len <= limits.max_name_len:
            raise CodecError(f"tensor {i}: name length {name_len} out of range")
        try:
            name = bytes(r.take(name_len, "tensor name")).decode("ascii")
        except UnicodeDecodeError:
            raise CodecError(f"tensor {i}: name is not ASCII") from None
        if not name.isidentifier() or name in names:
            raise CodecError(f"tensor {i}: bad or duplicate name {name!r}")
        names.add(name)
        dtype_code, ndim = r.take(2, "tensor dtype and rank")
        if dtype_code not in DTYPES:
            raise CodecError(f"tensor {name}: unknown dtype code {dtype_code}")
        if not 1 <= ndim <= limits.max_dims:
            raise CodecError(f"tensor {name}: rank {ndim}, allowed 1 to {limits.max_dims}")
        shape = struct.unpack(f"<{ndim}I", r.take(4 * ndim, "tensor shape"))
        if any(not 1 <= d <= limits.max_dim for d in shape):
            raise CodecError(f"tensor {name}: shape {shape} has a dimension outside 1..{limits.max_dim}")
        n = 1
        for d in shape:
            n *= d
        total += n
        if n > limits.max_elements or total > limits.max_total_elements:
            raise CodecError(f"tensor {name}: {n} elements ({total} in the frame) exceed the limits")
        mode, bits, body_len = r.unpack(_TENSOR_TAIL, "tensor coding")
        t = TensorRecord(name, DTYPES[dtype_code], shape, mode, bits)
        if mode == Q_RAW:
            if bits != 0:
                raise CodecError(f"tensor {name}: raw tensors carry no bit depth")
        elif mode in (Q_AFFINE, Q_DELTA, Q_VIDEO):
            if not 1 <= bits <= 8:
                raise CodecError(f"tensor {name}: bit depth {bits}, allowed 1 to 8")
            if DTYPES[dtype_code].kind != "f":
                raise CodecError(f"tensor {name}: quantised tensors decode to floats")
        else:
            raise CodecError(f"tensor {name}: unknown coding mode {mode}")
        if t.carries_scales(bool(flags & FLAG_KEY)):
            c = t.channels
            t.scales = np.frombuffer(r.take(4 * c, "scales"), "<f4").copy()
            t.offsets = np.frombuffer(r.take(4 * c, "offsets"), "<f4").copy()
            # |value| <= 255 * 1e30 + 1e30 stays finite in float32: decoded tensors are always finite.
            if not (np.all((t.scales >= 0) & (t.scales <= 1e30)) and np.all(np.abs(t.offsets) <= 1e30)):
                raise CodecError(f"tensor {name}: scales/offsets must be finite (|x| <= 1e30), scales >= 0")
        tensors.append(t)
        body_lens.append(body_len)

    dctx = zstandard.ZstdDecompressor()
    for t, body_len in zip(tensors, body_lens):
        comp = r.take(body_len, f"tensor {t.name} body")
        expected = cap = t.expected_body_len()
        if t.mode == Q_VIDEO:  # an inner codec's packet: its own decoder parses it, bounded by the shape
            if not 1 <= body_len <= cap:
                raise CodecError(f"tensor {t.name}: video packet of {body_len} bytes, allowed 1 to {cap}")
            t.body = bytes(comp)
            continue
        try:
            params_ = zstandard.get_frame_parameters(comp)
        except zstandard.ZstdError as e:
            raise CodecError(f"tensor {t.name}: body is not a zstd frame: {e}") from None
        if params_.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR) \
                or params_.content_size > cap:
            raise CodecError(f"tensor {t.name}: body declares {params_.content_size} bytes, allowed {cap}")
        try:
            raw = dctx.decompress(comp, max_output_size=cap)
        except zstandard.ZstdError as e:
            raise CodecError(f"tensor {t.name}: corrupt body: {e}") from None
        if len(raw) != expected:
            raise CodecError(f"tensor {t.name}: body has {len(raw)} bytes, shape needs {expected}")
        t.body = raw
    if r.pos != len(body):
        raise CodecError(f"{len(body) - r.pos} trailing bytes after the last tensor")
    return Frame(CODEC_NAMES[codec_id], seq, bool(flags & FLAG_KEY), tensors, params,
                 None if cut == CUT_NONE else cut, stream)
