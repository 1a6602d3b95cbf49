"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

`split-infer api` runs as its own process over real Redis while a feeder writes what the ingest,
the workers and analytics write (eight cameras, one dead). The page must draw each camera's
snapshot with its boxes, show counts that change, mark the dead camera, notice a camera dying
while it is open, never reload, and fetch nothing from outside this server.
Screenshot: artifacts/dashboard.png.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from api_feeder import Feeder
from api_support import ROOT, api_server, isolated_prefix, redis_client

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "dashboard.png"

# Pixels of the class colours the dashboard draws boxes in (dashboard.js CLASS_COLORS), counted
# in the page: proof that boxes, not only the snapshot, are on the canvas.
COUNT_BOX_PIXELS = """(tile) => {
  const c = tile.querySelector('canvas.frame');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const colors = [[0x4a,0xa3,0xff],[0xff,0x6b,0x6b],[0xff,0xd9,0x3d],[0xc7,0x7d,0xff],[0x2e,0xcc,0x71],[0xff,0x9f,0x43]];
  let n = 0, lit = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] + d[i+1] + d[i+2] > 60) lit++;
    for (const [r,g,b] of colors) if (Math.abs(d[i]-r) < 6 && Math.abs(d[i+1]-g) < 6 && Math.abs(d[i+2]-b) < 6) { n++; break; }
  }
  return {box: n, lit: lit / (d.length / 4)};
}"""

LINE_TOTAL = """() => [...document.querySelectorAll('.line-row .total')]
  .reduce((a, e) => a + Number(e.textContent.replace(/[^0-9]/g, '')), 0)"""


def launch(p):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the dashboard test needs Debian's chromium (apt-get install -y chromium)")
    return p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)


def test_dashboard_live_in_chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("python package playwright is missing: pip install -e '.[dev]' (never `playwright install`)")
    r = redis_client()
    with isolated_prefix(r) as prefix:
        feeder = Feeder(r, n_cameras=8, dead=("cam-8",))
        t0 = time.time() - 6
        for i in range(60):  # 6 s of history, so counts and charts have something at load time
            feeder.step(now=t0 + i * 0.1)
        stop = threading.Event()

        def feed():
            while not stop.is_set():
                feeder.step()
                time.sleep(0.1)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        try:
            with api_server(prefix, stale_after_s=2.0) as base, sync_playwright() as p:
                browser = launch(p)
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                outside, errors = [], []
                page.on("request", lambda req: outside.append(req.url)
                        if urlsplit(req.url).hostname not in ("127.0.0.1", None) and not req.url.startswith("data:")
                        else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(base + "/")
                page.evaluate("window.__sameDocument = true")

                # Eight tiles; seven live, one dead and plainly so.
                page.wait_for_function("document.querySelectorAll('.tile').length === 8", timeout=15000)
                page.wait_for_function(
                    "document.querySelectorAll('.tile[data-state=online]').length === 7", timeout=15000)
                dead = page.locator('.tile[data-camera="cam-8"]')
                assert dead.get_attribute("data-state") == "offline"
                assert dead.locator(".badge").inner_text() == "OFFLINE"
                assert dead.locator(".offline-overlay").is_visible()
                assert "no frames for 5 min" in dead.locator(".offline-why").inner_text()
                page.wait_for_function("document.getElementById('feed').textContent === '● live'", timeout=10000)

                # Every live tile shows its snapshot with boxes drawn over it, and the classes in view.
                page.wait_for_function(
                    "[...document.querySelectorAll('.tile[data-state=online] .in-view')].every(e => e.children.length)",
                    timeout=15000)
                for tile in page.locator(".tile[data-state=online]").all():
                    px = tile.evaluate(COUNT_BOX_PIXELS)
                    assert px["lit"] > 0.5, f"{tile.get_attribute('data-camera')}: snapshot not drawn ({px})"
                    assert px["box"] > 100, f"{tile.get_attribute('data-camera')}: no boxes drawn ({px})"

                # Counts change while we watch, without a reload.
                before = page.evaluate(LINE_TOTAL)
                page.wait_for_function(f"({LINE_TOTAL})() > {before}", timeout=20000)
                after = page.evaluate(LINE_TOTAL)
                assert after > before
                assert page.locator('.tile[data-camera="cam-1"] .line-row[data-line="road"]').count() == 1

                # A camera dies while the page is open: its tile turns red by itself.
                feeder.dead.add("cam-7")
                page.wait_for_function(
                    "document.querySelector('.tile[data-camera=\"cam-7\"]').dataset.state === 'offline'",
                    timeout=15000)
                page.wait_for_timeout(3000)  # let the charts grow for the screenshot
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)

                assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
                assert not errors, f"page errors: {errors}"
                assert not outside, f"the dashboard fetched from outside the server: {outside}"
                browser.close()
        finally:
            stop.set()
            thread.join()
    assert SCREENSHOT.stat().st_size > 50_000
