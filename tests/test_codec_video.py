"""The `video` codec: features as a mosaic through x264/x265. Round trips, stream rules, hostile packets."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from split_infer.codec import CodecError, make_decoder, make_encoder
from split_infer.codec.video import Mosaic
from split_infer.codec.wire import Q_VIDEO, unpack

pytestmark = pytest.mark.unit

SHAPE = (1, 12, 16, 24)


def clip(n: int, seed: int = 0, shape=SHAPE) -> list[np.ndarray]:
    """Smooth feature-like maps with a blob moving one pixel per frame (what video coding predicts)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[2], : shape[3]]
    base = np.stack([np.sin(xx / (2 + c) + c) * np.cos(yy / (3 + c)) for c in range(shape[1])])[None]
    base = (base * np.linspace(0.3, 3, shape[1]).reshape(1, -1, 1, 1)).astype(np.float32)
    out = []
    for i in range(n):
        blob = np.exp(-((xx - 2 - i % (shape[3] - 4)) ** 2 + (yy - shape[2] / 2) ** 2) / 5)
        out.append((base + 2.0 * blob + 0.01 * rng.standard_normal(shape)).astype(np.float32))
    return out


@pytest.mark.parametrize("spec", ["video", "video-hevc"])
def test_lossless_setting_round_trips_codes_exactly(spec: str) -> None:
    enc, dec = make_encoder(spec, crf=0, key_interval=5, cut=4), make_decoder()
    for i, x in enumerate(clip(8)):
        out = enc.encode_frame({"x4": x})
        assert out.key == (i % 5 == 0) and out.seq == i
        y = dec.decode(out.payload)["x4"]
        st = enc._streams["x4"]
        step = st.scale.reshape(1, -1, 1, 1)
        inside = np.abs(x - (st.offset.reshape(1, -1, 1, 1) + 128 * step)) < 127 * step  # not clipped
        # CRF 0 is lossless in x264 and x265: only the 8-bit quantisation remains (half a step)
        assert np.all(np.abs(y - x)[inside] <= 0.5 * np.broadcast_to(step, x.shape)[inside] + 1e-5)
        assert dec.last_frame.cut == 4 and dec.last_frame.key == out.key


def test_lossy_setting_spends_fewer_bytes_and_delta_frames_are_small() -> None:
    frames = clip(20)
    sizes = {}
    for crf in (10, 35):
        enc, dec = make_encoder("video", crf=crf, key_interval=10), make_decoder()
        outs = [enc.encode_frame({"x4": x}) for x in frames]
        errs = [np.abs(dec.decode(o.payload)["x4"] - x).mean() for o, x in zip(outs, frames, strict=True)]
        sizes[crf] = [len(o.payload) for o in outs]
        assert max(errs) < 0.5  # the maps span about +-3
        assert np.mean([s for o, s in zip(outs, sizes[crf], strict=True) if not o.key]) < 0.5 * sizes[crf][0]
    assert sum(sizes[35]) < 0.7 * sum(sizes[10])


def test_key_frame_carries_scales_and_delta_frames_do_not() -> None:
    enc = make_encoder("video")
    key, delta = (unpack(enc.encode({"x4": x})) for x in clip(2))
    assert key.key and key.tensors[0].mode == Q_VIDEO and key.tensors[0].scales.shape == (SHAPE[1],)
    assert not delta.key and delta.tensors[0].scales is None and delta.params["inner"] == "h264"


def test_lost_frame_needs_a_key_frame_and_the_stream_recovers() -> None:
    frames = clip(12)
    enc, dec = make_encoder("video", key_interval=100), make_decoder()
    payloads = [enc.encode({"x4": x}) for x in frames[:4]]
    dec.decode(payloads[0]), dec.decode(payloads[1])
    with pytest.raises(CodecError, match="lost frame"):
        dec.decode(payloads[3])
    assert dec.needs_key_frame
    enc.request_key_frame()
    out = enc.encode_frame({"x4": frames[4]})
    assert out.key
    assert np.abs(dec.decode(out.payload)["x4"] - frames[4]).mean() < 0.5 and not dec.needs_key_frame
    assert not dec.last_frame_self_contained  # the ingest re-queues it in a plain codec for workers


def test_a_foreign_stream_or_inner_codec_is_refused() -> None:
    frames = clip(3)
    a, b, dec = make_encoder("video"), make_encoder("video"), make_decoder()
    dec.decode(a.encode({"x4": frames[0]}))
    b.encode({"x4": frames[0]})
    with pytest.raises(CodecError, match="stream"):
        dec.decode(b.encode({"x4": frames[1]}))


@pytest.mark.parametrize("shape", [(1, 128, 48, 80), (1, 3, 2, 2), (1, 7, 16, 24), (1, 1, 8, 8)])
def test_mosaic_tiles_round_trip(shape) -> None:
    m = Mosaic.for_shape(shape)
    codes = np.random.default_rng(0).integers(0, 256, shape[1:], dtype=np.uint8)
    pic = m.pack(codes)
    assert pic.shape == (m.picture_height, m.picture_width) and m.rows * m.cols >= shape[1]
    assert np.array_equal(m.unpack(pic), codes)


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 4, 7, 8), (4, 8, 8)])
def test_unsupported_shapes_are_refused_clearly(shape) -> None:
    with pytest.raises(CodecError, match="video codec"):
        make_encoder("video").encode({"x4": np.zeros(shape, np.float32)})


def test_bad_settings_are_refused() -> None:
    for kw in (dict(inner="vp9"), dict(crf=60), dict(clip=0), dict(balance=2)):
        with pytest.raises(ValueError):
            make_encoder("video", **kw)


STREAM = [make_encoder("video", key_interval=50).encode({"x4": x}) for x in clip(3, seed=5)]


def reseal(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@given(index=st.integers(0, 2), edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                min_size=1, max_size=8))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_corrupt_packets_with_valid_checksums_fail_cleanly(index: int, edits) -> None:
    """A hostile sender edits header and packet bytes and reseals: a CodecError or finite tensors."""
    dec = make_decoder()
    for p in STREAM[:index]:
        dec.decode(p)
    body = bytearray(STREAM[index][:-4])
    for pos, val in edits:
        body[pos % len(body)] = val
    try:
        out = dec.decode(reseal(bytes(body)))
    except CodecError:
        assert dec.needs_key_frame
        return
    for x in out.values():
        assert x.shape[1:] == SHAPE[1:] or x.size <= 16 << 20
        assert np.all(np.isfinite(x))
