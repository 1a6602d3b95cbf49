// split-infer dashboard: one tile per camera, fed by the read API and its live feed (SSE).
// Plain JS, no build step, nothing loaded from outside this server.
"use strict";

const ROOT = new URL("../", location.href);            // the API root (page lives at /static/)
const api = (path) => new URL(path, ROOT).toString();
const HISTORY = 120;                                     // chart samples kept (one a second: 2 min)
const SNAPSHOT_EVERY_MS = 2000;
const CLASS_COLORS = {
  person: "#ff6b6b", bicycle: "#ffd93d", car: "#4aa3ff", motorcycle: "#c77dff",
  bus: "#2ecc71", truck: "#ff9f43",
};
const classColor = (name) => CLASS_COLORS[name] || "#b0bec5";

const cams = new Map();        // camera id -> tile model
let stateSeen = false;

// ----------------------------------------------------------------------------- formatting

function fmtBytes(bps) {
  if (bps == null) return "–";
  if (bps >= 1e6) return (bps / 1e6).toFixed(1) + " MB/s";
  return (bps / 1e3).toFixed(bps >= 1e4 ? 0 : 1) + " kB/s";
}
const fmtFps = (v) => (v == null ? "–" : v.toFixed(1));
const fmtMs = (s) => (s == null ? "–" : Math.round(s * 1000) + " ms");
function fmtAge(s) {
  if (s == null) return "never seen";
  if (s < 90) return `no frames for ${Math.round(s)} s`;
  if (s < 5400) return `no frames for ${Math.round(s / 60)} min`;
  return `no frames for ${(s / 3600).toFixed(1)} h`;
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// ----------------------------------------------------------------------------- tiles

function tileFor(id) {
  let cam = cams.get(id);
  if (cam) return cam;
  const node = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  node.dataset.camera = id;
  node.querySelector(".cam-id").textContent = id;
  cam = {
    id, node, state: null, record: null, counts: null, image: null, snapshotAt: 0,
    series: { fps: [], bw: [], lat: [] },
    canvas: node.querySelector(".frame"),
  };
  cams.set(id, cam);
  const grid = document.getElementById("grid");
  const after = [...grid.children].find((n) => n.dataset.camera.localeCompare(id, undefined, { numeric: true }) > 0);
  grid.insertBefore(node, after || null);
  document.getElementById("empty").hidden = true;
  return cam;
}

function applyState(cam, s) {
  cam.state = s;
  const n = cam.node;
  const wasOnline = n.dataset.state === "online";
  n.dataset.state = s.online ? "online" : "offline";
  if (wasOnline !== s.online) drawFrame(cam);
  n.querySelector(".badge").textContent = s.online ? "LIVE" : "OFFLINE";
  n.querySelector(".fps").textContent = fmtFps(s.fps);
  n.querySelector(".bw").textContent = fmtBytes(s.bytes_per_s);
  n.querySelector(".lat").textContent = s.online ? fmtMs(s.latency_s) : "–";
  n.querySelector(".offline-why").textContent = fmtAge(s.age_s);
  push(cam.series.fps, s.fps);
  push(cam.series.bw, s.bytes_per_s);
  push(cam.series.lat, s.online ? s.latency_s : null);
  drawCharts(cam);
  // The edge sends a thumbnail every few seconds; fetch it that often while the camera is live
  // (and once for a dead camera, to show its last picture).
  const now = Date.now();
  if (!cam.snapshotAt || (s.online && now - cam.snapshotAt >= SNAPSHOT_EVERY_MS)) {
    cam.snapshotAt = now;
    loadSnapshot(cam);
  }
}

function push(arr, v) {
  arr.push(v == null ? null : v);
  if (arr.length > HISTORY) arr.shift();
}

async function loadSnapshot(cam) {
  // fetch (not <img src>): it carries the API key. Swap only once decoded: no flicker.
  let r;
  try { r = await authFetch(`api/cameras/${encodeURIComponent(cam.id)}/snapshot.jpg`); } catch (_) { return; }
  if (!r.ok) return;
  const url = URL.createObjectURL(await r.blob());
  const img = new Image();
  img.onload = () => { cam.image = img; drawFrame(cam); URL.revokeObjectURL(url); };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
}

function drawFrame(cam) {
  const c = cam.canvas;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(c.clientWidth * dpr), h = Math.round(c.clientHeight * dpr);
  if (w && h && (c.width !== w || c.height !== h)) { c.width = w; c.height = h; }
  const g = c.getContext("2d");
  g.fillStyle = "#000";
  g.fillRect(0, 0, c.width, c.height);
  const rec = cam.record;
  // Frame geometry: the record's frame size, else the snapshot's, else 16:9.
  const fw = rec ? rec.width : cam.image ? cam.image.naturalWidth : 16;
  const fh = rec ? rec.height : cam.image ? cam.image.naturalHeight : 9;
  const k = Math.min(c.width / fw, c.height / fh);
  const ox = (c.width - fw * k) / 2, oy = (c.height - fh * k) / 2;
  if (cam.image) g.drawImage(cam.image, ox, oy, fw * k, fh * k);
  else {
    g.fillStyle = "#8a94a3";
    g.font = `${12 * dpr}px system-ui, sans-serif`;
    g.textAlign = "center";
    g.fillText("waiting for a snapshot…", c.width / 2, c.height / 2);
    g.textAlign = "start";
  }
  const inView = {};
  if (rec && (!cam.state || cam.state.online)) {  // a dead camera's last boxes are stale: not drawn
    g.lineWidth = Math.max(1.5, 2 * dpr * Math.min(1, k * 2));
    g.font = `600 ${10 * dpr}px system-ui, sans-serif`;
    for (const d of rec.detections) {
      const [x1, y1, x2, y2] = d.box;
      const col = classColor(d.class_name);
      const x = ox + x1 * k, y = oy + y1 * k, bw = (x2 - x1) * k, bh = (y2 - y1) * k;
      g.strokeStyle = col;
      g.strokeRect(x, y, bw, bh);
      const label = `${d.class_name} ${Math.round(d.score * 100)}%`;
      const tw = g.measureText(label).width + 6 * dpr, th = 13 * dpr;
      const ly = y - th < oy ? y : y - th;
      const lx = Math.max(ox, Math.min(x, ox + fw * k - tw));  // keep the label inside the picture
      g.fillStyle = col;
      g.fillRect(lx, ly, tw, th);
      g.fillStyle = "#0b0e12";
      g.fillText(label, lx + 3 * dpr, ly + th - 3 * dpr);
      inView[d.class_name] = (inView[d.class_name] || 0) + 1;
    }
  }
  const box = cam.node.querySelector(".in-view");
  box.replaceChildren(...Object.entries(inView).sort((a, b) => b[1] - a[1]).map(([name, n]) => {
    const chip = el("span", "chip", `${name} ${n}`);
    chip.style.setProperty("--c", classColor(name));
    chip.dataset.class = name;
    return chip;
  }));
}

function sum(obj) { return Object.values(obj || {}).reduce((a, b) => a + b, 0); }
function perClass(obj) {
  return Object.entries(obj || {}).filter(([, n]) => n).sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`).join(" · ");
}

function applyCounts(cam, c) {
  const before = cam.counts ? JSON.stringify(cam.counts.lines) : null;
  cam.counts = c;
  const lines = cam.node.querySelector(".lines");
  lines.replaceChildren(...c.lines.map((l) => {
    const row = el("div", "line-row");
    row.dataset.line = l.name;
    row.append(el("span", "line-name", l.name),
      el("span", "total in", `in ${sum(l.in)}`), el("span", "total out", `out ${sum(l.out)}`));
    const classes = {};
    for (const [k, n] of Object.entries(l.in)) classes[k] = (classes[k] || 0) + n;
    for (const [k, n] of Object.entries(l.out)) classes[k] = (classes[k] || 0) + n;
    row.append(el("span", "per-class", perClass(classes)));
    return row;
  }));
  const zones = cam.node.querySelector(".zones");
  zones.replaceChildren(...c.zones.map((z) => {
    const row = el("div", "zone-row");
    row.append(el("span", "zone-name", z.name), el("span", "total", `${sum(z.occupancy)} inside`),
      el("span", "per-class", perClass(z.occupancy)));
    return row;
  }));
  const cg = cam.node.querySelector(".congestion");
  cg.replaceChildren();
  if (c.updated_ts == null && !c.lines.length && !c.zones.length) {
    cg.textContent = "no counts yet (analytics has not processed this camera)";
    return;
  }
  const rate = sum(c.per_minute);
  if (c.congestion || rate) {
    cg.append("traffic ");
    if (c.congestion) cg.append(el("b", c.congestion, c.congestion), " · ");
    cg.append(`${rate.toFixed(0)} / min`);
  }
  if (before !== null && before !== JSON.stringify(c.lines)) flash(lines);
}

function flash(node) {
  node.classList.remove("flash");
  void node.offsetWidth;  // restart the animation
  node.classList.add("flash");
}

function applyEvent(cam, e) {
  const t = new Date(e.ts * 1000).toLocaleTimeString();
  const what = e.type === "line_cross" ? `crossed ${e.line}${e.direction ? " (" + e.direction + ")" : ""}`
    : e.type === "zone_enter" ? `entered ${e.zone}` : e.type === "zone_exit" ? `left ${e.zone}` : e.type;
  const who = [e.class_name, e.track_id != null ? "#" + e.track_id : null].filter(Boolean).join(" ");  // tracker id
  const box = cam.node.querySelector(".last-event");
  box.textContent = `${t} · ${who} ${what}`;
  flash(box);
}

// ----------------------------------------------------------------------------- charts

const SERIES_STYLE = {
  fps: { color: "#2ecc71", fmt: (v) => v.toFixed(1) },
  bw: { color: "#4aa3ff", fmt: (v) => fmtBytes(v) },
  lat: { color: "#f5a623", fmt: (v) => fmtMs(v) },
};

function drawCharts(cam) {
  for (const c of cam.node.querySelectorAll(".spark")) drawSpark(c, cam.series[c.dataset.series], SERIES_STYLE[c.dataset.series]);
}

function drawSpark(c, data, style) {
  const dpr = window.devicePixelRatio || 1;
  const w = Math.round(c.clientWidth * dpr) || c.width, h = Math.round(c.clientHeight * dpr) || c.height;
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const vals = data.filter((v) => v != null);
  const top = 14 * dpr, pad = 2 * dpr;
  const max = Math.max(1e-9, ...vals) * 1.15;
  // The time axis grows with the data until it spans HISTORY samples, so a fresh page has a chart.
  const span = Math.min(HISTORY, Math.max(30, data.length));
  const x = (i) => (i / (span - 1)) * w;
  const start = span - data.length;
  const y = (v) => h - pad - (v / max) * (h - top - pad);
  // Area and line; gaps (null: camera offline) break the line.
  g.lineWidth = 1.5 * dpr;
  g.strokeStyle = style.color;
  g.fillStyle = style.color + "33";
  let seg = [];
  const flush = () => {
    if (seg.length > 1) {
      g.beginPath();
      seg.forEach(([px, py], j) => (j ? g.lineTo(px, py) : g.moveTo(px, py)));
      g.stroke();
      g.lineTo(seg[seg.length - 1][0], h);
      g.lineTo(seg[0][0], h);
      g.closePath();
      g.fill();
    }
    seg = [];
  };
  data.forEach((v, i) => (v == null ? flush() : seg.push([x(start + i), y(v)])));
  flush();
  const last = data.length ? data[data.length - 1] : null;
  g.fillStyle = "#e6e9ee";
  g.font = `600 ${10 * dpr}px system-ui, sans-serif`;
  g.textAlign = "right";
  g.fillText(last == null ? "–" : style.fmt(last), w - 2 * dpr, 10 * dpr);
  g.textAlign = "start";
}

// ----------------------------------------------------------------------------- summary

function updateSummary() {
  const states = [...cams.values()].map((c) => c.state).filter(Boolean);
  const up = states.filter((s) => s.online);
  document.getElementById("online-count").textContent = `${up.length} / ${states.length} online`;
  document.getElementById("online-count").classList.toggle("feed-bad", up.length < states.length);
  document.getElementById("total-fps").textContent = `${up.reduce((a, s) => a + (s.fps || 0), 0).toFixed(1)} fps`;
  document.getElementById("total-bw").textContent = fmtBytes(up.reduce((a, s) => a + (s.bytes_per_s || 0), 0));
  document.getElementById("empty").hidden = !stateSeen || cams.size > 0;
}

function banner(text) {
  const b = document.getElementById("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

function feedStatus(cls, text) {
  const f = document.getElementById("feed");
  f.className = "pill " + cls;
  f.textContent = text;
}

// ----------------------------------------------------------------------------- data

// The API key, asked once and kept for this browser tab only (sessionStorage); sent as a bearer
// header. EventSource cannot send headers: it gets a short-lived ticket instead.
const KEY_ITEM = "split-infer-api-key";
let keyWaiters = null;

function askKey(message) {
  if (!keyWaiters) {
    keyWaiters = [];
    const form = document.getElementById("key-form");
    form.hidden = false;
    document.getElementById("key-why").textContent = message;
    const input = document.getElementById("key-input");
    input.value = "";
    input.focus();
    form.onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY_ITEM, input.value.trim());
      form.hidden = true;
      const waiting = keyWaiters;
      keyWaiters = null;
      for (const done of waiting) done();
    };
  }
  return new Promise((done) => keyWaiters.push(done));
}

async function authFetch(path, init = {}) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_ITEM);
    const headers = key ? { Authorization: `Bearer ${key}` } : {};
    const r = await fetch(api(path), { cache: "no-store", ...init, headers });
    if (r.status !== 401) return r;
    if (key) sessionStorage.removeItem(KEY_ITEM);
    await askKey(key ? "That API key was refused; enter a valid one." : "This API needs a key.");
  }
}

async function getJSON(path) {
  const r = await authFetch(path);
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    const e = new Error(detail);
    e.status = r.status;
    throw e;
  }
  return r.json();
}

function onStates(states) {
  stateSeen = true;
  for (const s of states) applyState(tileFor(s.id), s);
  updateSummary();
}

async function loadInitial() {
  // The live feed sends state and counts as soon as it opens; fetching them here as well
  // paints the page before that, and the latest boxes too.
  try {
    const list = await getJSON("api/cameras");
    onStates(list.cameras);
    const counts = await getJSON("api/counts");
    for (const c of counts.cameras) applyCounts(tileFor(c.camera), c);
    await Promise.all(list.cameras.map(async (s) => {
      try {
        const cam = tileFor(s.id);
        cam.record = await getJSON(`api/cameras/${encodeURIComponent(s.id)}/detections/latest`);
        drawFrame(cam);
      } catch (e) { if (e.status !== 404) throw e; }
    }));
    banner(null);
  } catch (e) {
    banner(`API: ${e.message}`);
  }
}

async function connect() {
  let ticket = "";
  try {
    const r = await authFetch("api/live/ticket", { method: "POST" });
    if (r.ok) ticket = (await r.json()).ticket;
  } catch (_) { /* the feed's own errors say more */ }
  const es = new EventSource(api("api/live" + (ticket ? `?ticket=${encodeURIComponent(ticket)}` : "")));
  es.onopen = () => { feedStatus("feed-ok", "● live"); banner(null); };
  es.onerror = () => {
    feedStatus("feed-bad", "reconnecting…");
    // EventSource retries by itself, unless the server refused it (an expired ticket, the
    // connection limit): then open a new one with a fresh ticket.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
  es.addEventListener("state", (m) => onStates(JSON.parse(m.data)));
  es.addEventListener("counts", (m) => { const c = JSON.parse(m.data); applyCounts(tileFor(c.camera), c); });
  es.addEventListener("detections", (m) => {
    const rec = JSON.parse(m.data);
    const cam = tileFor(rec.camera);
    cam.record = rec;
    if (!cam.pending) {  // at most one redraw per animation frame per tile
      cam.pending = true;
      requestAnimationFrame(() => { cam.pending = false; drawFrame(cam); });
    }
  });
  es.addEventListener("event", (m) => { const e = JSON.parse(m.data); applyEvent(tileFor(e.camera), e); });
  es.addEventListener("error", (m) => {
    if (m.data) banner(JSON.parse(m.data).detail);  // server-sent `error` event (Redis down)
  });
}

window.addEventListener("resize", () => { for (const cam of cams.values()) { drawFrame(cam); drawCharts(cam); } });
loadInitial().then(connect);
