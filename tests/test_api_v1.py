"""The versioned read API in-process (ASGI) over the real Redis: /api/v1 and its deprecated /api
alias, hand-named operation ids, cursor pagination (every entry exactly once; full pages under a
type filter; a bounded scan that never claims the end falsely), 400 on a malformed cursor, and
Swagger UI served from the package's own files (also rendered in headless Chromium)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest

from split_infer.api.app import create_app
from split_infer.api.docs import DOCS_CSP
from split_infer.keys import Keys
from support.api import api_server
from support.redisdb import REDIS_URL

pytestmark = pytest.mark.redis

T = TypeVar("T")
CAM, CAM2 = "cam-1", "cam-2"
T0_MS = 1_700_000_000_000  # the records' stream ids start here (explicit ids: exact expectations)
T0_S = T0_MS / 1000
WINDOW = {"start": T0_S - 1, "end": T0_S + 10_000}


@asynccontextmanager
async def client(keys: Keys, scan_budget: int | None = None) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(REDIS_URL, keys=keys)
    if scan_budget is not None:
        app.state.store.scan_budget = scan_budget
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c
    finally:
        await app.state.store.r.aclose()
        await app.state.hub.store.r.aclose()


def run(keys: Keys, body: Callable[[httpx.AsyncClient], Awaitable[T]], scan_budget: int | None = None) -> T:
    async def go() -> T:
        async with client(keys, scan_budget) as c:
            return await body(c)
    return asyncio.run(go())


def detection(cam: str, seq: int) -> dict[str, Any]:
    """A detection record as the worker writes it."""
    ts = T0_S + seq / 10
    return {"camera": cam, "session": "s1", "seq": seq, "capture_ts": repr(ts), "ingest_ts": repr(ts),
            "done_ts": repr(ts + 0.05), "width": 640, "height": 360, "batch": 1, "head_ms": 20.0, "worker": "w1",
            "detections": json.dumps([{"class_id": 2, "class_name": "car", "score": 0.9, "box": [1, 2, 30, 40]}]),
            "timings": "{}"}


def an_event(cam: str, seq: int, kind: str) -> dict[str, str]:
    """An analytics event as analytics writes it (records.AnalyticsEvent.to_fields)."""
    base = {"type": kind, "camera": cam, "seq": str(seq), "ts": f"{T0_S + seq / 10:.3f}", "track_id": str(seq),
            "class_name": "car"}
    if kind == "line_cross":
        return {**base, "line": "road", "direction": "in"}
    return {**base, "zone": "kerb", **({"dwell_s": "1.500", "reason": "left"} if kind == "zone_exit" else {})}


def write_events(r, keys: Keys, cam: str, kinds: list[str], first_ms: int = T0_MS) -> list[str]:
    """Events with ids first_ms-0, first_ms+1-0, ... in order (oldest first); returns their ids."""
    pipe, ids = r.pipeline(transaction=False), []
    for i, kind in enumerate(kinds):
        ids.append(f"{first_ms + i}-0")
        pipe.xadd(keys.events_stream(cam), an_event(cam, i, kind), id=ids[-1])
    pipe.execute()
    r.sadd(keys.cameras, cam)
    return ids


async def walk(c: httpx.AsyncClient, path: str, params: dict[str, Any], items: str,
               max_pages: int = 1000) -> tuple[list[dict], list[int]]:
    """Every page of a listing through next_cursor: the items, and each page's size."""
    got, sizes, cursor = [], [], None
    for _ in range(max_pages):
        resp = await c.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        got += body[items]
        sizes.append(len(body[items]))
        cursor = body["next_cursor"]
        if cursor is None:
            return got, sizes
    raise AssertionError(f"{path}: no end after {max_pages} pages")


# -- versions and operation ids ------------------------------------------------------------------


