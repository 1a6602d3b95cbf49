"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

Two runs, each with `split-infer api` as its own process over real Redis:
- fed: a feeder writes what the ingest, the workers and analytics write (eight cameras, one
  dead), and the API requires a key: the page asks for it once, and the test types it in. The
  page must draw each camera's snapshot with its boxes, show counts that change, mark
  the dead camera, notice a camera dying while it is open, never reload, and fetch nothing from
  outside this server. Screenshot: artifacts/dashboard.png, and docs/img/dashboard.png (the
  README's) when SPLIT_INFER_DOCS_SCREENSHOT=1.
- real pipeline: `split-infer demo` (edge node, ingest, worker on the sample footage) plus
  `split-infer analytics`; the tiles must show real detections and the counts must change.
  Screenshot: artifacts/dashboard-pipeline.png.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from split_infer.apps.processes import free_port
from split_infer.keys import Keys
from support.api import api_server
from support.data import ROOT
from support.feeder import Feeder
from support.processes import Services
from support.redisdb import REDIS_URL, connect, isolated_prefix
from support.wait import wait_for

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "dashboard.png"
DOCS_SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"  # the README's quick start shows it
API_KEY = "dashboard-test-key-4Jd8sK2mQ9"

# Pixels of the class colours the dashboard draws boxes in (dashboard.js CLASS_COLORS), counted
# in the page: proof that boxes, not only the snapshot, are on the canvas.
COUNT_BOX_PIXELS = """(tile) => {
  const c = tile.querySelector('canvas.frame');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colors = [[0x4a,0xa3,0xff],[0xff,0x6b,0x6b],[0xff,0xd9,0x3d],
                  [0xc7,0x7d,0xff],[0x2e,0xcc,0x71],[0xff,0x9f,0x43]];
  let n = 0, lit = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i+1] + d[i+2] > 60) lit++;
    for (const [r,g,b] of colors)
      if (Math.abs(d[i]-r) < 6 && Math.abs(d[i+1]-g) < 6 && Math.abs(d[i+2]-b) < 6) { n++; break; }
  }
  return {box: n, lit: lit / (d.length / 4)};
}"""

LINE_TOTAL = """() => [...document.querySelectorAll('.line-row .total')]
  .reduce((a, e) => a + Number(e.textContent.replace(/[^0-9]/g, '')), 0)"""


def playwright():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard test needs Debian's chromium (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("python package playwright is missing: pip install -e '.[dev]' (never `playwright install`)")
    return sync_playwright()


def open_page(p, base: str):
    """The dashboard in a fresh headless Chromium; records requests to other hosts and page errors."""
    browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.outside, page.errors = [], []
    page.on("request", lambda req: page.outside.append(req.url)
            if urlsplit(req.url).hostname not in ("127.0.0.1", None) and not req.url.startswith("data:") else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(base + "/")
    page.evaluate("window.__sameDocument = true")
    return browser, page


def wait_js(page, expression: str, timeout: float) -> None:
    """Poll a JavaScript expression until it is truthy (`timeout` in ms). Not wait_for_function:
    that evaluates strings with eval(), which the dashboard's Content-Security-Policy forbids,
    and the page must run under its real policy."""
    deadline = time.monotonic() + timeout / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out after {timeout / 1000:g} s waiting for {expression}"
        page.wait_for_timeout(100)


def check_clean(page) -> None:
    assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
    assert not page.errors, f"page errors: {page.errors}"
    assert not page.outside, f"the dashboard fetched from outside the server: {page.outside}"


def test_dashboard_live_in_chromium():
    r = connect()
    with isolated_prefix(r) as prefix:
        feeder = Feeder(r, Keys(prefix), n_cameras=8, dead=("cam-8",))
        t0 = time.time() - 6
        for i in range(60):  # 6 s of history, so counts and charts have something at load time
            feeder.step(now=t0 + i * 0.1)
        stop = threading.Event()

        def feed():
            while not stop.is_set():
                feeder.step()
                time.sleep(0.1)  # deliberate: cameras at 10 fps

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        try:
            digest = hashlib.sha256(API_KEY.encode()).hexdigest()
            with api_server(prefix, stale_after_s=2.0, extra=("--api-key-sha256", digest)) as base, \
                    playwright() as p:
                browser, page = open_page(p, base)

                # The API wants a key: the page asks once, keeps it for the tab, and sends it.
                page.wait_for_selector("#key-form", state="visible", timeout=15000)
                page.fill("#key-input", "not-the-key")
                page.click("#key-form button")
                wait_js(page,
                    "document.getElementById('key-why').textContent.includes('refused')", timeout=15000)
                page.fill("#key-input", API_KEY)
                page.click("#key-form button")
                page.wait_for_selector("#key-form", state="hidden", timeout=15000)
                assert page.evaluate("sessionStorage.getItem('split-infer-api-key')") == API_KEY

                # Eight tiles; seven live, one dead and plainly so.
                wait_js(page, "document.querySelectorAll('.tile').length === 8", timeout=15000)
                wait_js(page,
                    "document.querySelectorAll('.tile[data-state=online]').length === 7", timeout=15000)
                dead = page.locator('.tile[data-camera="cam-8"]')
                assert dead.get_attribute("data-state") == "offline"
                assert dead.locator(".badge").inner_text() == "OFFLINE"
                assert dead.locator(".offline-overlay").is_visible()
                assert "no frames for 5 min" in dead.locator(".offline-why").inner_text()
                wait_js(page, "document.getElementById('feed').textContent === '● live'", timeout=10000)

                # Every live tile shows its snapshot with boxes drawn over it, and the classes in view.
                wait_js(page,
                    "[...document.querySelectorAll('.tile[data-state=online] .in-view')].every(e => e.children.length)",
                    timeout=15000)
                for tile in page.locator(".tile[data-state=online]").all():
                    px = tile.evaluate(COUNT_BOX_PIXELS)
                    assert px["lit"] > 0.5, f"{tile.get_attribute('data-camera')}: snapshot not drawn ({px})"
                    assert px["box"] > 100, f"{tile.get_attribute('data-camera')}: no boxes drawn ({px})"

                # Counts change while we watch, without a reload.
                before = page.evaluate(LINE_TOTAL)
                wait_js(page, f"({LINE_TOTAL})() > {before}", timeout=20000)
                after = page.evaluate(LINE_TOTAL)
                assert after > before
                assert page.locator('.tile[data-camera="cam-1"] .line-row[data-line="road"]').count() == 1

                # A camera dies while the page is open: its tile turns red by itself.
                feeder.dead.add("cam-7")
                wait_js(page,
                    "document.querySelector('.tile[data-camera=\"cam-7\"]').dataset.state === 'offline'",
                    timeout=15000)
                page.wait_for_timeout(3000)  # let the charts grow for the screenshot
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)

                check_clean(page)
                browser.close()
        finally:
            stop.set()
            thread.join()
    assert SCREENSHOT.stat().st_size > 50_000
    if os.environ.get("SPLIT_INFER_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        from PIL import Image  # a 128-colour palette: a quarter of the bytes for the repository

        Image.open(SCREENSHOT).convert("RGB").quantize(colors=128).save(DOCS_SCREENSHOT, optimize=True)


# --------------------------------------------------------------------------- the real pipeline

PIPELINE_SCREENSHOT = ROOT / "artifacts" / "dashboard-pipeline.png"
FEEDS = 4  # of the demo's sample footage (640x272): enough tiles, and room on two CPU cores


def test_dashboard_on_the_real_pipeline(tmp_path):
    # `split-infer demo` as a user runs it: edge node, ingest, worker, analytics (a counting line
    # through the middle of each feed) and the API serving the dashboard, all its own processes.
    r = connect()
    with isolated_prefix(r) as prefix:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        services = Services(tmp_path)
        proc = services.start("demo", "demo", "--redis-url", REDIS_URL, "--feeds", str(FEEDS), "--no-live",
                              "--api-port", str(port), "--workdir", str(tmp_path / "demo"),
                              env={"SPLIT_INFER_PREFIX": prefix})

        def alive() -> None:
            if proc.poll() is not None:
                pytest.fail(f"the demo exited with {proc.returncode}:\n{services.log_tail('demo', 3000)}")

        def dashboard_up() -> bool:
            alive()
            return f"dashboard: {base}/" in services.log("demo")

        try:
            deadline = time.monotonic() + 240  # the demo loads the model and warms up first
            wait_for(dashboard_up, 240, "the demo to print its dashboard URL", every=0.5)
            with playwright() as p:
                browser, page = open_page(p, base)
                while page.locator(".tile[data-state=online]").count() < FEEDS:
                    alive()
                    assert time.monotonic() < deadline, "the demo's cameras did not come online in 240 s"
                    page.wait_for_timeout(1000)
                # Real detections on every tile (boxes drawn, classes in view), at some moment.
                seen: set[str] = set()
                deadline = time.monotonic() + 90
                while len(seen) < FEEDS:
                    alive()
                    assert time.monotonic() < deadline, f"detections shown only on {sorted(seen)} in 90 s"
                    for tile in page.locator(".tile[data-state=online]").all():
                        if tile.locator(".in-view .chip").count() and tile.evaluate(COUNT_BOX_PIXELS)["box"] > 50:
                            seen.add(tile.get_attribute("data-camera"))
                    page.wait_for_timeout(500)
                # The analytics' counts reach the page and change while we watch.
                wait_js(page, "document.querySelectorAll('.line-row').length >= 1", timeout=60000)
                before = page.evaluate(LINE_TOTAL)
                wait_js(page, f"({LINE_TOTAL})() > {before}", timeout=120000)
                page.wait_for_timeout(2000)
                PIPELINE_SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(PIPELINE_SCREENSHOT), full_page=True)
                check_clean(page)
                browser.close()
        finally:
            services.terminate("demo", timeout=30)  # SIGTERM: the demo stops its children
