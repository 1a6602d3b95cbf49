"""One place that hides credentials from log lines and error messages.

- `redact_url(url)`: a URL with its user info (`user:pass@`, even a password holding `@`) and
  its secret query parameters (`?password=`, `?token=`, `?key=`, ...) replaced by `***`.
- `redact(text)`: the same for every URL in free text, plus `Bearer <token>`, bare secret query
  parameters (`GET /api/live?ticket=...` in an access log line) and every secret value registered
  with `register_secret` (edge tokens, the Redis password), raw and percent-encoded.
- `RedactingFilter`: a logging filter that applies `redact` to each record's message, arguments
  and traceback; `split_infer.service.configure_logging` installs it on the process's handler.

Services register what they know to be secret at start-up (`register_secret`, `register_url`,
`register_config`), so a secret that reaches a message by some other road is still scrubbed.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would blank out ordinary words

# Query parameter names whose values are credentials (compared case-insensitively).
SECRET_PARAMS = ("password", "passwd", "pass", "pwd", "token", "access_token", "api_key", "apikey", "key",
                 "secret", "auth", "authorization", "ticket", "sig", "signature", "credential", "credentials")
# Config field names whose string values are secrets (`register_config`).
SECRET_FIELDS = re.compile(r"(^|_)(token|tokens|password|passwd|secret|secrets|api_key|api_keys)$", re.I)

_SCHEME_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>`]+)")
_PARAM = re.compile(r"(?P<lead>[?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s'\"<>;]*", re.I)
_BEARER = re.compile(r"(?P<lead>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.I)

_lock = threading.Lock()
_secrets: set[str] = set()


def _mask_rest(rest: str) -> str:
    """The part of a URL after `scheme://`, without user info and secret parameters.

    The user info ends at the LAST `@` (an unencoded `@` in a password must not leave its tail
    behind); a path that holds an `@` loses its host as well, which errs on the safe side."""
    at = rest.rfind("@")
    if at >= 0:
        rest = f"{MASK}@{rest[at + 1:]}"
    return _PARAM.sub(lambda m: m["lead"] + MASK, rest)


def redact_url(url: str) -> str:
    """`url` with its credentials masked; anything that is not a URL gets `redact`'s treatment."""
    m = _SCHEME_URL.fullmatch(url.strip())
    if m is None:
        return redact(url)
    return _redact_known(m["scheme"] + _mask_rest(m["rest"]))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials in URLs, bearer tokens, secret query parameters, the registered
    secrets and `secrets` masked."""
    if not text:
        return text
    out = _SCHEME_URL.sub(lambda m: m["scheme"] + _mask_rest(m["rest"]), text)
    out = _PARAM.sub(lambda m: m["lead"] + MASK, out)
    out = _BEARER.sub(lambda m: m["lead"] + MASK, out)
    return _redact_known(out, secrets)


def _redact_known(text: str, extra: Iterable[str] = ()) -> str:
    with _lock:
        known = set(_secrets)
    for secret in _forms(extra):
        known.add(secret)
    for secret in sorted(known, key=len, reverse=True):  # longest first: one may contain another
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _forms(values: Iterable[str]) -> set[str]:
    """A secret as it may appear: raw, percent-encoded, form-encoded."""
    out: set[str] = set()
    for v in values:
        if isinstance(v, str) and len(v) >= MIN_SECRET_LEN:
            out |= {v, quote(v, safe=""), quote_plus(v)}
    return out


def register_secret(*values: str | None) -> None:
    """Values no log line or error message may show from now on (empty and short ones are ignored)."""
    found = _forms(v for v in values if v)
    with _lock:
        _secrets.update(found)


def register_url(url: str | None) -> None:
    """Register the password (and user name) and the secret parameter values of `url`."""
    if not url:
        return
    m = _SCHEME_URL.fullmatch(url.strip())
    if m is None:
        return
    rest = m["rest"]
    at = rest.rfind("@")
    if at >= 0:
        userinfo = rest[:at]
        user, _, password = userinfo.partition(":")
        register_secret(password, unquote(password), userinfo)
        if password:
            register_secret(user if len(user) >= 8 else None)  # a long user name may be a token
    try:
        query = urlsplit(url).query
    except ValueError:
        query = ""
    for part in re.split(r"[&;]", query):
        name, eq, value = part.partition("=")
        if eq and name.lower() in SECRET_PARAMS:
            register_secret(value, unquote(value))


def register_config(obj: Any) -> None:
    """Walk a configuration (pydantic model, mapping, list) and register its secrets: the values
    of fields named like `token`, `tokens`, `password`, `secret`, and every `*url` field's credentials."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    if isinstance(obj, dict):
        for k, v in obj.items():
            name = str(k)
            if SECRET_FIELDS.search(name):
                for s in v if isinstance(v, (list, tuple, set)) else [v]:
                    if isinstance(s, str):
                        register_secret(s)
            elif name.lower().endswith("url") and isinstance(v, str):
                register_url(v)
            else:
                register_config(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            register_config(v)


def forget_secrets() -> None:
    """Clear the registry (tests)."""
    with _lock:
        _secrets.clear()


class RedactingFilter(logging.Filter):
    """Masks credentials in every record that passes: its message with its arguments merged in,
    and its formatted traceback. Installed on a handler, it sees the records of every logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
