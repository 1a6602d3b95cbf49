// split-infer dashboard: what every part of the page shares (API access, formatting, colours).
// Plain JS, no build step, nothing loaded from outside this server.
"use strict";

const ROOT = new URL("../", location.href);            // the API root (page lives at /static/)
const api = (path) => new URL(path, ROOT).toString();
const CLASS_COLORS = {
  person: "#ff6b6b", bicycle: "#ffd93d", car: "#4aa3ff", motorcycle: "#c77dff",
  bus: "#2ecc71", truck: "#ff9f43",
};
const classColor = (name) => CLASS_COLORS[name] || "#b0bec5";
const LINE_COLOR = "#00e5ff";   // counting lines (not a class colour: the screenshot test looks for it)
const ZONE_COLOR = "#ff3df2";   // zone borders

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
function sum(obj) { return Object.values(obj || {}).reduce((a, b) => a + b, 0); }
function perClass(obj) {
  return Object.entries(obj || {}).filter(([, n]) => n).sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`).join(" · ");
}
function banner(text) {
  const b = document.getElementById("banner");
  b.hidden = !text;
  b.textContent = text || "";
}

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

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
