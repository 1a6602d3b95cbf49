"""Limits against abuse (issue 11): concurrent streams per peer and per token, first-frame and idle
timeouts on the ingest; 500 bogus gRPC streams and 100 raw connections against an ingest process
while a real edge-like client keeps sending (its memory measured); 200 SSE connections against the
API, which keeps answering."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import grpc
import httpx
import pytest
import yaml

from split_infer.apps.processes import free_port
from split_infer.config import CloudConfig, EdgeToken
from split_infer.keys import PREFIX_ENV, Keys
from split_infer.proto import pb, pb_grpc
from support.api import api_server
from support.cloud import SHAPES, IngestThread, frame
from support.feeder import Feeder
from support.processes import Services
from support.redisdb import REDIS_URL
from support.wait import wait_for

EXPECTED = {k: list(v[1:]) for k, v in SHAPES.items()}
REAL, EVIL = "token-of-the-real-edge", "stolen-token-of-another-node"
ABUSE_LIMITS = {"max_streams_per_peer": 8, "max_streams_per_token": 4, "first_frame_timeout_s": 1.5,
                "idle_timeout_s": 2.5}


def settings(**ingest) -> dict:
    return {"redis_url": REDIS_URL, "tls": {"insecure": True},
            "tokens": [EdgeToken.for_secret("real", REAL, ["cam-real"]).model_dump(),
                       EdgeToken.for_secret("evil", EVIL, ["cam-evil"]).model_dump()],
            "ingest": {"feature_shapes": EXPECTED, "max_payload_bytes": 64 << 10, **ABUSE_LIMITS, **ingest}}


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def queued(r, keys: Keys, cam: str) -> list[int]:
    return [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream(cam))]


async def silent_stream(stub: pb_grpc.FeatureIngestStub, token: str,
                        frames: tuple[pb.FeatureFrame, ...] = ()) -> tuple[grpc.StatusCode, float]:
    """Open a stream, send `frames` (maybe none), then nothing; how it ended and after how long."""
    t0 = time.monotonic()
    call = stub.Stream(metadata=bearer(token))
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for f in frames:
            await call.write(f)
    try:
        code = await asyncio.wait_for(call.code(), 30)
    except asyncio.TimeoutError:
        call.cancel()
        return grpc.StatusCode.UNKNOWN, time.monotonic() - t0  # never ended: fails the test
    return code, time.monotonic() - t0


@pytest.mark.redis
@pytest.mark.e2e  # starts real servers or a torch child: out of make test-fast
def test_streams_are_bounded_per_peer_and_per_token_and_silent_ones_are_closed(r, keys):
    """Regression: any number of streams could be held open, sending nothing, for ever."""
    cfg = CloudConfig.model_validate(settings(max_streams_per_peer=6))

    async def scenario(addr: str) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.FeatureIngestStub(ch)
            real = stub.Stream(metadata=bearer(REAL))
            await real.write(frame("cam-real", 0))
            assert (await real.read()).status == pb.Ack.OK
            # 4 streams of the evil token are admitted, the 5th and later refused at once.
            evil = [asyncio.create_task(silent_stream(stub, EVIL)) for _ in range(7)]
            done = [await t for t in evil]
            refused = [d for c, d in done if c == grpc.StatusCode.RESOURCE_EXHAUSTED]
            timed_out = [d for c, d in done if c == grpc.StatusCode.DEADLINE_EXCEEDED]
            assert len(refused) == 3 and len(timed_out) == 4, done
            assert max(refused) < 1.0 and all(1.4 < d < 4.0 for d in timed_out), done
            # The peer bound (6, the real stream included): 5 more admitted from this host, then refused.
            held = [(stub.Stream(metadata=bearer(token)), frame(cam, 100 + i))
                    for i, (token, cam) in enumerate([(REAL, "cam-real")] * 3 + [(EVIL, "cam-evil")] * 3)]
            codes = []
            for call, f in held:
                try:
                    await call.write(f)
                    codes.append((await call.read()).status)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    codes.append(await call.code())
            assert codes.count(pb.Ack.OK) == 5 and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 1, codes
            # The real stream keeps sending and is served throughout; idle, it would be closed.
            for seq in range(1, 4):
                await real.write(frame("cam-real", seq))
                assert (await real.read()).status == pb.Ack.OK
            t0 = time.monotonic()
            code = await asyncio.wait_for(real.code(), 10)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED and 2.0 < time.monotonic() - t0 < 5.0
            assert "no frame within 2.5 s" in await real.details()
            for call, _ in held:
                call.cancel()

    with IngestThread(cfg, keys) as ing:
        asyncio.run(scenario(ing.address))
    real, evil = queued(r, keys, "cam-real"), queued(r, keys, "cam-evil")
    assert real[0] == 0 and real[-3:] == [1, 2, 3] and len(real) + len(evil) == 4 + 5, (real, evil)


def rss_kib(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


async def flood(addr: str, n_streams: int, n_raw: int) -> dict:
    """n_streams bogus gRPC streams (no token, a wrong token, a stolen token sending nothing,
    garbage, or made-up cameras; 10 per connection) and n_raw raw TCP connections (silent, or
    garbage bytes); each one's fate."""
    host, port = addr.rsplit(":", 1)
    channels = [grpc.aio.insecure_channel(addr) for _ in range(n_streams // 10)]
    garbage = pb.FeatureFrame(camera_id="cam-evil", seq=1, session="x", payload=b"\x00garbage" * 50,
                              width=1, height=1, capture_ts=time.time())
    made_up = tuple(frame(f"cam-{i}", i) for i in range(3))
    kinds = [("none", ""), ("wrong", "not-a-token"), ("silent", EVIL), ("garbage", EVIL), ("made-up", EVIL)]
    tasks = []
    for i in range(n_streams):
        name, token = kinds[i % len(kinds)]
        stub = pb_grpc.FeatureIngestStub(channels[i % len(channels)])
        sends = (garbage,) * 3 if name == "garbage" else made_up if name == "made-up" else ()
        tasks.append(silent_stream(stub, token, sends))

    async def raw(i: int) -> bool:
        reader, writer = await asyncio.open_connection(host, int(port))
        if i % 2:
            writer.write(os.urandom(4096))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        try:
            while await asyncio.wait_for(reader.read(65536), 30):
                pass  # the server may answer with a GOAWAY before it closes
        except ConnectionError:
            pass
        writer.close()
        return True

    results = await asyncio.gather(*tasks, *(raw(i) for i in range(n_raw)))
    for ch in channels:
        await ch.close()
    codes: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    for i, (code, _) in enumerate(results[:n_streams]):
        codes[code.name] = codes.get(code.name, 0) + 1
        kind = f"{kinds[i % len(kinds)][0]}:{code.name}"
        by_kind[kind] = by_kind.get(kind, 0) + 1
    return {"codes": codes, "by_kind": by_kind, "slowest_s": max(d for _, d in results[:n_streams]),
            "raw_closed": sum(results[n_streams:])}


@pytest.mark.redis
@pytest.mark.e2e
def test_500_bogus_streams_do_not_stop_a_real_edge_and_memory_stays_bounded(r, keys, prefix, tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump(settings(max_streams_per_peer=8)))
    addr = f"127.0.0.1:{free_port()}"
    services = Services(tmp_path)
    proc = services.start("ingest", "cloud", "ingest", "--config", str(config), "--listen", addr,
                          "--no-shape-check-from-model", env={PREFIX_ENV: prefix})
    try:
        channel = grpc.insecure_channel(addr)
        wait_for(lambda: _ready(channel, services), 30, "the ingest to serve")

        async def attack() -> tuple[dict, list[int], dict, dict]:
            async with grpc.aio.insecure_channel(addr) as ch:
                real = pb_grpc.FeatureIngestStub(ch).Stream(metadata=bearer(REAL))
                statuses: list[int] = []

                async def edge(n: int, pause: float) -> None:
                    for seq in range(len(statuses), len(statuses) + n):
                        await real.write(frame("cam-real", seq))
                        statuses.append((await real.read()).status)
                        await asyncio.sleep(pause)

                await edge(20, 0.02)  # warm: the real camera's stream, group and decoder exist
                before = rss_kib(proc.pid)
                Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # reset VmHWM to VmRSS
                sender = asyncio.create_task(edge(10**6, 0.05))
                fates = await flood(addr, 500, 100)
                sent_during = len(statuses)
                await asyncio.sleep(0.5)
                sender.cancel()
                after = rss_kib(proc.pid)
                await real.done_writing()
                return fates, statuses, before, {**after, "sent_during_attack": sent_during}

        fates, statuses, before, after = asyncio.run(attack())
    finally:
        services.stop_all()
    print(f"\nbogus streams: {fates}; ingest RSS before {before['VmRSS'] / 1024:.0f} MiB, peak during the attack "
          f"{after['VmHWM'] / 1024:.0f} MiB, after {after['VmRSS'] / 1024:.0f} MiB; "
          f"real frames acked: {len(statuses)}")
    codes = fates["codes"]
    # No bogus stream is served: refused at once (no or a wrong token; beyond the bounds), closed by
    # the first-frame or idle timeout, or ended by the transport when the server refused it while
    # the client was still writing (INTERNAL/UNAVAILABLE on the client); UNKNOWN: still open after
    # 30 s on the client's side (a few, on a loaded 2-core machine; the server's log shows none held).
    assert sum(codes.values()) == 500 and "OK" not in codes, fates
    # How many end by the ingest's own answer rather than by the transport depends on the machine's
    # load (a busy CI machine turned ~150 refusals into UNAVAILABLE): require each limit to act.
    refused = {"UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL", "UNKNOWN"}
    assert set(codes) <= refused, fates
    assert codes.get("UNAUTHENTICATED", 0) >= 50 and codes.get("RESOURCE_EXHAUSTED", 0) >= 50, fates
    assert codes.get("UNKNOWN", 0) <= 25, fates  # a few on a loaded machine; none held by the server
    assert fates["raw_closed"] == 100
    assert after["sent_during_attack"] > 40 and set(statuses) == {pb.Ack.OK}, statuses
    assert queued(r, keys, "cam-real") == list(range(len(statuses)))
    assert after["VmHWM"] - before["VmRSS"] < 64 * 1024, (before, after)  # KiB: under 64 MiB more


def _ready(channel: grpc.Channel, services: Services) -> bool:
    assert not services.exited("ingest"), services.log("ingest")
    try:
        grpc.channel_ready_future(channel).result(timeout=1)
        return True
    except grpc.FutureTimeoutError:
        return False


@pytest.mark.redis
@pytest.mark.e2e
def test_200_sse_connections_leave_the_api_answering(r, keys, prefix, tmp_path):
    Feeder(r, keys, n_cameras=2, dead=()).step()
    opened = 200
    with api_server(prefix, workdir=tmp_path) as base, \
            httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=30),
                         limits=httpx.Limits(max_connections=opened + 10)) as api, contextlib.ExitStack() as streams:
        codes = [streams.enter_context(api.stream("GET", "/api/live")).status_code for _ in range(opened)]
        assert codes.count(200) == 50 and codes.count(503) == opened - 50, codes  # max_live's default
        for _ in range(5):
            assert api.get("/readyz").json()["redis"] == "ok"
            cams = api.get("/api/cameras")
            assert cams.status_code == 200 and len(cams.json()) >= 2