def test_v1_and_the_deprecated_alias_both_answer(r, keys):
    r.xadd(keys.detections_stream(CAM), detection(CAM, 1), id=f"{T0_MS}-0")
    r.sadd(keys.cameras, CAM)

    async def body(c: httpx.AsyncClient) -> None:
        for path in (f"/cameras/{CAM}/detections/latest", f"/cameras/{CAM}/detections", "/cameras", "/counts"):
            v1, old = await c.get("/api/v1" + path, params={}), await c.get("/api" + path)
            assert v1.status_code == old.status_code == 200, (path, v1.text, old.text)
            assert "deprecation" not in v1.headers
            assert old.headers["deprecation"].startswith("@")  # RFC 9745: the date it was deprecated
            assert old.headers["link"] == f'</api/v1{path}>; rel="successor-version"'
            if path.endswith("latest"):
                assert v1.json() == old.json() and v1.json()["seq"] == 1
        missing = await c.get("/api/cameras/nope")  # errors of the alias carry the header too
        assert missing.status_code == 404 and "deprecation" in missing.headers
        assert (await c.get("/api/v1/cameras/nope")).status_code == 404

    run(keys, body)


@pytest.mark.unit
def test_every_operation_id_is_hand_named_and_unique():
    schema = create_app(REDIS_URL, keys=Keys("test-opids")).openapi()
    ops = {(path, method): op for path, item in schema["paths"].items() for method, op in item.items()}
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids)), f"duplicate operation ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for (path, method), op in ops.items():
        oid = op["operationId"]
        # FastAPI's generated ids look like get_history_api_cameras__camera__detections_get.
        assert re.fullmatch(r"[a-z]+(_[a-z0-9]+)*", oid) and not oid.endswith(f"_{method}"), (path, oid)
    v1 = {p: item for p, item in schema["paths"].items() if p.startswith("/api/v1/")}
    assert {"/api/v1/cameras", "/api/v1/cameras/{camera}/detections", "/api/v1/events", "/api/v1/live"} <= set(v1)
    for path, item in v1.items():
        alias = schema["paths"]["/api" + path[len("/api/v1"):]]
        for method, op in item.items():
            assert not op.get("deprecated") and alias[method]["deprecated"] is True
            assert alias[method]["operationId"] == "legacy_" + op["operationId"]
    # Nothing else under /api: every data route is versioned.
    assert all(p.startswith("/api/v1/") or "/api/v1" + p[len("/api"):] in v1
               for p in schema["paths"] if p.startswith("/api/"))
    assert schema["paths"]["/api/v1/events"]["get"]["operationId"] == "list_events"


# -- pagination ----------------------------------------------------------------------------------


def test_latest_is_the_newest_frame_even_when_workers_wrote_out_of_order(r, keys):
    # Two workers on one camera: frame 11 was written before frame 10, then a malformed entry.
    for seq in (9, 11, 10):
        r.xadd(keys.detections_stream(CAM), detection(CAM, seq))
    r.xadd(keys.detections_stream(CAM), {"camera": CAM, "seq": "not a number"})
    r.sadd(keys.cameras, CAM)

    async def body(c: httpx.AsyncClient) -> None:
        latest = (await c.get(f"/api/v1/cameras/{CAM}/detections/latest")).json()
        assert latest["seq"] == 11

    run(keys, body)


def test_detections_are_walked_in_pages_each_record_exactly_once(r, keys):
    n = 257
    pipe = r.pipeline(transaction=False)
    for i in range(n):  # two records share each millisecond: seq parts 0 and 1
        pipe.xadd(keys.detections_stream(CAM), detection(CAM, i), id=f"{T0_MS + i // 2}-{i % 2}")
    pipe.execute()
    r.sadd(keys.cameras, CAM)

    async def body(c: httpx.AsyncClient) -> None:
        got, sizes = await walk(c, f"/api/v1/cameras/{CAM}/detections", {**WINDOW, "limit": 50}, "records")
        assert [x["seq"] for x in got] == list(range(n)) and sizes == [50, 50, 50, 50, 50, 7]
        one = (await c.get(f"/api/v1/cameras/{CAM}/detections", params={**WINDOW, "limit": n})).json()
        assert one["next_cursor"] is None and not one["truncated"] and len(one["records"]) == n
        first = (await c.get(f"/api/v1/cameras/{CAM}/detections", params={**WINDOW, "limit": 10})).json()
        assert first["truncated"] and first["next_cursor"] == first["records"][-1]["id"] == f"{T0_MS + 4}-1"

    run(keys, body)


