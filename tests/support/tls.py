"""Development certificates for the tests (`split-infer certs dev`, made once per test session),
and the `tls` sections of the cloud and edge configs that use them."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from split_infer.certs import DevCerts, make_dev_certs

EDGE = "edge-0"  # the node name the pipeline's edge uses, with a client certificate of that name


@functools.cache
def dev_certs() -> DevCerts:
    """A CA, a server certificate for localhost/127.0.0.1 and client certificates for `EDGE` and `other`."""
    out = Path(tempfile.mkdtemp(prefix="split-infer-certs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    return make_dev_certs(out, [EDGE, "other"])


def cloud_tls(certs: DevCerts, mutual: bool = True) -> dict:
    """The ingest's `tls`: its certificate, and with `mutual`, client certificates required."""
    tls = {"cert": str(certs.server_cert), "key": str(certs.server_key)}
    return {**tls, "client_ca": str(certs.ca)} if mutual else tls


def edge_tls(certs: DevCerts, node: str | None = EDGE) -> dict:
    """The edge's `tls`: the CA that signed the ingest, and node's client certificate (None: none)."""
    tls = {"ca": str(certs.ca)}
    return {**tls, "cert": str(certs.client_cert(node)), "key": str(certs.client_key(node))} if node else tls
