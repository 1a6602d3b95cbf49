"""Swagger UI at /docs, from the Swagger UI files bundled in a PyPI package (swagger-ui-bundle-v2,
import name `swagger_ui_bundle`): nothing loads from a CDN, the page works offline.

The page has no inline script (its start-up is /docs/init.js), so it runs under a strict
Content-Security-Policy of its own: scripts from this server only. It differs from the rest of
the API's policy (split_infer/api/auth.py) only in allowing inline styles, which Swagger UI sets
on its elements.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

DOCS_PATH = "/docs"
ASSETS = DOCS_PATH + "/assets"
# The only bundled files the page uses; nothing else of the package is served.
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
            "connect-src 'self'; font-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def swagger_ui_dir() -> Path:
    """The bundled Swagger UI files; a clear error when the package is missing."""
    try:
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]
    except ImportError:
        raise RuntimeError("Swagger UI needs the package swagger-ui-bundle-v2: pip install -c constraints.txt "
                           "'split-infer[api]'") from None
    return Path(str(swagger_ui_path))


def page_html(title: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - Swagger UI</title>
<link rel="icon" type="image/png" href="{ASSETS}/favicon-32x32.png">
<link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}/swagger-ui-bundle.js"></script>
<script src="{DOCS_PATH}/init.js"></script>
</body>
</html>
"""


def init_js(openapi_url: str) -> str:
    # validatorUrl null: Swagger UI would otherwise send the schema to validator.swagger.io.
    return (f"window.ui = SwaggerUIBundle({{url: {json.dumps(openapi_url)}, dom_id: '#swagger-ui', "
            "deepLinking: true, validatorUrl: null, persistAuthorization: false, "
            "presets: [SwaggerUIBundle.presets.apis], layout: 'BaseLayout'});\n")


def add_docs(app: FastAPI) -> None:
    """GET /docs (the page), /docs/init.js, and the bundled assets under /docs/assets/."""
    folder = swagger_ui_dir()
    html, script = page_html(app.title), init_js(app.openapi_url or "/openapi.json")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"})

    @app.get(DOCS_PATH + "/init.js", include_in_schema=False)
    async def swagger_ui_init() -> Response:
        return Response(script, media_type="text/javascript")

    @app.get(ASSETS + "/{name}", include_in_schema=False)
    async def swagger_ui_asset(name: str) -> FileResponse:
        if name not in ASSET_FILES:
            raise HTTPException(404, f"no Swagger UI asset {name!r}")
        return FileResponse(folder / name, headers={"Cache-Control": "public, max-age=86400"})
