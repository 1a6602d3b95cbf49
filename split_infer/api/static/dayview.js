// split-infer dashboard: the day view of one camera (on its page, `#camera=<id>`): the counts of a
// chosen local day from the per-minute history (GET api/v1/cameras/<id>/history), in 15-minute bars,
// and the day's totals per line and direction.
"use strict";

const BIN_MIN = 15;
let dayCamera = null;

function localDayStart(value) {
  // "YYYY-MM-DD" (the date input's value) -> unix seconds of that local midnight.
  const [y, m, d] = value.split("-").map(Number);
  return new Date(y, m - 1, d).getTime() / 1000;
}

function todayValue() {
  const t = new Date();
  return `${t.getFullYear()}-${String(t.getMonth() + 1).padStart(2, "0")}-${String(t.getDate()).padStart(2, "0")}`;
}

function showDayView(camera) {
  const box = document.getElementById("dayview");
  box.hidden = camera == null;
  if (camera == null) { dayCamera = null; return; }
  const input = document.getElementById("day-input");
  if (!input.value) input.value = todayValue();
  input.onchange = () => loadDay(camera);
  if (dayCamera !== camera) { dayCamera = camera; loadDay(camera); }
}

async function loadDay(camera) {
  const start = localDayStart(document.getElementById("day-input").value || todayValue());
  const end = start + 86400 - 1;
  const status = document.getElementById("day-status");
  status.textContent = "loading…";
  let h;
  try {
    h = await getJSON(`api/v1/cameras/${encodeURIComponent(camera)}/history?start=${start}&end=${end}`);
  } catch (e) {
    status.textContent = `history: ${e.message}`;
    return;
  }
  if (camera !== dayCamera) return;
  const bins = new Array((24 * 60) / BIN_MIN).fill(0);
  const lines = {};
  let basis = "crossings";
  if (!h.minutes.some((m) => sum(m.crossings))) basis = "tracks";  // a camera without lines: new objects
  for (const m of h.minutes) {
    const i = Math.floor((m.minute - start) / 60 / BIN_MIN);
    if (i >= 0 && i < bins.length) bins[i] += sum(m[basis]);
    for (const [name, dirs] of Object.entries(m.lines)) {
      const l = (lines[name] = lines[name] || { in: {}, out: {} });
      for (const d of ["in", "out"]) for (const [c, n] of Object.entries(dirs[d] || {})) l[d][c] = (l[d][c] || 0) + n;
    }
  }
  const total = bins.reduce((a, b) => a + b, 0);
  status.textContent = `${total} ${basis === "crossings" ? "line crossings" : "objects"} on this day` +
    (h.skipped ? ` (${h.skipped} unreadable minutes)` : "");
  drawDay(document.getElementById("day-chart"), bins);
  const table = document.getElementById("day-lines");
  table.replaceChildren(...Object.entries(lines).sort().map(([name, l]) => {
    const row = el("div", "line-row");
    row.dataset.line = name;
    row.append(el("span", "line-name", name), el("span", "total in", `in ${sum(l.in)}`),
      el("span", "total out", `out ${sum(l.out)}`), el("span", "per-class", `in: ${perClass(l.in) || "–"}`),
      el("span", "per-class", `out: ${perClass(l.out) || "–"}`));
    return row;
  }));
}

function drawDay(c, bins) {
  const dpr = window.devicePixelRatio || 1;
  c.width = Math.round(c.clientWidth * dpr) || c.width;
  c.height = Math.round(c.clientHeight * dpr) || c.height;
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const axis = 14 * dpr, top = 12 * dpr, max = Math.max(1, ...bins);
  const bw = c.width / bins.length;
  g.fillStyle = "#4aa3ff";
  bins.forEach((v, i) => {
    const bh = (v / max) * (c.height - axis - top);
    g.fillRect(i * bw + 1, c.height - axis - bh, Math.max(1, bw - 2), bh);
  });
  g.fillStyle = "#8a94a3";
  g.font = `${10 * dpr}px system-ui, sans-serif`;
  for (let hour = 0; hour <= 24; hour += 3) {
    const x = Math.min(c.width - 14 * dpr, (hour * 60 / BIN_MIN) * bw);
    g.fillText(`${hour}h`, x, c.height - 2 * dpr);
  }
  g.textAlign = "right";
  g.fillText(`${max} / ${BIN_MIN} min`, c.width - 2 * dpr, 10 * dpr);
  g.textAlign = "start";
}

// The day goes on: refresh the open day view every minute (the history has per-minute buckets).
setInterval(() => { if (dayCamera != null && !document.hidden) loadDay(dayCamera); }, 60000);
