"""Property-based fuzzing of the real gRPC ingest (issue 11): hostile `FeatureFrame`s interleaved
with a real camera's frames. The server must stay up, answer every message with a well-formed
Ack, and queue every valid frame exactly once."""

from __future__ import annotations

import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from split_infer.codec import make_encoder
from split_infer.config import CloudConfig
from split_infer.proto import pb, pb_grpc
from support.cloud import SHAPES, IngestThread, features, frame
from support.redisdb import REDIS_URL

pytestmark = [pytest.mark.redis, pytest.mark.e2e]  # ~5 s of hypothesis: out of make test-fast

EXPECTED = {k: list(v[1:]) for k, v in SHAPES.items()}
MAX_PAYLOAD = 16 << 10
EXAMPLES = 300
VALID = make_encoder("q8-zstd").encode(features(1))  # a payload the ingest accepts


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """Valid wire bytes, truncated, extended or with bytes overwritten (lying lengths and fields)."""
    cut = st.integers(0, len(data) - 1).map(lambda n: data[:n])
    grown = st.binary(min_size=1, max_size=64).map(lambda b: data + b)
    flips = st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8)
    flipped = flips.map(lambda fs: bytes(_flip(bytearray(data), fs)))
    return st.one_of(cut, grown, flipped)


def _flip(buf: bytearray, flips: list[tuple[int, int]]) -> bytearray:
    for i, v in flips:
        buf[i] = v
    return buf


PAYLOADS = st.one_of(
    st.binary(max_size=512),
    mutated(VALID),
    st.just(b"\0" * (MAX_PAYLOAD + 1)),  # past the size limit
    st.just(VALID[:28] + b"\xff" * 64),  # a real header followed by nonsense
)
CAMERAS = st.one_of(st.sampled_from(["cam-a", "cam-b", "", "cam-a\x00", "caméra", "x" * 300, "../cam-a"]),
                    st.text(max_size=40))
HOSTILE = st.builds(
    pb.FeatureFrame,
    camera_id=CAMERAS,
    seq=st.integers(0, 2**64 - 1),
    session=st.text(max_size=80),
    capture_ts=st.floats(allow_nan=True, allow_infinity=True),
    sent_ts=st.floats(allow_nan=True, allow_infinity=True),
    payload=PAYLOADS,
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
    snapshot_jpeg=st.one_of(st.just(b""), st.binary(max_size=256), st.just(b"\xff\xd8" + b"<html>" * 8)),
    timings_ms=st.dictionaries(st.text(max_size=12), st.floats(allow_nan=True, allow_infinity=True), max_size=4),
    dropped_before=st.integers(0, 2**64 - 1),
)


def test_hostile_frames_never_cost_a_valid_frame(r, keys):
    cfg = CloudConfig.model_validate({
        "redis_url": REDIS_URL, "cameras": [{"id": "cam-a", "url": "x"}, {"id": "cam-b", "url": "x"}],
        "max_queue": 100_000, "ingest": {"feature_shapes": EXPECTED, "max_payload_bytes": MAX_PAYLOAD}})
    real_seqs: list[int] = []
    statuses = {pb.Ack.OK: 0, pb.Ack.REJECTED: 0, pb.Ack.RETRY: 0}
    with IngestThread(cfg, keys) as ing:
        stub = pb_grpc.FeatureIngestStub(grpc.insecure_channel(ing.address))

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(hostile=st.lists(HOSTILE, min_size=1, max_size=8), at=st.integers(0, 8))
        def one_stream(hostile: list[pb.FeatureFrame], at: int) -> None:
            seq = len(real_seqs)
            real = frame("cam-a", seq, payload=VALID)
            msgs = hostile[:at] + [real] + hostile[at:]
            acks = list(stub.Stream(iter(msgs), timeout=30))
            assert len(acks) == len(msgs), "every message gets exactly one Ack"
            for a in acks:
                assert a.status in statuses and (a.status == pb.Ack.OK or a.error), a
                statuses[a.status] += 1
            mine = acks[min(at, len(hostile))]
            assert mine.camera_id == "cam-a" and mine.seq == seq and mine.status == pb.Ack.OK, mine
            real_seqs.append(seq)

        started = time.monotonic()
        one_stream()
        elapsed = time.monotonic() - started
    queued = [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream("cam-a"))]
    assert sorted(queued) == real_seqs, "each valid frame queued exactly once, none lost"
    print(f"fuzz: {len(real_seqs)} streams, {sum(statuses.values())} messages "
          f"({statuses[pb.Ack.OK]} OK, {statuses[pb.Ack.REJECTED]} REJECTED, {statuses[pb.Ack.RETRY]} RETRY) "
          f"in {elapsed:.1f} s")
