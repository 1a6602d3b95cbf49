"""Who may read the API, and how often: bearer API keys, live-feed tickets, a per-key rate limit,
and the headers every response carries.

- Keys are configured as sha256 digests (`ApiConfig.api_keys`); the key itself is never stored,
  logged or compared in the clear. No keys configured: the API is open, and says so loudly.
- `EventSource` cannot send headers: the dashboard trades its key for a ticket
  (`POST /api/live/ticket`), valid for TICKET_TTL_S, and opens `/api/live?ticket=...`. A ticket is
  an HMAC under a secret made at start-up, so it is good only on this process; log lines show
  `ticket=***` (split_infer/redact.py).
- Rate limit: a token bucket per key, in-process (each replica counts its own); 429 with
  `Retry-After` when empty.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from split_infer.config import ApiKey

TICKET_TTL_S = 60
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
     b"base-uri 'none'; form-action 'self'"),
]


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh random key and its digest (what goes in the config)."""
    key = secrets.token_urlsafe(32)
    return key, key_digest(key)


@dataclass
class Bucket:
    tokens: float
    at: float


class ApiAuth:
    def __init__(self, keys: list[ApiKey], rate_per_s: float = 20.0, burst: int = 120) -> None:
        self.keys = list(keys)
        self.rate_per_s, self.burst = rate_per_s, burst
        self._ticket_secret = secrets.token_bytes(32)
        self._buckets: dict[str, Bucket] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check_key(self, key: str) -> ApiKey | None:
        """The configured key whose digest matches (each compared in constant time), else None."""
        digest = key_digest(key)
        found = None
        for k in self.keys:
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found

    def issue_ticket(self, key: ApiKey | None, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + TICKET_TTL_S)
        body = f"{key.name if key else '-'}.{expires}"
        return f"{body}.{self._sign(body)}"

    def check_ticket(self, ticket: str, now: float | None = None) -> ApiKey | None:
        body, _, sig = ticket.rpartition(".")
        name, _, expires = body.rpartition(".")
        # bytes: compare_digest refuses non-ASCII str, and a ticket is whatever the client sent
        if not hmac.compare_digest(sig.encode(), self._sign(body).encode()) or not expires.isascii() \
                or not expires.isdigit():
            return None
        if int(expires) < (time.time() if now is None else now):
            return None
        return next((k for k in self.keys if k.name == name), None)

    def _sign(self, body: str) -> str:
        return hmac.new(self._ticket_secret, body.encode(), hashlib.sha256).hexdigest()[:32]

    def take(self, name: str, now: float | None = None) -> float:
        """Spend one request of key `name`: 0.0 when allowed, else seconds until the next one is."""
        now = time.monotonic() if now is None else now
        b = self._buckets.setdefault(name, Bucket(float(self.burst), now))
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate_per_s)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate_per_s


_bearer = HTTPBearer(auto_error=False, description="an API key (`split-infer api --new-key`); "
                                                    "not needed when the API runs without keys")


async def require_read(
    request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey | None:
    """The caller's key (scope `read`), spent from its rate bucket; 401 without a valid key, 429
    when its bucket is empty. No keys configured: everyone passes (None)."""
    auth: ApiAuth = request.app.state.auth
    if not auth.enabled:
        return None
    key = auth.check_key(creds.credentials) if creds is not None else None
    ticket = request.query_params.get("ticket")
    if key is None and ticket and request.url.path in ("/api/live", "/api/v1/live"):
        key = auth.check_ticket(ticket)
    if key is None:
        raise HTTPException(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if "read" not in key.scopes:
        raise HTTPException(403, f"API key {key.name!r} lacks the 'read' scope")
    wait = auth.take(key.name)
    if wait:
        raise HTTPException(429, f"rate limit of API key {key.name!r} reached; retry later",
                            headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return key


class SecurityHeaders:
    """Pure ASGI middleware (streams pass through untouched): `X-Content-Type-Options: nosniff`
    and friends on every response, the dashboard's files and the errors included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)