def test_events_are_walked_in_pages_across_cameras_each_exactly_once(r, keys):
    kinds = ["line_cross", "zone_enter", "zone_exit"] * 40
    ids1 = write_events(r, keys, CAM, kinds)
    ids2 = write_events(r, keys, CAM2, kinds[:90], first_ms=T0_MS + 30)  # 90 ids equal to cam-1's

    async def body(c: httpx.AsyncClient) -> None:
        got, sizes = await walk(c, f"/api/v1/cameras/{CAM}/events", {**WINDOW, "limit": 16}, "events")
        assert [e["id"] for e in got] == ids1[::-1] and sizes == [16] * 7 + [8]
        every, sizes = await walk(c, "/api/v1/events", {**WINDOW, "limit": 7}, "events")
        keyed = [(tuple(map(int, e["id"].split("-"))), e["camera"]) for e in every]
        assert keyed == sorted(keyed, reverse=True), "not newest first by (stream id, camera)"
        assert sorted(keyed) == sorted([(tuple(map(int, i.split("-"))), CAM) for i in ids1]
                                       + [(tuple(map(int, i.split("-"))), CAM2) for i in ids2])
        assert all(s == 7 for s in sizes[:-1]) and sum(sizes) == len(ids1) + len(ids2)

    run(keys, body)


def test_the_type_filter_fills_pages_with_matches_from_further_back(r, keys):
    """600 zone events are newer than the 40 crossings: the old filter (10 x limit entries read,
    then filtered) answered an empty page; the Redis-side scan reads on until the page is full."""
    write_events(r, keys, CAM, ["line_cross"] * 40 + ["zone_enter", "zone_exit"] * 300)

    async def body(c: httpx.AsyncClient) -> None:
        first = (await c.get(f"/api/v1/cameras/{CAM}/events",
                             params={**WINDOW, "type": "line_cross", "limit": 25})).json()
        assert len(first["events"]) == 25 and {e["type"] for e in first["events"]} == {"line_cross"}
        got, sizes = await walk(c, f"/api/v1/cameras/{CAM}/events", {**WINDOW, "type": "line_cross", "limit": 25},
                                "events")
        assert sizes == [25, 15] and [e["seq"] for e in got] == list(range(39, -1, -1))
        every, sizes = await walk(c, "/api/v1/events", {**WINDOW, "type": "line_cross", "limit": 25}, "events")
        assert sizes == [25, 15] and len({e["id"] for e in every}) == 40
        bad = await c.get(f"/api/v1/cameras/{CAM}/events", params={"type": "fire"})
        assert bad.status_code == 422

    run(keys, body)


def test_a_scan_that_hits_its_bound_hands_back_a_cursor_and_never_claims_the_end(r, keys):
    write_events(r, keys, CAM, ["line_cross"] * 10 + ["zone_enter"] * 1000)
    write_events(r, keys, CAM2, ["zone_exit"] * 500 + ["line_cross"] * 3)

    async def body(c: httpx.AsyncClient) -> None:
        first = (await c.get(f"/api/v1/cameras/{CAM}/events",
                             params={**WINDOW, "type": "line_cross", "limit": 5})).json()
        assert first["events"] == [] and first["next_cursor"], "a short page must say where to go on"
        got, sizes = await walk(c, f"/api/v1/cameras/{CAM}/events", {**WINDOW, "type": "line_cross", "limit": 5},
                                "events")
        assert [e["seq"] for e in got] == list(range(9, -1, -1)) and sum(sizes) == 10 and len(sizes) > 3
        every, _ = await walk(c, "/api/v1/events", {**WINDOW, "type": "line_cross", "limit": 4}, "events")
        assert sorted((e["camera"], e["seq"]) for e in every) == sorted(
            [(CAM, i) for i in range(10)] + [(CAM2, i) for i in range(500, 503)])

    run(keys, body, scan_budget=120)


