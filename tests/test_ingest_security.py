"""The ingest against hostile edges (issue 11): decompression bombs, frames of another node's
cameras, garbage that would leave state behind, frames dated in the future, look-alike ids."""

from __future__ import annotations

import asyncio
import re
import struct
import time
import zlib

import grpc
import pytest
import redis.asyncio as aioredis
import zstandard

from split_infer.cloud.admission import FrameRejected, Ingest
from split_infer.codec import CodecError, Limits, make_decoder, make_encoder, wire
from split_infer.config import CameraConfig, CloudConfig, ConfigError, EdgeToken, load_config
from split_infer.keys import Keys
from split_infer.proto import pb, pb_grpc
from support.cloud import SHAPES, IngestThread, features, frame
from support.redisdb import REDIS_URL

EXPECTED = {k: list(v[1:]) for k, v in SHAPES.items()}  # per frame, as ingest.feature_shapes holds them
BOMB_ELEMENTS = 16 << 20  # per tensor: 64 MiB of float32 each


def cloud_cfg(**kw) -> CloudConfig:
    base = {"redis_url": REDIS_URL, "cameras": [{"id": "cam-a", "url": "x"}, {"id": "cam-b", "url": "x"}],
            "ingest": {"feature_shapes": EXPECTED, "max_payload_bytes": 64 << 10}, **kw}
    return CloudConfig.model_validate(base)


def stub(addr: str) -> pb_grpc.FeatureIngestStub:
    return pb_grpc.FeatureIngestStub(grpc.insecure_channel(addr))


def queued(r, keys: Keys, cam: str) -> list[int]:
    return [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream(cam))]


