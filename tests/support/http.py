"""Plain HTTP probes of a service's observability port (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; a 4xx/5xx answer is returned, not raised; no answer raises OSError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def probe(url: str) -> tuple[int, dict]:
    """(status, JSON body) of /healthz or /readyz."""
    status, body = http_get(url)
    return status, json.loads(body)
