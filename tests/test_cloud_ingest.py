"""The cloud ingest over real gRPC (loopback) into a real Redis: validation, flow control, outages."""

from __future__ import annotations

import signal
import time
import urllib.request
from itertools import pairwise

import grpc
import numpy as np
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from split_infer.apps.processes import free_port
from split_infer.codec import make_decoder, make_encoder
from split_infer.codec.basis import from_features
from split_infer.config import CameraConfig, CloudConfig, EdgeToken
from split_infer.keys import Keys
from split_infer.proto import pb, pb_grpc
from support.cloud import SHAPES, IngestThread, features, frame
from support.http import probe
from support.processes import Services
from support.redisdb import RedisServer
from support.wait import wait_for

pytestmark = pytest.mark.redis

CAMS = [CameraConfig(id="cam-a", url="x"), CameraConfig(id="cam-b", url="x")]


def cloud_cfg(**kw) -> CloudConfig:
    base = {"redis_url": "redis://127.0.0.1:6379/0", "cameras": [c.model_dump() for c in CAMS],
            "ingest": {"feature_shapes": {k: list(v[1:]) for k, v in SHAPES.items()},
                       "max_payload_bytes": 64 << 10, "credit_window": 8}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return CloudConfig.model_validate(base)


def stub(addr: str) -> pb_grpc.FeatureIngestStub:
    ch = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
    return pb_grpc.FeatureIngestStub(ch)


def queued(r, keys: Keys, cam: str) -> list[int]:
    return [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream(cam))]


def test_frames_are_validated_and_queued_self_contained(r, keys):
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        jpeg = b"\xff\xd8" + b"\x00" * 100
        frames = [frame("cam-a", i, snapshot_jpeg=jpeg if i == 0 else b"") for i in range(5)]
        frames += [frame("cam-b", i) for i in range(3)]
        acks = list(s.Stream(iter(frames)))
        assert [a.status for a in acks] == [pb.Ack.OK] * 8, [a.error for a in acks]
        assert all(a.credit == 8 for a in acks)
        assert queued(r, keys, "cam-a") == [0, 1, 2, 3, 4] and queued(r, keys, "cam-b") == [0, 1, 2]
        # The queued payload decodes on its own to what the edge encoded.
        _, fields = r.xrange(keys.frames_stream("cam-a"))[2]
        x = make_decoder().decode(fields[b"payload"])["x4"]
        ref = make_decoder().decode(frames[2].payload)["x4"]
        np.testing.assert_array_equal(x, ref)
        assert fields[b"width"] == b"640" and float(fields[b"ingest_ts"]) >= float(fields[b"capture_ts"])
        assert r.get(keys.snapshot("cam-a")) == jpeg
        # The edge stream ended: its cameras are offline, with their totals.
        state = r.hgetall(keys.camera_state("cam-a"))
        assert state[b"online"] == b"0" and int(state[b"frames"]) == 5 and int(state[b"last_seq"]) == 4
        assert s.Send(frame("cam-a", 5)).status == pb.Ack.OK
        state = r.hgetall(keys.camera_state("cam-a"))
        assert state[b"online"] == b"1" and float(state[b"fps"]) > 0 and float(state[b"bytes_per_s"]) > 0
        assert {b"cam-a", b"cam-b"} <= r.smembers(keys.cameras)
        # The consumer group exists from id 0, so workers started later see every frame.
        assert r.xinfo_groups(keys.frames_stream("cam-a"))[0]["name"] == keys.FRAMES_GROUP.encode()
        hs = health_pb2_grpc.HealthStub(grpc.insecure_channel(ing.address))
        assert hs.Check(health_pb2.HealthCheckRequest(service="splitinfer.v1.FeatureIngest")).status == \
            health_pb2.HealthCheckResponse.SERVING
    # The ingest stopped: the cameras are reported offline.
    assert r.hget(keys.camera_state("cam-a"), "online") == b"0"


