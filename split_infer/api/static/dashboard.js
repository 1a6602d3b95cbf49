// split-infer dashboard: one tile per camera, fed by the read API and its live feed (SSE).
// `#camera=<id>` shows one camera alone, larger, with its day view (dayview.js).
// Each tile shows a snapshot with the boxes of that same frame: the snapshot's X-Frame-* headers
// name its frame (session, seq), and the tile looks up exactly that record, or draws no boxes.
"use strict";

const HISTORY = 120;                 // chart samples kept (one a second: 2 min)
const SNAPSHOT_EVERY_MS = 5000;      // a live tile asks for a snapshot this often (else on `snapshot` events)
const RECORD_WAIT_MS = 1500;         // a new snapshot waits this long for its frame's record...
const RECORD_POLL_MS = 300;          // ...asking this often, then shows without boxes
const RECORDS_KEPT = 300;            // recent records per camera from the live feed (by session:seq)
const SCENE_EVERY_MS = 30000;

const cams = new Map();        // camera id -> tile model
let stateSeen = false;
let lastEventId = "";          // of the live feed: a new EventSource resumes after it

// ----------------------------------------------------------------------------- tiles

function tileFor(id) {
  let cam = cams.get(id);
  if (cam) return cam;
  const node = document.getElementById("tile-template").content.firstElementChild.cloneNode(true);
  node.dataset.camera = id;
  const link = node.querySelector(".cam-id a");
  link.textContent = id;
  link.href = `#camera=${encodeURIComponent(id)}`;
  cam = {
    id, node, state: null, counts: null, scene: null, sceneAt: 0, snapshotAt: 0, loading: false,
    shown: { image: null, frame: null, record: null },   // what the tile shows: one frame
    records: new Map(), frameSize: null, modelVersion: null,
    series: { fps: [], bw: [], lat: [] },
    canvas: node.querySelector(".frame"),
  };
  cams.set(id, cam);
  const grid = document.getElementById("grid");
  const after = [...grid.children].find((n) => n.dataset.camera.localeCompare(id, undefined, { numeric: true }) > 0);
  grid.insertBefore(node, after || null);
  document.getElementById("empty").hidden = true;
  applyRoute();
  return cam;
}

function applyState(cam, s) {
  cam.state = s;
  if (s.model_version) cam.modelVersion = s.model_version;  // of the camera's latest record
  const n = cam.node;
  const wasOnline = n.dataset.state === "online";
  n.dataset.state = s.online ? "online" : "offline";
  if (wasOnline !== s.online) redraw(cam);
  n.querySelector(".badge").textContent = s.online ? "LIVE" : "OFFLINE";
  n.querySelector(".fps").textContent = fmtFps(s.fps);
  n.querySelector(".bw").textContent = fmtBytes(s.bytes_per_s);
  n.querySelector(".lat").textContent = s.online ? fmtMs(s.latency_s) : "–";
  n.querySelector(".offline-why").textContent = fmtAge(s.age_s);
  push(cam.series.fps, s.fps);
  push(cam.series.bw, s.bytes_per_s);
  push(cam.series.lat, s.online ? s.latency_s : null);
  drawCharts(cam);
  const now = Date.now();
  // A fresh snapshot while the camera is live (and once for a dead camera: its last picture).
  if ((!cam.snapshotAt || (s.online && now - cam.snapshotAt >= SNAPSHOT_EVERY_MS))) {
    cam.snapshotAt = now;
    loadSnapshot(cam);
  }
  if (now - cam.sceneAt >= SCENE_EVERY_MS) { cam.sceneAt = now; loadScene(cam); }
}

function push(arr, v) {
  arr.push(v == null ? null : v);
  if (arr.length > HISTORY) arr.shift();
}

const frameKey = (session, seq) => `${session}:${seq}`;

function remember(cam, rec) {
  cam.records.set(frameKey(rec.session, rec.seq), rec);
  if (cam.records.size > RECORDS_KEPT) cam.records.delete(cam.records.keys().next().value);
  cam.frameSize = [rec.width, rec.height];
  if (rec.model_version) cam.modelVersion = rec.model_version;
  const shown = cam.shown;  // the record of the frame on screen came after it: draw its boxes now
  if (shown.frame && !shown.record && frameKey(shown.frame.session, shown.frame.seq) === frameKey(rec.session, rec.seq)) {
    shown.record = rec;
    redraw(cam);
  }
}

