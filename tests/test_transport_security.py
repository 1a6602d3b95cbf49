"""Transport security: gRPC over (mutual) TLS between the edge and the ingest, `split-infer certs
dev`, secrets from the environment or files (never argv), and Redis with ACL users and TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from split_infer.apps.processes import free_port
from split_infer.certs import make_dev_certs
from split_infer.config import CameraConfig, CloudConfig, ConfigError, EdgeConfig, load_config
from split_infer.edge.ledger import Ledger
from split_infer.edge.outbox import Outbox
from split_infer.edge.transport import IngestLink
from split_infer.keys import Keys
from split_infer.proto import pb, pb_grpc
from split_infer.tls import explain, secure_or_insecure_channel, server_credentials
from support.cloud import SHAPES, IngestThread, frame
from support.data import ROOT
from support.processes import Services, require_binary
from support.tls import EDGE, cloud_tls, dev_certs, edge_tls
from support.wait import wait_for

SHAPE_CFG = {"feature_shapes": {k: list(v[1:]) for k, v in SHAPES.items()}}


def cloud(tls: dict, redis_url: str = "redis://127.0.0.1:6379/0", **kw) -> CloudConfig:
    return CloudConfig.model_validate({"redis_url": redis_url, "cameras": [{"id": "cam-a", "url": "x"}],
                                       "ingest": SHAPE_CFG, "tls": tls, **kw})


async def _exchange(address: str, tls: dict, frames: list[pb.FeatureFrame]) -> list[pb.Ack]:
    cfg = EdgeConfig.model_validate({"tls": tls})
    channel = secure_or_insecure_channel(address, cfg.tls, [])
    try:
        return [a async for a in pb_grpc.FeatureIngestStub(channel).Stream(iter(frames), timeout=10)]
    finally:
        await channel.close()


def exchange(address: str, tls: dict, frames: list[pb.FeatureFrame]) -> list[pb.Ack]:
    """Frames sent over one stream as the edge's channel does (split_infer/tls.py), their Acks."""
    return asyncio.run(_exchange(address, tls, frames))


# -- split-infer certs dev ---------------------------------------------------------------------------


@pytest.mark.unit
def test_certs_dev_makes_a_chain_that_verifies_with_private_keys_0600(tmp_path):
    out = subprocess.run([sys.executable, "-m", "split_infer", "certs", "dev", "--out", str(tmp_path / "c"),
                          "--edge", "edge-0", "--edge", "edge-1", "--host", "ingest"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    d = tmp_path / "c"
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "ingest"} <= set(sans.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for edge in ("edge-0", "edge-1"):
        client = x509.load_pem_x509_certificate((d / f"client-{edge}.pem").read_bytes())
        client.verify_directly_issued_by(ca)
        assert client.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == edge
        eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        assert client.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=300)
    for key in d.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert len(list(d.glob("*.key"))) == 4  # the CA, the server, two edges
    # A later run adds an edge under the same CA.
    again = make_dev_certs(d, ["edge-2"])
    x509.load_pem_x509_certificate(again.client_cert("edge-2").read_bytes()).verify_directly_issued_by(ca)


# -- gRPC over TLS -----------------------------------------------------------------------------------


@pytest.mark.redis
def test_tls_round_trip_with_client_certificates_acks_and_queues(r, keys):
    certs = dev_certs()
    with IngestThread(cloud(cloud_tls(certs)), keys) as ing:
        acks = exchange(ing.address, edge_tls(certs), [frame("cam-a", i) for i in range(3)])
    assert [(a.seq, a.status) for a in acks] == [(i, pb.Ack.OK) for i in range(3)], acks
    assert [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream("cam-a"))] == [0, 1, 2]


@pytest.mark.redis
def test_mutual_tls_rejects_an_edge_without_a_client_certificate_or_with_a_foreign_one(r, keys, tmp_path):
    certs, foreign = dev_certs(), make_dev_certs(tmp_path / "foreign", [EDGE])
    with IngestThread(cloud(cloud_tls(certs)), keys) as ing:
        for tls in (edge_tls(certs, node=None),  # verifies the server, presents nothing
                    {"ca": str(certs.ca), "cert": str(foreign.client_cert(EDGE)),
                     "key": str(foreign.client_key(EDGE))}):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                exchange(ing.address, tls, [frame("cam-a", 0)])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "client certificate" in (explain(err.value.details()) or ""), err.value.details()
    assert r.xlen(keys.frames_stream("cam-a")) == 0