def test_bad_frames_get_clear_errors_and_other_cameras_lose_nothing(r, keys):
    good = make_encoder("q8-zstd")
    valid = good.encode(features(1))
    corrupt = bytearray(valid)
    corrupt[len(corrupt) // 2] ^= 0xFF
    wrong_shape = make_encoder("q8-zstd").encode(features(2, {"x4": (1, 16, 12, 21)}))
    oversized = make_encoder("q8-zstd").encode({"x4": np.random.default_rng(0).standard_normal(
        (1, 16, 96, 80)).astype(np.float32) * 1e3})  # about 120 KB of noise > 64 KiB limit
    assert len(oversized) > 64 << 10
    bad = {
        "bad_header": frame("cam-b", 1, payload=b"NOPE" + b"\x00" * 40),
        "corrupt": frame("cam-b", 2, payload=bytes(corrupt)),
        "wrong_shape": frame("cam-b", 3, payload=wrong_shape),
        "oversized": frame("cam-b", 4, payload=oversized),
        "unknown_camera": frame("cam-zzz", 0),
        "bad_camera_id": frame("cam a/../b", 0),
        "bad_session": frame("cam-b", 6, session="x" * 65),
        "no_size": pb.FeatureFrame(camera_id="cam-b", seq=5, session="s1", capture_ts=time.time(), payload=valid),
    }
    expect = {"bad_header": ("INVALID_ARGUMENT", "bad magic"), "corrupt": ("INVALID_ARGUMENT", "checksum"),
              "wrong_shape": ("INVALID_ARGUMENT", "do not match the expected"),
              "oversized": ("INVALID_ARGUMENT", "exceeds max_payload_bytes"),
              "unknown_camera": ("NOT_FOUND", "unknown camera"), "bad_camera_id": ("INVALID_ARGUMENT", "camera_id"),
              "bad_session": ("INVALID_ARGUMENT", "session"), "no_size": ("INVALID_ARGUMENT", "frame size")}
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        stream = []
        for i, f in enumerate(bad.values()):  # interleave: a good cam-a frame before each bad one
            stream += [frame("cam-a", i), f]
        stream.append(frame("cam-a", len(bad)))
        acks = list(s.Stream(iter(stream)))
        assert len(acks) == len(stream)
        for name, ack in zip(bad, acks[1::2], strict=True):
            code, text = expect[name]
            assert ack.status == pb.Ack.REJECTED, name
            assert ack.error.startswith(code) and text in ack.error, (name, ack.error)
        assert all(a.status == pb.Ack.OK for a in acks[0::2])
        assert queued(r, keys, "cam-a") == list(range(len(bad) + 1))  # nothing of the good camera lost
        assert queued(r, keys, "cam-b") == []
        assert r.hget(keys.camera_state("cam-a"), "rejected") in (b"0", None)

        # The unary call answers with the matching gRPC status.
        for name, code in [("bad_header", grpc.StatusCode.INVALID_ARGUMENT),
                           ("unknown_camera", grpc.StatusCode.NOT_FOUND),
                           ("oversized", grpc.StatusCode.INVALID_ARGUMENT)]:
            with pytest.raises(grpc.RpcError) as ei:
                s.Send(bad[name])
            assert ei.value.code() == code, name
        # Beyond gRPC's own message limit: RESOURCE_EXHAUSTED, and the ingest stays up.
        huge = frame("cam-b", 9, payload=b"\x00" * (2 * (64 << 10) + (512 << 10) + (2 << 20)))
        with pytest.raises(grpc.RpcError) as ei:
            s.Send(huge)
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert s.Send(frame("cam-b", 10)).status == pb.Ack.OK
        assert queued(r, keys, "cam-b") == [10]


def test_token_is_required_when_configured(r, keys):
    token = EdgeToken.for_secret("edge-0", "s3cret", ["*"]).model_dump()
    with IngestThread(cloud_cfg(tokens=[token]), keys) as ing:
        s = stub(ing.address)
        for md in [None, [("authorization", "Bearer wrong")], [("authorization", "s3cret")]]:
            with pytest.raises(grpc.RpcError) as ei:
                s.Send(frame("cam-a", 0), metadata=md)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                list(s.Stream(iter([frame("cam-a", 0)]), metadata=md))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert queued(r, keys, "cam-a") == []
        ok = [("authorization", "Bearer s3cret")]
        assert s.Send(frame("cam-a", 0), metadata=ok).status == pb.Ack.OK
        assert [a.status for a in s.Stream(iter([frame("cam-a", 1)]), metadata=ok)] == [pb.Ack.OK]
        assert queued(r, keys, "cam-a") == [0, 1]


def test_resent_frames_are_not_queued_twice_and_a_new_session_starts_over(r, keys):
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        acks = list(s.Stream(iter([frame("cam-a", i) for i in (0, 1, 2, 1, 2, 3)])))
        assert all(a.status == pb.Ack.OK for a in acks)
        assert "duplicate" in acks[3].error and "duplicate" in acks[4].error
        assert queued(r, keys, "cam-a") == [0, 1, 2, 3]
        # The edge restarted: a new session may start from seq 0 again.
        assert s.Send(frame("cam-a", 0, session="s2")).status == pb.Ack.OK
        sessions = [f[b"session"] for _, f in r.xrange(keys.frames_stream("cam-a"))]
        assert sessions == [b"s1"] * 4 + [b"s2"]


def test_temporal_frames_are_queued_self_contained_and_a_gap_asks_for_a_key_frame(r, keys):
    enc = make_encoder("temporal")
    feats = [features(0)]
    for i in range(1, 4):  # slowly changing features, like video
        feats.append({"x4": feats[-1]["x4"] + 0.05 * features(100 + i)["x4"]})
    payloads = [enc.encode(f) for f in feats]
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        acks = list(s.Stream(iter([frame("cam-a", i, payload=p) for i, p in enumerate(payloads[:3])])))
        assert all(a.status == pb.Ack.OK for a in acks), [a.error for a in acks]
        edge_dec = make_decoder()
        for i, (_, fields) in enumerate(r.xrange(keys.frames_stream("cam-a"))):
            want = edge_dec.decode(payloads[i])["x4"]  # what the stateful decoder reconstructs
            got = make_decoder().decode(fields[b"payload"])["x4"]  # a stateless worker decoder
            step = (want.max() - want.min()) / 255
            assert np.abs(got - want).max() <= step + 1e-5  # at most one q8 re-quantisation step
        # Frame 3 is lost on the way: frame 4 (a delta) cannot be decoded and asks for a key frame.
        lost = enc.encode({"x4": feats[3]["x4"] * 1.01})
        acks = list(s.Stream(iter([frame("cam-a", 4, payload=lost)])))
        assert acks[0].status == pb.Ack.REJECTED and acks[0].key_frame_needed, acks[0]
        assert "lost frame" in acks[0].error
        enc.request_key_frame()
        acks = list(s.Stream(iter([frame("cam-a", 5, payload=enc.encode(feats[3]))])))
        assert acks[0].status == pb.Ack.OK
        assert queued(r, keys, "cam-a") == [0, 1, 2, 5]


def test_credit_shrinks_as_the_queue_fills_and_the_queue_never_exceeds_max(r, keys):
    with IngestThread(cloud_cfg(max_queue=12, ingest={"credit_window": 8}), keys) as ing:
        s = stub(ing.address)
        acks = list(s.Stream(iter([frame("cam-a", i) for i in range(16)])))
        credits = [a.credit for a in acks]
        assert [a.status for a in acks[:12]] == [pb.Ack.OK] * 12
        assert credits[:3] == [8, 8, 8] and credits[11] == 0  # the 12th fills the queue
        assert all(b <= a for a, b in pairwise(credits[:12]))  # never grows while filling
        assert credits[10] < 8
        assert all(a.status == pb.Ack.RETRY and a.credit == 0 and "RESOURCE_EXHAUSTED" in a.error
                   for a in acks[12:])
        assert r.xlen(keys.frames_stream("cam-a")) == 12
        with pytest.raises(grpc.RpcError) as ei:
            s.Send(frame("cam-a", 12))
        assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A worker consumes half: the resend of frame 12 is accepted, with credit again.
        ids = [i for i, _ in r.xrange(keys.frames_stream("cam-a"))][:6]
        r.xdel(keys.frames_stream("cam-a"), *ids)
        ack = s.Send(frame("cam-a", 12))
        assert ack.status == pb.Ack.OK and 0 < ack.credit < 8  # 7 queued of 12: some credit
        assert queued(r, keys, "cam-a") == list(range(6, 13))


@pytest.mark.e2e
def test_redis_restart_answers_retry_meanwhile_and_resumes(keys, tmp_path):
    srv = RedisServer(tmp_path)
    srv.start()
    try:
        with IngestThread(cloud_cfg(redis_url=srv.url), keys) as ing:
            s = stub(ing.address)
            hs = health_pb2_grpc.HealthStub(grpc.insecure_channel(ing.address))
            assert all(a.status == pb.Ack.OK for a in s.Stream(iter([frame("cam-a", i) for i in range(3)])))
            srv.stop()
            acks = list(s.Stream(iter([frame("cam-a", 3), frame("cam-b", 0)])))
            assert all(a.status == pb.Ack.RETRY and "UNAVAILABLE" in a.error and "queue store" in a.error
                       for a in acks), [a.error for a in acks]
            with pytest.raises(grpc.RpcError) as ei:
                s.Send(frame("cam-a", 3))
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            wait_for(lambda: hs.Check(health_pb2.HealthCheckRequest()).status
                     == health_pb2.HealthCheckResponse.NOT_SERVING, 10, "health to report NOT_SERVING")
            srv.start()
            deadline = time.time() + 15
            while True:  # the edge resends with backoff until accepted
                acks = list(s.Stream(iter([frame("cam-a", 3), frame("cam-b", 0)])))
                if all(a.status == pb.Ack.OK for a in acks):
                    break
                assert time.time() < deadline, [a.error for a in acks]
                time.sleep(0.3)  # deliberate: the edge's resend backoff
            rr = redis.Redis.from_url(srv.url)
            assert [int(f[b"seq"]) for _, f in rr.xrange(keys.frames_stream("cam-a"))] == [0, 1, 2, 3]
            assert [int(f[b"seq"]) for _, f in rr.xrange(keys.frames_stream("cam-b"))] == [0]
            assert rr.xinfo_groups(keys.frames_stream("cam-b"))  # group recreated
            wait_for(lambda: hs.Check(health_pb2.HealthCheckRequest()).status
                     == health_pb2.HealthCheckResponse.SERVING, 15, "health to report SERVING again")
    finally:
        srv.stop()


def test_an_older_frame_that_was_never_queued_is_queued_not_mistaken_for_a_resend(r, keys):
    with IngestThread(cloud_cfg(), keys) as ing:
        s = stub(ing.address)
        # Frame 1 was answered RETRY (e.g. queue full) and resent after frame 2 got through.
        acks = list(s.Stream(iter([frame("cam-a", 0), frame("cam-a", 2), frame("cam-a", 1), frame("cam-a", 2)])))
        assert [a.status for a in acks] == [pb.Ack.OK] * 4
        assert acks[2].error == "" and "duplicate" in acks[3].error
        assert sorted(queued(r, keys, "cam-a")) == [0, 1, 2]


@pytest.mark.e2e
def test_the_ingest_command_serves_metrics_and_stops_cleanly(r, keys, prefix, tmp_path):
    port, mport = free_port(), free_port()
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(cloud_cfg(tls={"insecure": True}).model_dump(mode="json")))  # plaintext probe
    services = Services(tmp_path)
    services.start("ingest", "cloud", "ingest", "--config", str(path), "--listen", f"127.0.0.1:{port}",
                   "--metrics-port", str(mport), env={"SPLIT_INFER_PREFIX": prefix})
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(ch).result(timeout=30)
        s = pb_grpc.FeatureIngestStub(ch)
        assert s.Send(frame("cam-a", 0)).status == pb.Ack.OK
        with pytest.raises(grpc.RpcError):
            s.Send(frame("cam-nope", 0))
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert 'splitinfer_frames_total{outcome="ok",stage="ingest"} 1.0' in text
        assert 'splitinfer_frames_total{outcome="rejected_unknown_camera",stage="ingest"} 1.0' in text
        assert 'splitinfer_camera_up{camera="cam-a"} 1.0' in text
        assert 'splitinfer_ingest_received_bytes_total{camera="cam-a"}' in text
        assert "splitinfer_queue_depth_frames{" not in text  # the worker's series (one owner)
        for endpoint in ("healthz", "readyz"):  # Redis reachable and the gRPC server up: both 200
            wait_for(lambda e=endpoint: probe(f"http://127.0.0.1:{mport}/{e}") == (200, {"status": "ok"}), 10,
                     f"the ingest's /{endpoint}")
        services.signal("ingest", signal.SIGTERM)
        assert services.wait_exit("ingest", 15) == 0
    finally:
        services.kill_all()
    err = services.log("ingest")
    assert "ingest listening" in err and "ingest stopped" in err
    assert r.hget(keys.camera_state("cam-a"), "online") == b"0"


