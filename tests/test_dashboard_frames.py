"""The dashboard in headless Chromium (the harness of tests/test_dashboard_browser.py): each tile's
boxes belong to the frame its snapshot shows, and the configured lines and zones land where the
config puts them.

One `split-infer api` over real Redis, one browser, three cameras written as the ingest, workers
and analytics write them:
- `mov-1`: moving footage (consecutive frames of the street video) with a blue block that moves
  30 px a frame, boxed in each frame's record; snapshots every 5th frame, each frame's record
  written two frames later (after its snapshot, as in the pipeline). Every picture the tile shows
  must have the block under its box's centre (another frame's box misses it by 30 px).
- `geo-1`: a normalised line and a zone in the pixels of a 1280x720 `frame_size` on a 640x360
  stream: the screenshot's pixels must have the line's and the zone's colours where the config
  puts them, in the grid and on the camera page (`#camera=geo-1`, larger), whose day view shows
  the history of that day.
The screenshot goes to artifacts/dashboard-lines.png (docs/img/dashboard.png comes from
tests/test_dashboard_browser.py with SPLIT_INFER_DOCS_SCREENSHOT=1).
"""

from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

from split_infer.analytics.aggregates import Minute
from split_infer.analytics.history import write_minutes
from split_infer.analytics.scene import scene_json
from split_infer.config import CameraConfig
from split_infer.keys import Keys
from split_infer.records.snapshot import SnapshotFrame, jpeg_digest
from support.api import api_server
from support.data import ROOT
from support.feeder import thumbnail, video_frames
from support.redisdb import connect, isolated_prefix
from test_dashboard_browser import check_clean, open_page, playwright, wait_js

pytestmark = [pytest.mark.redis, pytest.mark.e2e, pytest.mark.browser]

W, H = 640, 360
STEP_PX, BLOCK = 30, 40
LINE_RGB, ZONE_RGB = (0x00, 0xE5, 0xFF), (0xFF, 0x3D, 0xF2)  # frame.js LINE_COLOR, ZONE_COLOR
GEO = CameraConfig.model_validate({
    "id": "geo-1", "url": "test", "frame_size": [1280, 720],
    "lines": [{"name": "gate", "units": "normalized", "a": [0.1, 0.3], "b": [0.9, 0.3]}],
    "zones": [{"name": "kerb", "polygon": [[640, 440], [1200, 440], [1200, 680], [640, 680]]}],  # pixels of 1280x720
})
SCREENSHOT = ROOT / "artifacts" / "dashboard-lines.png"


def block_x(seq: int) -> int:
    return 20 + (seq * STEP_PX) % (W - 2 * BLOCK)


def record(cam: str, seq: int, capture: float, dets: list[dict]) -> dict:
    return {"camera": cam, "session": "s1", "seq": seq, "capture_ts": repr(capture), "ingest_ts": repr(capture),
            "done_ts": repr(time.time()), "width": W, "height": H, "detections": json.dumps(dets), "batch": 1,
            "head_ms": 20.0, "worker": "w1", "timings": "{}"}


class Footage:
    """Writes mov-1 and geo-1 at 10 fps: state, snapshots with the frame they show, delayed records."""

    def __init__(self, r, keys: Keys) -> None:
        self.r, self.keys, self.seq = r, keys, 0
        self.frames = [cv2.resize(f, (W, H)) for f in video_frames(30, step=2)]
        self.plain = np.full((H, W, 3), 40, np.uint8)
        self.captures: dict[int, float] = {}
        for cam in ("mov-1", "geo-1"):
            r.sadd(keys.cameras, cam)
        r.set(keys.scene("geo-1"), scene_json(GEO))

    def step(self) -> None:
        seq, now, p = self.seq, time.time(), self.r.pipeline(transaction=False)
        self.captures[seq] = now
        for cam in ("mov-1", "geo-1"):
            p.hset(self.keys.camera_state(cam), mapping={"online": 1, "fps": 10.0, "bytes_per_s": 1.6e5,
                   "last_frame_ts": repr(now), "last_seen_ts": repr(now), "last_seq": seq, "session": "s1"})
        if seq % 5 == 0:
            moving = self.frames[seq % len(self.frames)].copy()
            x = block_x(seq)
            moving[200:200 + BLOCK, x:x + BLOCK] = (255, 0, 0)  # BGR: pure blue
            for cam, image in (("mov-1", moving), ("geo-1", self.plain)):
                jpeg = thumbnail(image)
                p.set(self.keys.snapshot(cam), jpeg)
                p.hset(self.keys.snapshot_frame(cam),
                       mapping=SnapshotFrame(cam, "s1", seq, now, jpeg_digest(jpeg), "q8-zstd").to_fields())
        if seq >= 2:  # the record of the frame two steps back: it lands after that frame's snapshot
            done = seq - 2
            x = block_x(done)
            car = {"class_id": 2, "class_name": "car", "score": 0.9, "box": [x, 200, x + BLOCK, 200 + BLOCK]}
            p.xadd(self.keys.detections_stream("mov-1"), record("mov-1", done, self.captures[done], [car]))
            p.xadd(self.keys.detections_stream("geo-1"), record("geo-1", done, self.captures[done], []))
        p.execute()
        self.seq += 1