@pytest.mark.redis
def test_an_edge_with_the_wrong_ca_gets_a_clear_error(keys, tmp_path):
    certs, other = dev_certs(), make_dev_certs(tmp_path / "other", [EDGE])
    with IngestThread(cloud(cloud_tls(certs, mutual=False)), keys) as ing:
        cfg = EdgeConfig.model_validate({"cloud": ing.address, "tls": {"ca": str(other.ca)}})
        link = IngestLink(cfg, Outbox(8, 4), Ledger(["cam-a"], "s1", None, lambda _: None), lambda _: None,
                          lambda: True, connect_timeout_s=1.0)
        opened = asyncio.run(link._session())
    assert not opened
    assert link.last_error and "TLS with ingest" in link.last_error and "tls.ca" in link.last_error, link.last_error
    assert "CERTIFICATE_VERIFY_FAILED" in link.last_error


@pytest.mark.redis
def test_plaintext_needs_an_explicit_insecure_on_both_sides(r, keys):
    with pytest.raises(ConfigError, match="tls.cert and tls.key.*insecure: true"):
        server_credentials(CloudConfig().tls)  # what the ingest's serve() checks before it listens
    # IngestThread turns a config without a certificate into `insecure: true` itself; spell it out here.
    with IngestThread(cloud({"insecure": True}), keys) as ing:
        assert exchange(ing.address, {"insecure": True}, [frame("cam-a", 0)])[0].status == pb.Ack.OK
        with pytest.raises(grpc.aio.AioRpcError):  # a TLS edge does not talk to a plaintext ingest
            exchange(ing.address, edge_tls(dev_certs()), [frame("cam-a", 1)])
    certs = dev_certs()
    with IngestThread(cloud(cloud_tls(certs)), keys) as ing:
        with pytest.raises(grpc.aio.AioRpcError):  # nor a plaintext edge to a TLS ingest
            exchange(ing.address, {"insecure": True}, [frame("cam-a", 2)])
    assert [int(f[b"seq"]) for _, f in r.xrange(keys.frames_stream("cam-a"))] == [0]


