"""API versions: every data route under /api/v1/..., and the same routes under /api/... as a
deprecated alias for one release (docs/api.md, "Versions").

One router, mounted twice: no handler exists in two copies. The alias answers every response
with `Deprecation` (RFC 9745) and a `Link` to its /api/v1 successor. In the OpenAPI schema the
alias paths are the v1 operations, copied, marked `deprecated`, their operation ids prefixed with
`legacy_` so that ids stay unique.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_V1 = "/api/v1"
LEGACY = "/api"
LEGACY_OPERATION_PREFIX = "legacy_"
# The release that introduced /api/v1 and deprecated the alias; the next one removes it.
DEPRECATED_SINCE = datetime(2026, 12, 1, tzinfo=timezone.utc)


def is_legacy(path: str) -> bool:
    return path.startswith(LEGACY + "/") and not (path == API_V1 or path.startswith(API_V1 + "/"))


def successor(path: str) -> str:
    """/api/cameras -> /api/v1/cameras."""
    return API_V1 + path[len(LEGACY):]


def mount_versioned(app: FastAPI, router: APIRouter) -> None:
    """`router`'s routes (paths without /api) under /api/v1, and under /api as the deprecated alias."""
    app.include_router(router, prefix=API_V1)
    app.include_router(router, prefix=LEGACY, include_in_schema=False)  # in the schema through _with_alias
    app.add_middleware(DeprecatedAlias)
    generate = app.openapi
    done: dict[str, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        if "schema" not in done:
            done["schema"] = _with_alias(generate())
        return done["schema"]

    app.openapi = openapi  # type: ignore[method-assign]


def _with_alias(schema: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = schema.get("paths", {})
    for path, item in list(paths.items()):
        if not path.startswith(API_V1 + "/"):
            continue
        alias = copy.deepcopy(item)
        for op in alias.values():
            if isinstance(op, dict) and "operationId" in op:
                op["operationId"] = LEGACY_OPERATION_PREFIX + op["operationId"]
                op["deprecated"] = True
                op["description"] = (f"Deprecated alias of `{path}`, removed in the next release.\n\n"
                                     + op.get("description", ""))
        paths[LEGACY + path[len(API_V1):]] = alias
    return schema


class DeprecatedAlias:
    """Pure ASGI middleware: `Deprecation` and `Link: <successor>; rel="successor-version"` on every
    answer under the alias (errors and the live stream included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.since = f"@{int(DEPRECATED_SINCE.timestamp())}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_legacy(scope["path"]):
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        link = b"<" + successor(raw.decode("latin-1")).encode("latin-1") + b'>; rel="successor-version"'

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"deprecation", self.since), (b"link", link)]
            await send(message)

        await self.app(scope, receive, with_headers)