async function recordOf(cam, frame) {
  // The frame's record from the live feed, else from the API; null when it is not there in time.
  const deadline = Date.now() + RECORD_WAIT_MS;
  for (let round = 0; ; round++) {
    const known = cam.records.get(frameKey(frame.session, frame.seq));
    if (known) return known;
    if (round === 0) { await sleep(RECORD_POLL_MS); continue; }  // it is usually on its way in the feed
    try {
      const q = `session=${encodeURIComponent(frame.session)}&seq=${frame.seq}`;
      const rec = await getJSON(`api/v1/cameras/${encodeURIComponent(cam.id)}/detections/frame?${q}`);
      remember(cam, rec);
      return rec;
    } catch (e) { if (e.status !== 404) return null; }
    if (Date.now() >= deadline) return null;
    await sleep(RECORD_POLL_MS);
  }
}

async function loadSnapshot(cam) {
  // fetch (not <img src>): it carries the API key, and the headers naming the frame.
  if (cam.loading) { cam.again = true; return; }  // one at a time; then once more for the newest
  cam.loading = true;
  try {
    const r = await authFetch(`api/v1/cameras/${encodeURIComponent(cam.id)}/snapshot.jpg`);
    if (!r.ok) return;
    const h = r.headers;
    const frame = h.get("X-Frame-Seq") == null ? null
      : { session: h.get("X-Frame-Session") || "", seq: Number(h.get("X-Frame-Seq")),
          captureTs: Number(h.get("X-Frame-Capture-Ts")), codec: h.get("X-Frame-Codec") || "" };
    const old = cam.shown.frame;
    if (frame && old && frameKey(frame.session, frame.seq) === frameKey(old.session, old.seq)) return;  // same frame
    const blob = await r.blob();
    const [image, record] = await Promise.all([decode(blob), frame ? recordOf(cam, frame) : null]);
    if (!image) return;
    cam.shown = { image, frame, record };   // picture and boxes change together
    cam.node.dataset.frame = frame ? frameKey(frame.session, frame.seq) : "";
    redraw(cam);
  } catch (_) { /* the feed's state says more; the next poll tries again */ } finally {
    cam.loading = false;
    if (cam.again) { cam.again = false; loadSnapshot(cam); }
  }
}

function decode(blob) {
  const url = URL.createObjectURL(blob);
  return new Promise((done) => {
    const img = new Image();
    img.onload = () => { URL.revokeObjectURL(url); done(img); };
    img.onerror = () => { URL.revokeObjectURL(url); done(null); };
    img.src = url;
  });
}

async function loadScene(cam) {
  try { cam.scene = await getJSON(`api/v1/cameras/${encodeURIComponent(cam.id)}/scene`); } catch (e) {
    if (e.status === 404) cam.scene = null;  // analytics has not published lines or zones for it
    return;
  } finally { redraw(cam); }
}

function redraw(cam) {
  const s = cam.shown;
  // A dead camera's last boxes are not drawn (its picture stays, greyed).
  const showBoxes = !cam.state || cam.state.online;
  const inView = drawFrame(cam.canvas, { image: s.image, record: s.record, frameSize: cam.frameSize,
    scene: cam.scene, counts: cam.counts, showBoxes });
  const box = cam.node.querySelector(".in-view");
  box.replaceChildren(...Object.entries(inView).sort((a, b) => b[1] - a[1]).map(([name, n]) => {
    const chip = el("span", "chip", `${name} ${n}`);
    chip.style.setProperty("--c", classColor(name));
    chip.dataset.class = name;
    return chip;
  }));
  const corner = [cam.modelVersion, s.frame && s.frame.codec ? `codec ${s.frame.codec}` : null].filter(Boolean);
  cam.node.querySelector(".corner").textContent = corner.join(" · ");
  cam.node.querySelector(".corner").hidden = !corner.length;
  const model = cam.node.querySelector(".model");  // the header's model_version (index.html), if it has one
  if (model) model.textContent = cam.modelVersion || "–";
  if (s.image && s.frame && !s.record) box.append(el("span", "chip pending", "no boxes: record not in yet"));
}