def bomb(n_tensors: int = 2, elements: int = BOMB_ELEMENTS) -> bytes:
    """A valid-looking q8-zstd payload declaring `n_tensors` raw float32 tensors of `elements`
    each, whose zstd bodies (zeros) are a few hundred bytes: built without ever holding 64 MiB."""
    raw = elements * 4
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True)
    cobj = cctx.compressobj(size=raw)
    chunk = bytes(1 << 20)
    body = b"".join(cobj.compress(chunk) for _ in range(raw // len(chunk))) + cobj.flush()
    shape = (1, 256, elements // (256 * 256), 256)
    out = [wire._FIXED.pack(wire.MAGIC, wire.VERSION, wire.CODEC_IDS["q8-zstd"], wire.FLAG_KEY, n_tensors,
                            7, 0, wire.CUT_NONE, 0)]
    for i in range(n_tensors):
        name = f"x{i + 4}".encode()
        out.append(struct.pack(f"<B{len(name)}sBB4I", len(name), name, 1, 4, *shape))
        out.append(wire._TENSOR_TAIL.pack(wire.Q_RAW, 0, len(body)))
    out += [body] * n_tensors
    data = b"".join(out)
    return data + wire._CRC.pack(zlib.crc32(data))


class DecompressSpy:
    """Stands in for zstandard.ZstdDecompressor: records each requested output size and refuses
    any above `refuse_over` (so the test itself never allocates a bomb's output)."""

    requested: list[int] = []
    refuse_over = 1 << 22

    def __init__(self) -> None:
        self.real = REAL_DECOMPRESSOR()

    def decompress(self, data: bytes, max_output_size: int = 0) -> bytes:
        DecompressSpy.requested.append(max_output_size)
        if max_output_size > self.refuse_over:
            raise zstandard.ZstdError("spy: refused a large output")
        return self.real.decompress(data, max_output_size=max_output_size)


REAL_DECOMPRESSOR = zstandard.ZstdDecompressor


def rss_and_peak_kib() -> tuple[int, int]:
    with open("/proc/self/status") as f:
        status = dict(re.findall(r"^(\w+):\s+(\d+)", f.read(), re.M))
    return int(status["VmRSS"]), int(status["VmHWM"])


@pytest.mark.unit
def test_a_decoder_bounded_by_the_expected_shapes_refuses_a_bomb_before_decompressing(monkeypatch):
    payload = bomb()
    assert len(payload) < 8 << 10
    monkeypatch.setattr(zstandard, "ZstdDecompressor", DecompressSpy)
    DecompressSpy.requested = []
    # The default limits let the bomb through to a 64 MiB decompression per tensor (what the
    # ingest did before): the spy sees it asked for.
    with pytest.raises(CodecError):
        make_decoder().decode(payload)
    assert DecompressSpy.requested == [BOMB_ELEMENTS * 4]
    DecompressSpy.requested = []
    dec = make_decoder(expected=EXPECTED)
    with pytest.raises(CodecError, match="2 tensors, allowed 1 to 1"):
        dec.decode(payload)
    with pytest.raises(CodecError, match="outside 1..20"):  # one tensor: its header alone
        dec.decode(bomb(1))
    # Fewer elements than the limit but another shape: refused from the header too.
    other = make_decoder(expected={"x4": [16, 10, 24]})
    with pytest.raises(CodecError, match="do not match the expected"):
        other.decode(valid_payload())
    assert DecompressSpy.requested == []  # nothing was decompressed at all
    # A frame of the expected shapes decodes, its bodies capped at their exact size.
    out = dec.decode(valid_payload())
    assert {k: v.shape for k, v in out.items()} == SHAPES
    assert DecompressSpy.requested == [16 * 12 * 20]
    limits = Limits.for_shapes(EXPECTED)
    assert (limits.max_tensors, limits.max_total_elements, limits.max_dims) == (1, 16 * 12 * 20, 4)


def valid_payload() -> bytes:
    return make_encoder("q8-zstd").encode(features(1))


@pytest.mark.redis
def test_the_ingest_rejects_bombs_from_their_header_and_its_memory_stays_flat(r, keys):
    bombs = [bomb()] * 6
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        assert s.Send(frame("cam-a", 0)).status == pb.Ack.OK  # warm: channels, decoders, threads
        with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (the ingest runs in this process)
            f.write("5")
        before, _ = rss_and_peak_kib()
        acks = list(s.Stream(iter([frame("cam-a", i + 1, payload=p) for i, p in enumerate(bombs)])))
        _, peak = rss_and_peak_kib()
        assert [a.status for a in acks] == [pb.Ack.REJECTED] * 6
        assert peak - before < 32 << 10, f"RSS peaked {(peak - before) >> 10} MiB above its level"
        assert all(a.error.startswith("INVALID_ARGUMENT") and "allowed 1 to 1" in a.error for a in acks), acks[0].error
        assert queued(r, keys, "cam-a") == [0]


TOKEN_A, TOKEN_B = "token-of-node-a", "token-of-node-b"


def bound_tokens() -> list[dict]:
    return [EdgeToken.for_secret("node-a", TOKEN_A, ["cam-a"]).model_dump(),
            EdgeToken.for_secret("node-b", TOKEN_B, ["cam-b"]).model_dump(),
            EdgeToken.for_secret("node-b-next", "rotated-token-of-b", ["cam-b"]).model_dump()]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.mark.redis
def test_a_token_sends_only_its_own_cameras_and_cannot_take_over_anothers(r, keys):
    with IngestThread(cloud_cfg(tokens=bound_tokens()), keys) as ing:
        s = stub(ing.address)
        assert s.Send(frame("cam-b", 0), metadata=bearer(TOKEN_B)).status == pb.Ack.OK
        # Node A sends cam-b's next seqs first (and its own camera in between).
        hostile = [frame("cam-b", i) for i in range(1, 6)] + [frame("cam-a", 0)]
        acks = list(s.Stream(iter(hostile), metadata=bearer(TOKEN_A)))
        assert [a.status for a in acks] == [pb.Ack.REJECTED] * 5 + [pb.Ack.OK]
        assert all(a.error.startswith("PERMISSION_DENIED") and "node-a" in a.error for a in acks[:5])
        with pytest.raises(grpc.RpcError) as ei:
            s.Send(frame("cam-b", 6), metadata=bearer(TOKEN_A))
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A's stream ended: cam-b, which it never sent, is still online.
        assert r.hget(keys.camera_state("cam-b"), "online") == b"1"
        # cam-b's real frames all get through, none taken for a duplicate; so does the rotated token.
        acks = list(s.Stream(iter([frame("cam-b", i) for i in range(1, 6)]), metadata=bearer(TOKEN_B)))
        assert [(a.status, a.error) for a in acks] == [(pb.Ack.OK, "")] * 5
        assert s.Send(frame("cam-b", 6), metadata=bearer("rotated-token-of-b")).status == pb.Ack.OK
        assert queued(r, keys, "cam-b") == [0, 1, 2, 3, 4, 5, 6]
        assert queued(r, keys, "cam-a") == [0]


@pytest.mark.unit
def test_tokens_in_the_config_are_digests_bound_to_cameras(tmp_path):
    t = EdgeToken.for_secret("n", "s3cret", ["cam-a"])
    assert t.covers("cam-a") and not t.covers("cam-b") and EdgeToken.for_secret("m", "x", ["*"]).covers("any")
    path = tmp_path / "cloud.yaml"
    path.write_text("tokens: [s3cret]\n")  # the old form: the secret itself
    with pytest.raises(ConfigError) as ei:
        load_config(path, CloudConfig)
    assert "sha256" in str(ei.value) and "s3cret" not in str(ei.value)
    for bad in ([{"name": "n", "sha256": "00", "cameras": ["*"]}],
                [{"name": "n", "sha256": "0" * 64, "cameras": []}],
                [{"name": "n", "sha256": "0" * 64, "cameras": ["cam é"]}],
                [t.model_dump(), t.model_dump()]):
        with pytest.raises(ConfigError):
            load_config(None, CloudConfig, {"tokens": bad})


async def _garbage_then_valid(cfg: CloudConfig, keys: Keys) -> tuple[Ingest, int]:
    client = aioredis.Redis.from_url(REDIS_URL)
    ingest = Ingest(cfg, client, keys)
    rejected = 0
    try:
        for i in range(300):
            payload = b"SIFC" + bytes(40) if i % 2 else bomb(1, 1 << 16)
            try:
                await ingest.handle(frame(f"junk-{i}", 0, payload=payload))
            except FrameRejected:
                rejected += 1
        assert not ingest.cams  # nothing kept in memory either
        await ingest.handle(frame("junk-7", 1))  # a camera's first valid frame creates it
        try:  # its later garbage leaves it in place
            await ingest.handle(frame("junk-7", 2, payload=b"junk"))
        except FrameRejected:
            rejected += 1
    finally:
        await client.aclose()
    return ingest, rejected


@pytest.mark.redis
def test_garbage_frames_create_no_stream_group_or_camera_entry(r, keys):
    cfg = cloud_cfg(cameras=[])  # the default: any camera id (the expected shapes configured)
    ingest, rejected = asyncio.run(_garbage_then_valid(cfg, keys))
    assert rejected == 301
    assert list(ingest.cams) == ["junk-7"]
    assert r.smembers(keys.cameras) == {b"junk-7"}
    streams = sorted(k.decode() for k in r.scan_iter(match=keys.frames_stream("*")))
    assert streams == [keys.frames_stream("junk-7")] and queued(r, keys, "junk-7") == [1]
    assert r.xinfo_groups(keys.frames_stream("junk-7"))[0]["name"] == keys.FRAMES_GROUP.encode()


@pytest.mark.redis
def test_frames_dated_in_the_future_or_not_finite_are_rejected(r, keys):
    with IngestThread(cloud_cfg(ingest={"max_clock_skew_s": 300}), keys) as ing:
        s = stub(ing.address)
        now = time.time()
        cases = [now + 3600, now + 301, float("inf"), float("nan"), now + 60, now]
        frames = []
        for i, ts in enumerate(cases):
            f = frame("cam-a", i)
            f.capture_ts = ts
            frames.append(f)
        acks = list(s.Stream(iter(frames)))
        assert [a.status for a in acks] == [pb.Ack.REJECTED] * 4 + [pb.Ack.OK] * 2, [a.error for a in acks]
        assert "ahead of the ingest's clock" in acks[0].error and "ahead" in acks[1].error
        assert all(a.error.startswith("INVALID_ARGUMENT") for a in acks[:4])
        assert queued(r, keys, "cam-a") == [4, 5]


@pytest.mark.redis
def test_unicode_camera_ids_are_rejected(r, keys):
    lookalikes = ["camé", "cam\u0661", "\uff43\uff41\uff4d", "cam-a\u200b", "ca\u2010m"]  # é, Arabic 1, fullwidth, ZWSP
    for cam in lookalikes:
        with pytest.raises(ValueError):
            CameraConfig(id=cam, url="x")
    with IngestThread(cloud_cfg(cameras=[]), keys) as ing:
        acks = list(stub(ing.address).Stream(iter([frame(cam, 0) for cam in lookalikes])))
        assert all(a.status == pb.Ack.REJECTED and a.error.startswith("INVALID_ARGUMENT") and "camera_id" in a.error
                   for a in acks), [a.error for a in acks]
    assert not r.exists(keys.cameras)
