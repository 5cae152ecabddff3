// meshscope dashboard: small helpers every other script uses (loaded first).
//
// Every string that comes from events or relays (region ids, cities, providers, topics, event and
// trace ids, relay names, statuses, errors, rule ids, schema URIs) is data, never markup. In the DOM
// it goes in through textContent (el(), cell()); in a few old HTML templates through esc(); on the
// map through plain(), because plotly reads its text, hovertext and names as HTML-like markup
// (<br>, <b>, <a href>, <span style>) and decodes entities: plain() escapes &, < and >, so the only
// markup plotly sees is what these files write around the values.
"use strict";

const $ = (id) => document.getElementById(id);
const key = (src, dst) => JSON.stringify([src, dst]);
const fmt = (v, digits = 1) => (v === null || v === undefined || v === "" || !Number.isFinite(Number(v)) ? "–" : Number(v).toFixed(digits));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// plotly decodes &amp; &lt; &gt; (and numeric entities) in text parts, but not &quot;: escape only these three
const plain = (s) => String(s ?? "–").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
// a lookup that data cannot steer into Object.prototype ("constructor", "__proto__")
const pick = (table, name, fallback) => (typeof name === "string" && Object.hasOwn(table, name) ? table[name] : fallback);
const num = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);
const list = (v) => (Array.isArray(v) ? v : []);
const nowS = () => Math.floor(Date.now() / 1000);

/** A DOM element with attributes and children; strings become text nodes, never markup. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A table row of text cells; a cell given as {text, class} gets a class too. */
function row(cells, attrs = {}) {
  return el("tr", attrs, cells.map((c) => (c instanceof Node ? el("td", {}, c)
    : c !== null && typeof c === "object" ? el("td", { class: c.class, title: c.title }, String(c.text ?? "–"))
      : el("td", {}, String(c ?? "–")))));
}

/** Replace a tbody's rows; an empty list shows `empty` across `span` columns. */
function fillRows(body, rows, span, empty) {
  body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: span, class: "muted" }, empty))]));
}

function signIn() {
  location.assign("/login");
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJSON(url, options) {
  const reply = await fetch(url, options);
  if (reply.status === 401) signIn();
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new HttpError(reply.status, body.error || `${reply.status} ${reply.statusText}`);
  return body;
}

// ---- time -----------------------------------------------------------------------------------

const pad = (n) => String(n).padStart(2, "0");
/** The Date of unix seconds, or null when they are no time (not a number, or past what a Date holds). */
function dateOf(s) {
  const d = new Date(Number(s) * 1000);
  return s === null || s === undefined || s === "" || Number.isNaN(d.getTime()) ? null : d;
}
/** Unix seconds of a time the API gives in microseconds (flow records, trace and search answers). */
const fromMicros = (us) => (Number.isFinite(Number(us)) && us !== null && us !== "" ? Number(us) / 1e6 : null);
/** Local "YYYY-MM-DD HH:MM" of unix seconds ("–" for what is no time, never "NaN"). */
function localStamp(s) {
  const d = dateOf(s);
  if (!d) return "–";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
/** The value a datetime-local input takes for unix seconds. */
const localInput = (s) => localStamp(s).replace(" ", "T");
/** Local "HH:MM:SS" of unix seconds ("–" for what is no time). */
const clock = (s) => {
  const d = dateOf(s);
  return d ? `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}` : "–";
};
function ago(s) {
  const d = Math.max(0, nowS() - num(s));
  if (d < 90) return `${Math.round(d)} s ago`;
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  return `${fmt(d / 3600, 1)} h ago`;
}
const WINDOW_S = { "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400 };

// ---- a sparkline (SVG built from numbers only) -------------------------------------------------

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  return node;
}

function sparkline(values, width = 90, height = 20, color = "#4285f4") {
  const ys = values.map(num);
  const top = Math.max(1, ...ys);
  const step = ys.length > 1 ? width / (ys.length - 1) : 0;
  const points = ys.map((y, i) => `${(i * step).toFixed(1)},${(height - 1 - (y / top) * (height - 2)).toFixed(1)}`).join(" ");
  const out = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
  out.setAttribute("aria-label", `backlog, last ${ys.length} samples, peak ${top}`);
  out.append(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": 1.5 }));
  return out;
}