function applyCounts(cam, c) {
  const before = cam.counts ? JSON.stringify(cam.counts.lines) : null;
  cam.counts = c;
  const lines = cam.node.querySelector(".lines");
  lines.replaceChildren(...c.lines.map((l) => {
    const row = el("div", "line-row");
    row.dataset.line = l.name;
    row.append(el("span", "line-name", l.name), el("span", "total in", `in ${sum(l.in)}`),
      el("span", "total out", `out ${sum(l.out)}`));
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
  } else {
    const rate = sum(c.per_minute);
    if (c.congestion || rate) {
      cg.append("traffic ");
      if (c.congestion) cg.append(el("b", c.congestion, c.congestion), " · ");
      cg.append(`${rate.toFixed(0)} / min`);
    }
  }
  if (before !== null && before !== JSON.stringify(c.lines)) { flash(lines); redraw(cam); }
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
  const who = [e.class_name, e.track_id != null ? "#" + e.track_id : null].filter(Boolean).join(" ");
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
  g.lineWidth = 1.5 * dpr;  // area and line; gaps (null: camera offline) break the line
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

// ----------------------------------------------------------------------------- page

function updateSummary() {
  const states = [...cams.values()].map((c) => c.state).filter(Boolean);
  const up = states.filter((s) => s.online);
  document.getElementById("online-count").textContent = `${up.length} / ${states.length} online`;
  document.getElementById("online-count").classList.toggle("feed-bad", up.length < states.length);
  document.getElementById("total-fps").textContent = `${up.reduce((a, s) => a + (s.fps || 0), 0).toFixed(1)} fps`;
  document.getElementById("total-bw").textContent = fmtBytes(up.reduce((a, s) => a + (s.bytes_per_s || 0), 0));
  document.getElementById("empty").hidden = !stateSeen || cams.size > 0;
}

function feedStatus(cls, text) {
  const f = document.getElementById("feed");
  f.className = "pill " + cls;
  f.textContent = text;
}

// `#camera=<id>`: that camera alone, larger, with its day view; no hash: every camera.
function applyRoute() {
  const m = /^#camera=(.+)$/.exec(location.hash);
  const only = m ? decodeURIComponent(m[1]) : null;
  document.body.classList.toggle("single", only != null);
  for (const cam of cams.values()) cam.node.hidden = only != null && cam.id !== only;
  document.getElementById("back").hidden = only == null;
  showDayView(only);
  for (const cam of cams.values()) if (!cam.node.hidden) { redraw(cam); drawCharts(cam); }
}

function onStates(states) {
  stateSeen = true;
  for (const s of states) applyState(tileFor(s.id), s);
  updateSummary();
}

async function loadInitial() {
  // The live feed sends state and counts as soon as it opens; fetching them here paints the page first.
  try {
    const list = await getJSON("api/v1/cameras");
    onStates(list.cameras);
    const counts = await getJSON("api/v1/counts");
    for (const c of counts.cameras) applyCounts(tileFor(c.camera), c);
    banner(null);
  } catch (e) {
    banner(`API: ${e.message}`);
  }
}

async function connect() {
  let ticket = "";
  try {
    const r = await authFetch("api/v1/live/ticket", { method: "POST" });
    if (r.ok) ticket = (await r.json()).ticket;
  } catch (_) { /* the feed's own errors say more */ }
  // EventSource resends Last-Event-ID by itself when it reconnects; a new one is told with ?last_event_id=.
  const q = new URLSearchParams();
  if (ticket) q.set("ticket", ticket);
  if (lastEventId) q.set("last_event_id", lastEventId);
  const es = new EventSource(api("api/v1/live" + (q.toString() ? `?${q}` : "")));
  es.onopen = () => { feedStatus("feed-ok", "● live"); banner(null); };
  es.onerror = () => {
    feedStatus("feed-bad", "reconnecting…");
    // EventSource retries by itself, unless the server refused it (an expired ticket, the
    // connection limit): then open a new one with a fresh ticket.
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
  const seen = (m) => { if (m.lastEventId) lastEventId = m.lastEventId; };
  es.addEventListener("state", (m) => onStates(JSON.parse(m.data)));
  es.addEventListener("counts", (m) => { const c = JSON.parse(m.data); applyCounts(tileFor(c.camera), c); });
  es.addEventListener("snapshot", (m) => {  // a new snapshot: fetch it, unless it is on screen already
    const f = JSON.parse(m.data), cam = tileFor(f.camera), old = cam.shown.frame;
    if (!old || frameKey(old.session, old.seq) !== frameKey(f.session, f.seq)) {
      cam.snapshotAt = Date.now();
      loadSnapshot(cam);
    }
  });
  es.addEventListener("detections", (m) => { seen(m); const rec = JSON.parse(m.data); remember(tileFor(rec.camera), rec); });
  es.addEventListener("event", (m) => { seen(m); const e = JSON.parse(m.data); applyEvent(tileFor(e.camera), e); });
  es.addEventListener("error", (m) => {
    if (m.data) banner(JSON.parse(m.data).detail);  // server-sent `error` event (Redis down)
  });
}

window.addEventListener("resize", () => { for (const cam of cams.values()) { redraw(cam); drawCharts(cam); } });
window.addEventListener("hashchange", applyRoute);
loadInitial().then(() => { applyRoute(); connect(); });