@pytest.mark.unit
def test_the_ingest_refuses_to_start_without_tls_set_up(tmp_path):
    out = subprocess.run([sys.executable, "-m", "split_infer", "cloud", "ingest", "--no-shape-check-from-model",
                          "--listen", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "TLS by default" in out.stderr and "certs dev" in out.stderr


# -- secrets from the environment or files, never argv ---------------------------------------------


@pytest.mark.unit
def test_the_edge_token_comes_from_a_file_or_the_environment_never_argv(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLIT_INFER_EDGE_TOKEN", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    cfg_file = tmp_path / "edge.yaml"
    cfg_file.write_text(f"token_file: {secret}\n")
    assert load_config(cfg_file, EdgeConfig).token == "from-a-file"
    cfg_file.write_text("token: ${MY_EDGE_TOKEN}\n")
    with pytest.raises(ConfigError, match="MY_EDGE_TOKEN is not set"):
        load_config(cfg_file, EdgeConfig)
    monkeypatch.setenv("MY_EDGE_TOKEN", "from-the-env")
    assert load_config(cfg_file, EdgeConfig).token == "from-the-env"
    cfg_file.write_text("node_id: edge-0\n")
    monkeypatch.setenv("SPLIT_INFER_EDGE_TOKEN", "well-known")
    assert load_config(cfg_file, EdgeConfig).token == "well-known"
    cfg_file.write_text(f"token: x\ntoken_file: {secret}\n")
    with pytest.raises(ConfigError, match="not both"):
        load_config(cfg_file, EdgeConfig)
    # The flag that put it where `ps` shows it is gone, with a message saying where it goes now.
    out = subprocess.run([sys.executable, "-m", "split_infer", "edge", "--token", "s3cret", "--camera", "x"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and "visible to every user" in out.stderr and "token_file" in out.stderr


@pytest.mark.unit
def test_the_redis_password_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SPLIT_INFER_REDIS_PASSWORD", raising=False)
    secret = tmp_path / "redis-password"
    secret.write_text("p@ss/w:rd")
    cfg = CloudConfig(redis_url="rediss://alice@db:6380/2?ssl_ca_certs=/ca.pem", redis_password_file=secret)
    parsed = redis.connection.parse_url(cfg.redis_url)
    assert (parsed["username"], parsed["password"], parsed["host"], parsed["db"]) == ("alice", "p@ss/w:rd", "db", 2)
    assert parsed["connection_class"] is redis.connection.SSLConnection and parsed["ssl_ca_certs"] == "/ca.pem"
    monkeypatch.setenv("SPLIT_INFER_REDIS_PASSWORD", "envpass")
    assert redis.connection.parse_url(CloudConfig(redis_url="redis://h/0").redis_url)["password"] == "envpass"
    with pytest.raises(ValueError, match="one place only"):
        CloudConfig(redis_url="redis://:inline@h/0", redis_password_file=secret)


# -- Redis with an ACL user, a password and TLS ----------------------------------------------------


class SecuredRedis:
    """A private redis-server: default user off, ACL user `alice` with a password, a TLS port."""

    def __init__(self, tmp: Path, password: str, certs) -> None:
        exe = require_binary("redis-server", "apt-get install -y redis-server")
        self.port, self.tls_port, self.services = free_port(), free_port(), Services(tmp)
        self.services.spawn("redis-server", [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(tmp), "--save", "", "--appendonly", "no",
            "--user", "default", "off", "--user", "alice", "on", f">{password}", "~*", "&*", "+@all",
            "--tls-port", str(self.tls_port), "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key), "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"])
        wait_for(self._up, 10, "the secured redis-server")

    def _up(self) -> bool:
        try:
            redis.Redis(port=self.port).ping()
        except redis.exceptions.AuthenticationError:
            return True  # it answers, and refuses the default user
        except redis.exceptions.RedisError:
            return False
        raise AssertionError("the default user should be off")


@pytest.mark.redis
@pytest.mark.e2e  # starts real servers or a torch child: out of make test-fast
def test_redis_acl_user_password_and_tls_reach_every_service_and_a_wrong_password_is_clear(tmp_path, monkeypatch,
                                                                                           caplog):
    certs = dev_certs()
    password = "s3cret/with@odd:chars"
    srv = SecuredRedis(tmp_path, password, certs)
    secret = tmp_path / "redis-password"
    secret.write_text(password)
    try:
        monkeypatch.delenv("SPLIT_INFER_REDIS_PASSWORD", raising=False)
        plain = f"redis://alice@127.0.0.1:{srv.port}/0"
        tls = f"rediss://alice@127.0.0.1:{srv.tls_port}/0?ssl_ca_certs={certs.ca}"
        keys = Keys("acl-test")
        for session, url in (("s-plain", plain), ("s-tls", tls)):
            cfg = cloud(cloud_tls(certs), redis_url=url, redis_password_file=str(secret))
            # The worker's and analytics' client: redis-py's from_url on the configured URL.
            assert redis.Redis.from_url(cfg.redis_url).ping()
            # The ingest (redis.asyncio) queues a frame that came over gRPC TLS.
            with IngestThread(cfg, keys) as ing:
                ack = exchange(ing.address, edge_tls(certs), [frame("cam-a", 0, session=session)])[0]
            assert ack.status == pb.Ack.OK, ack
        r = redis.Redis.from_url(CloudConfig(redis_url=tls, redis_password_file=secret).redis_url)
        assert r.xlen(keys.frames_stream("cam-a")) == 2
        # A wrong password: the frame is answered RETRY (nothing lost), and the log says why.
        monkeypatch.setenv("SPLIT_INFER_REDIS_PASSWORD", "wrong")
        wrong = cloud(cloud_tls(certs), redis_url=plain)
        with pytest.raises(redis.exceptions.AuthenticationError, match="invalid username-password"):
            redis.Redis.from_url(wrong.redis_url).ping()
        with caplog.at_level(logging.ERROR, logger="split_infer.cloud"), IngestThread(wrong, keys) as ing:
            ack = exchange(ing.address, edge_tls(certs), [frame("cam-a", 1, session="s-tls")])[0]
        assert ack.status == pb.Ack.RETRY, ack
        assert "AuthenticationError: invalid username-password pair" in caplog.text, caplog.text
    finally:
        srv.services.stop_all()


@pytest.mark.unit
def test_camera_urls_are_not_touched_by_substitution_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_PASS", "pw")
    f = tmp_path / "cloud.yaml"
    f.write_text("tls: {insecure: true}\ncameras:\n  - {id: a, url: 'rtsp://u:${CAM_PASS}@h/s'}\n"
                 "  - {id: b, url: 'http://h/$$literal'}\n")
    cfg = load_config(f, CloudConfig)
    assert [c.url for c in cfg.cameras] == ["rtsp://u:pw@h/s", "http://h/$literal"]
    assert isinstance(cfg.cameras[0], CameraConfig)