def test_learned_codec_frames_are_reconstructed_at_the_ingest_and_queued_for_any_worker(r, keys, tmp_path):
    import torch  # optional heavy dependency, as is codec.train (torch) below

    from split_infer.codec import bottleneck
    from split_infer.codec.train import TorchBottleneck, save

    torch.manual_seed(0)
    arch = bottleneck.layout(res_blocks=1)  # a small learned bottleneck for x4 (16 ch)
    net = TorchBottleneck(arch, bottleneck.init_shapes(16, 6, 16, 24, res_blocks=1), channels=6)
    models = tmp_path / "codec-models"
    models.mkdir()
    save(net.arrays(), str(models / "m.npz"), {"cut": 4, "tensor": "x4", "architecture": arch,
                                               "trained_on": {"video": "synthetic", "frames": [0, 0]}})
    enc = make_encoder(f"learned:{models / 'm.npz'}")
    payloads = [enc.encode(features(i)) for i in range(3)]
    # Without the models the ingest cannot decode learned frames: a clear rejection, nothing queued.
    with IngestThread(cloud_cfg(), keys) as ing:
        with pytest.raises(grpc.RpcError) as err:
            stub(ing.address).Send(frame("cam-a", 0, payload=payloads[0]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no learned_dir" in err.value.details()
        assert queued(r, keys, "cam-a") == []
    with IngestThread(cloud_cfg(ingest={"codec_models": str(models)}), keys) as ing:
        s = stub(ing.address)
        acks = [s.Send(frame("cam-b", i, payload=p)) for i, p in enumerate(payloads)]
        assert all(a.status == pb.Ack.OK for a in acks), [a.error for a in acks]
    edge_view = make_decoder(learned_dir=str(models))
    for i, (_, fields) in enumerate(r.xrange(keys.frames_stream("cam-b"))):
        want = edge_view.decode(payloads[i])["x4"]
        got = make_decoder().decode(fields[b"payload"])["x4"]  # a worker without the models
        assert got.shape == want.shape == SHAPES["x4"]
        assert np.abs(got - want).max() <= (want.max() - want.min()) / 255 + 1e-5


def test_video_codec_frames_are_decoded_at_the_ingest_and_queued_self_contained(r, keys, tmp_path):
    # a reduction of the 16 test channels to 6, in the ingest's model folder (not shipped)
    rng = np.random.default_rng(4)
    calib = np.concatenate([features(100 + i)["x4"] for i in range(4)])
    models = tmp_path / "codec-models"
    basis = from_features(calib, np.eye(calib.shape[1]), 6, {"tensor": "x4"})
    basis.save(models / "cam.basis.npz")
    enc = make_encoder("video", reduction=str(models / "cam.basis.npz"), key_interval=3, crf=0)
    base = features(0)["x4"]
    clip = [{"x4": base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)} for _ in range(5)]
    payloads = [enc.encode_frame(f) for f in clip]
    assert [p.key for p in payloads] == [True, False, False, True, False]
    with IngestThread(cloud_cfg(), keys) as ing:  # without the folder the basis is unknown: refused, nothing queued
        with pytest.raises(grpc.RpcError) as err:
            stub(ing.address).Send(frame("cam-a", 0, payload=payloads[0].payload))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "channel reduction" in err.value.details()
        assert queued(r, keys, "cam-a") == []
    with IngestThread(cloud_cfg(ingest={"codec_models": str(models)}), keys) as ing:
        s = stub(ing.address)
        acks = [s.Send(frame("cam-b", i, payload=p.payload)) for i, p in enumerate(payloads)]
        assert all(a.status == pb.Ack.OK for a in acks), [a.error for a in acks]
    edge_view = make_decoder(learned_dir=str(models))
    entries = r.xrange(keys.frames_stream("cam-b"))
    assert len(entries) == len(payloads)
    for p, (_, fields) in zip(payloads, entries, strict=True):
        want = edge_view.decode(p.payload)["x4"]
        got = make_decoder().decode(fields[b"payload"])["x4"]  # a worker: no basis, no PyAV state
        assert got.shape == want.shape == SHAPES["x4"]
        assert np.abs(got - want).max() <= (want.max() - want.min()) / 255 + 1e-5
