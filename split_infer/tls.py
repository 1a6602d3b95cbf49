"""gRPC transport security between the edge and the ingest: credentials from the configs' `tls`.

TLS is the default on both sides; plaintext needs an explicit `tls: {insecure: true}`. The ingest
serves its certificate and, with `client_ca`, requires a client certificate from every edge
(mutual TLS). The edge verifies the ingest against its CA bundle (or the system roots) and may
present its own certificate. `split-infer certs dev` (split_infer/certs.py) makes development ones.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from split_infer.config import ConfigError, EdgeTLS, IngestTLS

# What a failed handshake looks like in gRPC's status details, and what to check for each.
_HANDSHAKE_HINTS = (
    ("CERTIFICATE_VERIFY_FAILED", "the ingest's certificate is not signed by the CA in the edge's tls.ca"),
    ("certificate verify failed", "the ingest's certificate is not signed by the CA in the edge's tls.ca"),
    ("Hostname Verification", "the ingest's certificate does not name the host in `cloud`: set the edge's "
                              "tls.server_name to a name it holds"),
    ("CERTIFICATE_REQUIRED", "the ingest requires a client certificate: set the edge's tls.cert and tls.key"),
    ("WRONG_VERSION_NUMBER", "TLS on one side only: both sides need TLS, or both `tls: {insecure: true}`"),
    ("Socket closed", "the connection closed during set-up: TLS on one side only, or a client certificate "
                      "the ingest does not accept (tls.cert signed by its tls.client_ca?)"),
    ("handshake", "the TLS handshake failed: check tls.ca, tls.cert and tls.key on the edge"),
)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"tls.{what}: cannot read {path} ({e.strerror})") from None


def server_credentials(tls: IngestTLS) -> grpc.ServerCredentials | None:
    """The ingest's credentials; None for plaintext (`insecure: true`). Without a certificate and
    without `insecure`, a ConfigError saying what to configure."""
    if tls.insecure:
        return None
    if tls.cert is None or tls.key is None:
        raise ConfigError("the ingest serves TLS by default: set tls.cert and tls.key (`split-infer certs dev "
                          "--out DIR` makes development ones), or `tls: {insecure: true}` for plaintext")
    pair = [(_read(tls.key, "key"), _read(tls.cert, "cert"))]
    if tls.client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=_read(tls.client_ca, "client_ca"),
                                       require_client_auth=True)


def channel_credentials(tls: EdgeTLS) -> grpc.ChannelCredentials | None:
    """The edge's credentials; None for plaintext (`insecure: true`)."""
    if tls.insecure:
        return None
    root = _read(tls.ca, "ca") if tls.ca else None
    if tls.cert is not None and tls.key is not None:
        return grpc.ssl_channel_credentials(root, _read(tls.key, "key"), _read(tls.cert, "cert"))
    return grpc.ssl_channel_credentials(root)


def channel_options(tls: EdgeTLS) -> list[tuple[str, str]]:
    return [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name and not tls.insecure else []


def secure_or_insecure_channel(target: str, tls: EdgeTLS, options: list) -> grpc.aio.Channel:
    """An aio channel to `target` as `tls` says."""
    creds = channel_credentials(tls)
    if creds is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, creds, options=options + channel_options(tls))


def explain(details: str | None) -> str | None:
    """A TLS hint for a failed connection's gRPC details, or None when it was not about TLS."""
    text = details or ""
    for needle, hint in _HANDSHAKE_HINTS:
        if needle.lower() in text.lower():
            return hint
    return None


def peer_identity(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the client certificate the peer presented (mutual TLS), if any."""
    names = context.auth_context().get("x509_common_name") or []
    return names[0].decode(errors="replace") if names else None