def test_a_malformed_cursor_is_a_400_with_the_reason(r, keys):
    write_events(r, keys, CAM, ["line_cross"] * 3)
    r.xadd(keys.detections_stream(CAM), detection(CAM, 1), id=f"{T0_MS}-0")

    async def body(c: httpx.AsyncClient) -> None:
        one_camera = [f"/api/v1/cameras/{CAM}/events", f"/api/v1/cameras/{CAM}/detections",
                      f"/api/cameras/{CAM}/events"]
        for path in one_camera:
            for bad in ("abc", "1-2-3", "-1-0", "99999999999999999999-0", f"{T0_MS}-0:{CAM}", "0x10-0", " 1-0",
                        "01-0", ""):
                resp = await c.get(path, params={"cursor": bad})
                assert resp.status_code == 400, (path, bad, resp.text)
                assert "is not a cursor of this listing" in resp.json()["detail"], resp.text
            assert (await c.get(path, params={"cursor": f"{T0_MS}-0"})).status_code == 200
        for bad in (f"{T0_MS}-0", f"{T0_MS}-0:bad camera", f"{T0_MS}-0:"):
            resp = await c.get("/api/v1/events", params={"cursor": bad})
            assert resp.status_code == 400 and "<ms>-<seq>:<camera>" in resp.json()["detail"], resp.text
        assert (await c.get("/api/v1/events", params={"cursor": f"{T0_MS + 1}-0:{CAM}"})).status_code == 200

    run(keys, body)


# -- Swagger UI ----------------------------------------------------------------------------------


def test_swagger_ui_is_served_from_the_package_with_its_own_policy(keys):
    async def body(c: httpx.AsyncClient) -> None:
        page = await c.get("/docs")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        html = page.text
        assert not re.search(r"(https?:)?//", html), "the page refers to another host"
        csp = page.headers["content-security-policy"]
        assert csp == DOCS_CSP and "script-src 'self';" in csp and "unsafe-eval" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<script>" not in html, "inline script: the policy would block it"
        scripts = re.findall(r'<script src="([^"]+)"', html)
        styles = re.findall(r'<link rel="stylesheet" href="([^"]+)"', html)
        assert scripts == ["/docs/assets/swagger-ui-bundle.js", "/docs/init.js"] and styles
        for url in scripts:
            resp = await c.get(url)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/javascript"), url
        assert "SwaggerUIBundle" in (await c.get(scripts[0])).text[:200_000]
        assert '"/openapi.json"' in (await c.get("/docs/init.js")).text
        css = await c.get(styles[0])
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert (await c.get("/docs/assets/index.html")).status_code == 404  # only what the page uses
        assert (await c.get("/docs/assets/..%2F__init__.py")).status_code == 404

    run(keys, body)


@pytest.mark.e2e
@pytest.mark.browser
def test_swagger_ui_renders_in_chromium_under_its_policy(prefix):
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail(f"{chromium} is missing: this test needs Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("python package playwright is missing: pip install -e '.[dev]' (never `playwright install`)")
    with api_server(prefix) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox",
                                                                        "--disable-gpu"])
        try:
            page = browser.new_page()
            outside, errors = [], []
            page.on("request", lambda req: outside.append(req.url)
                    if urlsplit(req.url).hostname not in ("127.0.0.1", None) and not req.url.startswith("data:")
                    else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(base + "/docs")
            page.wait_for_selector(".opblock-summary", timeout=20_000)
            titles = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
            assert any("/api/v1/events" in t for t in titles), titles
            assert page.locator(".opblock-deprecated").count() > 0, "the /api alias is not shown deprecated"
            assert not errors, errors
            assert not outside, f"Swagger UI fetched from outside the server: {outside}"
        finally:
            browser.close()
