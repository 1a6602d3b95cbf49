"""The codec's wire format: exact round trips, error bounds, and safe decoding of hostile bytes."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from split_infer.codec import CodecError, Limits, make_decoder, make_encoder, wire
from split_infer.codec.wire import Q_AFFINE, Q_RAW, TensorRecord, WireFrame, pack, unpack

pytestmark = pytest.mark.unit

FAST = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def features(seed: int = 0, shape=(1, 16, 12, 20)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    spread = np.linspace(0.05, 4.0, shape[1], dtype=np.float32).reshape(1, -1, 1, 1)
    return (rng.standard_normal(shape).astype(np.float32) * spread - 0.2).astype(np.float32)


def payload_for(x: np.ndarray | None = None, spec: str = "q8-zstd") -> bytes:
    return make_encoder(spec).encode({"x4": features() if x is None else x})


def reseal(body: bytes) -> bytes:
    """A hostile sender computes a valid checksum; the decoder must not rely on it."""
    return body + struct.pack("<I", zlib.crc32(body))


# --- round trips -------------------------------------------------------------------------------

def test_raw_tensors_round_trip_exactly() -> None:
    x = features(1)
    y = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    f = WireFrame("q8-zstd", 7, True, [TensorRecord("a", np.dtype("<f4"), x.shape, Q_RAW, body=x.tobytes()),
                                   TensorRecord("b", np.dtype("<i4"), y.shape, Q_RAW, body=y.tobytes())],
              {"bits": 8, "note": "x"}, cut=4)
    g = unpack(pack(f))
    assert (g.codec, g.seq, g.key, g.cut, g.params) == ("q8-zstd", 7, True, 4, {"bits": 8, "note": "x"})
    assert np.array_equal(np.frombuffer(g.tensors[0].body, "<f4").reshape(x.shape), x)
    assert np.array_equal(np.frombuffer(g.tensors[1].body, "<i4").reshape(y.shape), y)


@given(bits=st.integers(2, 8), seed=st.integers(0, 2**31), c=st.integers(1, 8), h=st.integers(1, 9))
@settings(max_examples=300, deadline=None)
def test_quantisation_error_is_within_half_a_step(bits: int, seed: int, c: int, h: int) -> None:
    x = features(seed, (1, c, h, 7))
    x[0, 0] = 3.0  # a constant channel (zero range) must come back exactly
    enc, dec = make_encoder(f"q{bits}-zstd"), make_decoder()
    y = dec.decode(enc.encode({"x4": x}))["x4"]
    assert y.shape == x.shape and y.dtype == np.float32
    rng = x.reshape(c, -1).max(axis=1) - x.reshape(c, -1).min(axis=1)
    step = rng / ((1 << bits) - 1)
    err = np.abs(y - x).reshape(c, -1).max(axis=1)
    assert np.all(err <= step / 2 + 1e-5 * (1 + np.abs(x).max()))
    assert np.array_equal(y[0, 0], x[0, 0])


def test_codes_round_trip_exactly_through_the_wire() -> None:
    x = features(3)
    frame = unpack(payload_for(x))
    (t,) = frame.tensors
    codes = np.frombuffer(t.body, np.uint8).reshape(x.shape)
    again = unpack(pack(WireFrame(frame.codec, frame.seq, True, [t], frame.params, frame.cut)))
    assert np.array_equal(np.frombuffer(again.tensors[0].body, np.uint8).reshape(x.shape), codes)


def test_header_carries_codec_seq_key_and_params() -> None:
    enc, dec = make_encoder("q8-zstd", cut=4), make_decoder()
    for i in range(3):
        dec.decode(enc.encode({"x4": features(i)}))
        assert (dec.last_frame.codec, dec.last_frame.seq, dec.last_frame.key) == ("q8-zstd", i, True)
        assert dec.last_frame.cut == 4 and dec.last_frame.params == {"bits": 8}


def test_encoder_rejects_bad_input_clearly() -> None:
    enc = make_encoder("q8-zstd")
    for bad in ({}, {"x": np.zeros(3, np.float32)}, {"x": np.full((1, 2, 3), np.nan, np.float32)},
                {"x": np.zeros((1, 2), np.int64)}):
        with pytest.raises(CodecError):
            enc.encode(bad)
    with pytest.raises(ValueError):
        make_encoder("nope")


# --- hostile bytes ------------------------------------------------------------------------------

GOOD = payload_for()


def decode_fails_cleanly(data: bytes, limits: Limits = Limits(), resealed: bool = False) -> None:
    """Either one CodecError, or (only for a payload whose checksum a sender recomputed) a
    well-formed result within the limits."""
    dec = make_decoder(limits)
    try:
        out = dec.decode(data)
    except CodecError:
        assert dec.needs_key_frame
        return
    if not resealed:
        assert data == GOOD  # with an honest checksum only the unchanged payload decodes
    total = 0
    for x in out.values():
        assert isinstance(x, np.ndarray) and x.ndim <= limits.max_dims
        total += x.size
        assert np.all(np.isfinite(x))
    assert total <= limits.max_total_elements


@given(st.integers(0, len(GOOD) - 1))
@FAST
def test_truncation_is_a_codec_error(n: int) -> None:
    with pytest.raises(CodecError):
        make_decoder().decode(GOOD[:n])


@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), min_size=1, max_size=4))
@FAST
def test_bit_flips_are_codec_errors(flips) -> None:
    data = bytearray(GOOD)
    for pos, mask in flips:
        data[pos] ^= mask
    decode_fails_cleanly(bytes(data))


@given(st.binary(max_size=512))
@FAST
def test_random_bytes_are_codec_errors(data: bytes) -> None:
    decode_fails_cleanly(data)
    decode_fails_cleanly(wire.MAGIC + bytes([wire.VERSION]) + data)
    decode_fails_cleanly(reseal(wire.MAGIC + bytes([wire.VERSION]) + data), resealed=True)


@given(st.lists(st.tuples(st.integers(4, 200), st.integers(0, 255)), min_size=1, max_size=6))
@FAST
def test_resealed_header_corruption_is_a_codec_error(edits) -> None:
    """Corrupt the header *and* fix the checksum: every length and bound must be checked."""
    body = bytearray(GOOD[:-4])
    for pos, val in edits:
        body[pos % len(body)] = val
    decode_fails_cleanly(reseal(bytes(body)), resealed=True)


def hostile_header(n_tensors=1, name=b"x4", dtype=1, dims=(1, 4, 2, 2), mode=Q_AFFINE, bits=8,
                   body: bytes | None = None, params=b"{}", codec=1, flags=1, body_len=None,
                   declared=None, scales: bytes | None = None) -> bytes:
    head = wire._FIXED.pack(wire.MAGIC, wire.VERSION, codec, flags, n_tensors, 1, 0, 4, len(params)) + params
    n = int(np.prod(dims)) if dims else 0
    if body is None:
        raw = bytes(n if mode != Q_RAW else 4 * n)
        body = zstandard.ZstdCompressor().compress(raw)
    desc = struct.pack(f"<B{len(name)}sBB{len(dims)}I", len(name), name, dtype, len(dims), *dims)
    desc += wire._TENSOR_TAIL.pack(mode, bits, len(body) if body_len is None else body_len)
    if mode == Q_AFFINE:
        c = dims[1] if len(dims) > 1 else 1
        desc += scales if scales is not None else np.ones(c, "<f4").tobytes() + np.zeros(c, "<f4").tobytes()
    return reseal(head + desc + body)


def test_hostile_header_baseline_decodes() -> None:
    out = make_decoder().decode(hostile_header())
    assert out["x4"].shape == (1, 4, 2, 2)


@pytest.mark.parametrize("kw, why", [
    (dict(n_tensors=0), "tensors"),
    (dict(n_tensors=200), "tensors"),
    (dict(dims=(1, 65536 * 2, 1, 1)), "dimension"),
    (dict(dims=(4096, 4096, 4, 4)), "exceed"),  # 268M elements declared: refused before allocating
    (dict(dims=(0, 4, 2, 2)), "dimension"),
    (dict(dims=(1,) * 7), "rank"),
    (dict(dtype=99), "dtype"),
    (dict(mode=9), "mode"),
    (dict(bits=0), "bit depth"),
    (dict(bits=9), "bit depth"),
    (dict(name=b"no-good"), "name"),
    (dict(name=b"\xff\xfe"), "name"),
    (dict(codec=77), "codec"),
    (dict(flags=0x80), "flags"),
    (dict(params=b"[1, 2]"), "JSON object"),
    (dict(params=b"{\"a\": " * 3000), "params"),
    (dict(params=b"\xff"), "JSON"),
    (dict(body_len=10**9), "truncated"),
    (dict(body=b"not zstd at all"), "zstd"),
    (dict(body=zstandard.ZstdCompressor().compress(bytes(10**6))), "declares"),  # zip bomb
    (dict(body=zstandard.ZstdCompressor().compress(bytes(15))), "needs"),
    (dict(scales=np.full(8, np.nan, "<f4").tobytes()), "finite"),
])
def test_hostile_headers_are_refused_with_a_clear_error(kw, why) -> None:
    with pytest.raises(CodecError, match=why):
        make_decoder().decode(hostile_header(**kw))


def test_streaming_zstd_body_without_size_is_refused() -> None:
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    body = cctx.compressobj().compress(bytes(16)) + cctx.compressobj().flush()
    with pytest.raises(CodecError):
        make_decoder().decode(hostile_header(body=body))


def test_limits_are_configurable() -> None:
    data = payload_for(features(0, (1, 16, 12, 20)))
    make_decoder(Limits(max_elements=16 * 12 * 20)).decode(data)
    with pytest.raises(CodecError, match="exceed"):
        make_decoder(Limits(max_elements=16 * 12 * 20 - 1)).decode(data)
    with pytest.raises(CodecError, match="limit"):
        make_decoder(Limits(max_payload_bytes=100)).decode(data)


def test_wrong_version_and_magic() -> None:
    with pytest.raises(CodecError, match="version"):
        make_decoder().decode(GOOD[:4] + b"\x09" + GOOD[5:])
    with pytest.raises(CodecError, match="magic"):
        make_decoder().decode(b"JUNK" + GOOD[4:])
    with pytest.raises(CodecError):
        make_decoder().decode("not bytes")  # type: ignore[arg-type]