# In the page: the pixel under the shown record's box centre, and under the box of the frames before
# and after it (what a tile drawing another frame's boxes would have drawn).
SAMPLE = """(id) => {
  const cam = cams.get(id), s = cam.shown;
  if (!s.record || !s.image || !s.frame) return null;
  const c = cam.canvas, g = frameGeometry(c, s.record.width, s.record.height), d = c.getContext('2d');
  const px = (x, y) => [...d.getImageData(Math.round(g.ox + x * g.k), Math.round(g.oy + y * g.k), 1, 1).data];
  const [x1, y1, x2, y2] = s.record.detections[0].box, cx = (x1 + x2) / 2, cy = (y1 + y2) / 2;
  return {frame: s.frame.seq, record: s.record.seq, centre: px(cx, cy),
          before: px(cx - STEP, cy), after: px(cx + STEP, cy)};
}""".replace("STEP", str(STEP_PX))


def blue(px: list[int]) -> bool:
    r, g, b = px[:3]
    return b > 180 and r < 80 and g < 80


def near(px: list[int], rgb: tuple[int, int, int], tol: int = 45) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(px[:3], rgb, strict=True))


def canvas_pixels(page, camera: str, points: list[tuple[float, float]]) -> list[list[int]]:
    """Pixels of a tile's canvas at frame points (x, y in pixels of the W x H frame)."""
    return page.evaluate("""([id, pts, fw, fh]) => {
      const c = document.querySelector(`.tile[data-camera="${id}"] canvas.frame`), d = c.getContext('2d');
      const k = Math.min(c.width / fw, c.height / fh), ox = (c.width - fw * k) / 2, oy = (c.height - fh * k) / 2;
      return pts.map(([x, y]) => [...d.getImageData(Math.round(ox + x * k), Math.round(oy + y * k), 1, 1).data]);
    }""", [camera, points, W, H])


def check_geometry(page) -> None:
    """The line at y = 0.3 H from x = 0.1 W to 0.9 W; the zone's top edge at y = 440/720 H, x from 320 to 600."""
    y = 0.3 * H
    on_line = [(t * W, y) for t in (0.2, 0.3, 0.7, 0.8)]
    off_line = [(t * W, y + 12) for t in (0.2, 0.8)] + [(0.05 * W, y)]
    zone_top = [(x, 440 / 720 * H) for x in (420, 560)]
    zone_side = [(600, yy) for yy in (260, 320)]
    px = canvas_pixels(page, "geo-1", on_line + off_line + zone_top + zone_side)
    assert all(near(p, LINE_RGB) for p in px[:4]), f"the line is not where the config puts it: {px[:4]}"
    assert not any(near(p, LINE_RGB) for p in px[4:7]), f"line colour off the line: {px[4:7]}"
    assert all(near(p, ZONE_RGB) for p in px[7:]), f"the zone is not where the config puts it: {px[7:]}"


def test_boxes_belong_to_the_snapshot_frame_and_lines_land_where_configured():
    r = connect()
    with isolated_prefix(r) as prefix:
        keys = Keys(prefix)
        footage = Footage(r, keys)
        day = Minute(int(time.time() // 60) * 60 - 120)
        day.crossings["car"] = 5
        day.lines = {"gate": {"in": {"car": 3}, "out": {"car": 2}}}
        pipe = r.pipeline()
        write_minutes(pipe, keys, "geo-1", [day], 7)
        pipe.execute()
        stop = threading.Event()

        def feed():
            while not stop.is_set():
                footage.step()
                time.sleep(0.1)  # deliberate: 10 fps

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        try:
            with api_server(prefix, stale_after_s=3.0) as base, playwright() as p:
                browser, page = open_page(p, base)
                wait_js(page, "document.querySelectorAll('.tile[data-state=online]').length === 2", timeout=15000)

                # Same frame: four different snapshots, each with its own frame's box over the block.
                frames: set[int] = set()
                deadline = time.monotonic() + 45
                while len(frames) < 4:
                    assert time.monotonic() < deadline, f"only frames {sorted(frames)} shown with their boxes in 45 s"
                    got = page.evaluate(SAMPLE, "mov-1")
                    if got is not None and got["frame"] not in frames:
                        assert got["record"] == got["frame"], f"the tile shows another frame's record: {got}"
                        assert blue(got["centre"]), f"frame {got['frame']}: no block under its box: {got}"
                        assert not blue(got["before"]) and not blue(got["after"]), \
                            f"the neighbouring frames' boxes would hit the block too; the check proves nothing: {got}"
                        frames.add(got["frame"])
                    page.wait_for_timeout(200)

                # Lines and zones where the config puts them; counts, codec in the corner.
                wait_js(page, "cams.get('geo-1').scene !== null && cams.get('geo-1').shown.image !== null",
                        timeout=15000)
                page.wait_for_timeout(300)
                check_geometry(page)
                corner = page.locator('.tile[data-camera="geo-1"] .corner').inner_text()
                assert "codec q8-zstd" in corner

                # The camera page: that tile alone, larger, the same geometry, and its day view.
                small = page.evaluate("document.querySelector('.tile[data-camera=\"geo-1\"] canvas.frame').width")
                page.click('.tile[data-camera="geo-1"] .cam-id a')
                wait_js(page, "document.body.classList.contains('single')", timeout=5000)
                assert page.locator('.tile[data-camera="mov-1"]').is_hidden()
                wait_js(page, "document.querySelector('#day-lines .line-row[data-line=gate]') !== null", timeout=10000)
                row = page.locator("#day-lines .line-row[data-line=gate]").inner_text()
                assert "in 3" in row and "out 2" in row
                big = page.evaluate("document.querySelector('.tile[data-camera=\"geo-1\"] canvas.frame').width")
                assert big > small * 1.5, f"the camera page's view is not larger ({small} -> {big} px)"
                page.wait_for_timeout(300)
                check_geometry(page)
                SCREENSHOT.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
                page.click("#back")
                wait_js(page, "!document.body.classList.contains('single')", timeout=5000)
                check_clean(page)
                browser.close()
        finally:
            stop.set()
            thread.join()
