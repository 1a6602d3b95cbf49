"""`split-infer certs dev --out DIR`: a development CA, a server certificate and one client
certificate per edge, for gRPC over TLS between the edges and the ingest (docs/security.md).

    split-infer certs dev --out certs --edge edge-0 --edge edge-1 --host ingest

Writes ca.pem and ca.key, server.pem and server.key (names: localhost, 127.0.0.1, ::1 and each
--host), and client-NAME.pem and client-NAME.key per --edge. Private keys are written 0600. An
existing CA in DIR is reused, so that certificates added later chain to the same one. For
development and tests: production certificates come from the operator's own PKI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CA_NAME = "split-infer development CA"


@dataclass(frozen=True)
class DevCerts:
    """The paths that `make_dev_certs` wrote."""

    dir: Path
    edges: tuple[str, ...]

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    def client_cert(self, edge: str) -> Path:
        return self.dir / f"client-{edge}.pem"

    def client_key(self, edge: str) -> Path:
        return self.dir / f"client-{edge}.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others, not even briefly
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "split-infer (development)"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _load_or_make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC key made by `split-infer certs dev`")
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = _key()
    cert = (_builder(CA_NAME, _name(CA_NAME), key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert, key


def _leaf(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, subject: str, sans: list[x509.GeneralName],
          usage: x509.ObjectIdentifier, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (_builder(subject, ca.subject, key.public_key(), days)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_dev_certs(out: Path, edges: list[str] | tuple[str, ...] = ("edge-0",), hosts: list[str] | tuple[str, ...] = (),
                   days: int = 825) -> DevCerts:
    """Write a development CA (reused when `out` has one), a server certificate for localhost,
    127.0.0.1, ::1 and `hosts`, and a client certificate per edge name into `out`."""
    for name in edges:
        if not NAME_PATTERN.match(name):
            raise ValueError(f"edge name {name!r}: letters, digits, '_', '.', '-' only (at most 64)")
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_or_make_ca(out, days)
    names = list(dict.fromkeys([*DEFAULT_HOSTS, *hosts]))
    cert, key = _leaf(ca, ca_key, names[0] if not hosts else hosts[0], [_san(h) for h in names],
                      ExtendedKeyUsageOID.SERVER_AUTH, days)
    certs = DevCerts(out, tuple(edges))
    _write_key(certs.server_key, key)
    _write_cert(certs.server_cert, cert)
    for edge in edges:
        cert, key = _leaf(ca, ca_key, edge, [x509.DNSName(edge)], ExtendedKeyUsageOID.CLIENT_AUTH, days)
        _write_key(certs.client_key(edge), key)
        _write_cert(certs.client_cert(edge), cert)
    return certs


def main(argv: list[str] | None = None) -> int:
    from split_infer.service import EXIT_CODES_EPILOG, HelpFormatter  # the CLI's only

    ap = argparse.ArgumentParser(prog="split-infer certs", description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=HelpFormatter, epilog=EXIT_CODES_EPILOG)
    sub = ap.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="a development CA and certificates for the ingest and the edges",
                         formatter_class=HelpFormatter)
    dev.add_argument("--out", type=Path, required=True, help="folder to write into (created if missing)")
    dev.add_argument("--edge", action="append", help="edge node name for a client certificate (repeatable; "
                                                     "default edge-0)")
    dev.add_argument("--host", action="append", default=[],
                     help="extra DNS name or IP of the ingest (repeatable; default: none; localhost and 127.0.0.1 "
                          "always)")
    dev.add_argument("--days", type=int, default=825, help="validity of each certificate")
    args = ap.parse_args(argv)
    try:
        certs = make_dev_certs(args.out, args.edge or ["edge-0"], args.host, args.days)
    except ValueError as e:
        ap.error(str(e))
    print(f"wrote a development CA ({certs.ca}), the server certificate {certs.server_cert} and "
          f"{len(certs.edges)} client certificate(s) to {certs.dir}; keys are 0600")
    return 0
