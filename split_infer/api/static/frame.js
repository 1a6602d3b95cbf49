// split-infer dashboard: one camera's picture on a canvas: the snapshot, the boxes of that same
// frame, and the camera's configured lines (with direction arrows and counts) and zones.
"use strict";

// Where frame coordinates land on the canvas: the picture is letterboxed into it.
function frameGeometry(c, fw, fh) {
  const k = Math.min(c.width / fw, c.height / fh);
  return { k, fw, fh, ox: (c.width - fw * k) / 2, oy: (c.height - fh * k) / 2 };
}

// A line's or zone's point on the canvas, as analytics places it on the frame
// (split_infer/analytics/scene_config.py `resolve`): normalised 0-1, pixels of `frame_size`, or pixels.
function shapePoint(p, units, scene, g) {
  let x = p[0], y = p[1];
  if (units === "normalized") { x *= g.fw; y *= g.fh; }
  else if (scene.frame_size) { x *= g.fw / scene.frame_size[0]; y *= g.fh / scene.frame_size[1]; }
  return [g.ox + x * g.k, g.oy + y * g.k];
}

function arrow(g2, from, to, color, dpr) {
  const [x1, y1] = from, [x2, y2] = to;
  const a = Math.atan2(y2 - y1, x2 - x1), h = 7 * dpr;
  g2.strokeStyle = g2.fillStyle = color;
  g2.lineWidth = 2 * dpr;
  g2.beginPath(); g2.moveTo(x1, y1); g2.lineTo(x2, y2); g2.stroke();
  g2.beginPath();
  g2.moveTo(x2, y2);
  g2.lineTo(x2 - h * Math.cos(a - 0.45), y2 - h * Math.sin(a - 0.45));
  g2.lineTo(x2 - h * Math.cos(a + 0.45), y2 - h * Math.sin(a + 0.45));
  g2.closePath(); g2.fill();
}

function label(g2, text, x, y, color, dpr) {
  g2.font = `600 ${10 * dpr}px system-ui, sans-serif`;
  const w = g2.measureText(text).width + 6 * dpr, h = 13 * dpr;
  g2.fillStyle = "rgba(0,0,0,.7)";
  g2.fillRect(x - w / 2, y - h / 2, w, h);
  g2.fillStyle = color;
  g2.textAlign = "center";
  g2.fillText(text, x, y + 3.5 * dpr);
  g2.textAlign = "start";
}

function drawScene(g2, scene, counts, g, dpr) {
  for (const z of scene.zones) {
    const pts = z.polygon.map((p) => shapePoint(p, z.units, scene, g));
    g2.beginPath();
    pts.forEach(([x, y], i) => (i ? g2.lineTo(x, y) : g2.moveTo(x, y)));
    g2.closePath();
    g2.fillStyle = ZONE_COLOR + "26";
    g2.fill();
    g2.strokeStyle = ZONE_COLOR;
    g2.lineWidth = 3 * dpr;
    g2.stroke();
    const zc = counts && counts.zones.find((c) => c.name === z.name);
    label(g2, zc ? `${z.name}: ${sum(zc.occupancy)}` : z.name, pts[0][0], pts[0][1], ZONE_COLOR, dpr);
  }
  for (const l of scene.lines) {
    const a = shapePoint(l.a, l.units, scene, g), b = shapePoint(l.b, l.units, scene, g);
    g2.strokeStyle = LINE_COLOR;
    g2.lineWidth = 3 * dpr;
    g2.beginPath(); g2.moveTo(...a); g2.lineTo(...b); g2.stroke();
    // 'in' is the left of a -> b on screen (y down): the normal (dy, -dx).
    const dx = b[0] - a[0], dy = b[1] - a[1], len = Math.hypot(dx, dy) || 1;
    const nx = dy / len, ny = -dx / len, m = [(a[0] + b[0]) / 2, (a[1] + b[1]) / 2], L = 22 * dpr;
    const lc = counts && counts.lines.find((c) => c.name === l.name);
    arrow(g2, m, [m[0] + nx * L, m[1] + ny * L], "#2ecc71", dpr);
    arrow(g2, m, [m[0] - nx * L, m[1] - ny * L], "#4aa3ff", dpr);
    label(g2, `in ${lc ? sum(lc.in) : 0}`, m[0] + nx * (L + 10 * dpr), m[1] + ny * (L + 10 * dpr), "#2ecc71", dpr);
    label(g2, `out ${lc ? sum(lc.out) : 0}`, m[0] - nx * (L + 10 * dpr), m[1] - ny * (L + 10 * dpr), "#4aa3ff", dpr);
    label(g2, l.name, a[0], a[1], LINE_COLOR, dpr);
  }
}

// view: {image, record (of the image's frame, or null), frameSize [w, h] (original frame), scene,
// counts, showBoxes}. Returns the classes in view, counted.
function drawFrame(c, view) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(c.clientWidth * dpr), h = Math.round(c.clientHeight * dpr);
  if (w && h && (c.width !== w || c.height !== h)) { c.width = w; c.height = h; }
  const g2 = c.getContext("2d");
  g2.fillStyle = "#000";
  g2.fillRect(0, 0, c.width, c.height);
  const rec = view.record, img = view.image;
  // Frame geometry: the record's frame size, else the camera's, else the snapshot's, else 16:9.
  const size = rec ? [rec.width, rec.height] : view.frameSize || (img ? [img.naturalWidth, img.naturalHeight] : [16, 9]);
  const g = frameGeometry(c, size[0], size[1]);
  if (img) g2.drawImage(img, g.ox, g.oy, g.fw * g.k, g.fh * g.k);
  else {
    g2.fillStyle = "#8a94a3";
    g2.font = `${12 * dpr}px system-ui, sans-serif`;
    g2.textAlign = "center";
    g2.fillText("waiting for a snapshot…", c.width / 2, c.height / 2);
    g2.textAlign = "start";
  }
  if (view.scene) drawScene(g2, view.scene, view.counts, g, dpr);
  const inView = {};
  if (rec && view.showBoxes) {
    g2.lineWidth = Math.max(1.5, 2 * dpr * Math.min(1, g.k * 2));
    g2.font = `600 ${10 * dpr}px system-ui, sans-serif`;
    for (const d of rec.detections) {
      const [x1, y1, x2, y2] = d.box;
      const col = classColor(d.class_name);
      const x = g.ox + x1 * g.k, y = g.oy + y1 * g.k, bw = (x2 - x1) * g.k, bh = (y2 - y1) * g.k;
      g2.strokeStyle = col;
      g2.strokeRect(x, y, bw, bh);
      const text = `${d.class_name} ${Math.round(d.score * 100)}%`;
      const tw = g2.measureText(text).width + 6 * dpr, th = 13 * dpr;
      const ly = y - th < g.oy ? y : y - th;
      const lx = Math.max(g.ox, Math.min(x, g.ox + g.fw * g.k - tw));  // keep the label inside the picture
      g2.fillStyle = col;
      g2.fillRect(lx, ly, tw, th);
      g2.fillStyle = "#0b0e12";
      g2.fillText(text, lx + 3 * dpr, ly + th - 3 * dpr);
      inView[d.class_name] = (inView[d.class_name] || 0) + 1;
    }
  }
  return inView;
}
