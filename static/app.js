// meshscope dashboard: the world map, live edges, drill-down and SQL.
// Everything is fetched from this origin; plotly and the world topojson are served locally.
//
// Every string that comes from events or relays (region ids, cities, providers, topics, event and
// trace ids, relay names, statuses, errors) is data, never markup. In tables it goes through esc();
// on the map through plain(), because plotly reads its text, hovertext and names as HTML-like
// markup (<br>, <b>, <a href>, <span style>) and decodes entities: plain() escapes &, < and >, so
// the only markup plotly sees is what this file writes around the values.
"use strict";

const PROVIDER_COLORS = { aws: "#ff9900", gcp: "#4285f4", azure: "#00a2ed", onprem: "#9aa0a6" };
const HEALTH_COLORS = { green: "#2ecc71", amber: "#f5a623", red: "#e74c3c", idle: "#5f6b7a" };
const LIVE_SECONDS = 5;

const state = {
  window: "5m",
  topology: { regions: [], edges: [], links: [] },
  live: new Map(), // "src|dst" -> Map(ts -> {count, delivered, errors, e2e_p99, hop_p99})
  samples: [], // newest last
  messages: 0,
  selected: null, // {src, dst}
  mapReady: false,
};

const $ = (id) => document.getElementById(id);
const key = (src, dst) => JSON.stringify([src, dst]);
const fmt = (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// plotly decodes &amp; &lt; &gt; (and numeric entities) in text parts, but not &quot;: escape only these three
const plain = (s) => String(s ?? "–").replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
// a lookup that data cannot steer into Object.prototype ("constructor", "__proto__")
const pick = (table, name, fallback) => (typeof name === "string" && Object.hasOwn(table, name) ? table[name] : fallback);
const num = (v) => (Number.isFinite(Number(v)) ? Number(v) : 0);

function signIn() {
  location.assign("/login");
}

async function getJSON(url, options) {
  const reply = await fetch(url, options);
  if (reply.status === 401) signIn();
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(body.error || `${reply.status} ${reply.statusText}`);
  return body;
}

async function loadSession() {
  try {
    const me = await getJSON("/api/session");
    $("who-name").textContent = me.principal;
    $("sign-out").hidden = me.via !== "session";
    $("who").hidden = false;
    $("sql-toggle").hidden = !me.roles.includes("sql");
  } catch (err) {
    console.warn("session", err);
  }
}

// ---- geometry: great circles, bent a little so the two directions of a pair part ---------

function toVec(lat, lon) {
  const p = (lat * Math.PI) / 180, l = (lon * Math.PI) / 180;
  return [Math.cos(p) * Math.cos(l), Math.cos(p) * Math.sin(l), Math.sin(p)];
}
function toLatLon(v) {
  const n = Math.hypot(v[0], v[1], v[2]);
  return [(Math.asin(v[2] / n) * 180) / Math.PI, (Math.atan2(v[1], v[0]) * 180) / Math.PI];
}
function arc(a, b, steps = 40, bend = 0.025) {
  const va = toVec(a.lat, a.lon), vb = toVec(b.lat, b.lon);
  const dot = Math.min(1, Math.max(-1, va[0] * vb[0] + va[1] * vb[1] + va[2] * vb[2]));
  const omega = Math.acos(dot) || 1e-9;
  const normal = [va[1] * vb[2] - va[2] * vb[1], va[2] * vb[0] - va[0] * vb[2], va[0] * vb[1] - va[1] * vb[0]];
  const nn = Math.hypot(...normal) || 1;
  const lats = [], lons = [];
  for (let i = 0; i <= steps; i++) {
    const t = i / steps;
    const s1 = Math.sin((1 - t) * omega) / Math.sin(omega), s2 = Math.sin(t * omega) / Math.sin(omega);
    const lift = bend * Math.sin(Math.PI * t);
    const v = [0, 1, 2].map((k) => s1 * va[k] + s2 * vb[k] + (lift * normal[k]) / nn);
    const [lat, lon] = toLatLon(v);
    lats.push(lat);
    lons.push(lon);
  }
  return { lats, lons };
}
function bearing(lat1, lon1, lat2, lon2) {
  const r = Math.PI / 180;
  const y = Math.sin((lon2 - lon1) * r) * Math.cos(lat2 * r);
  const x = Math.cos(lat1 * r) * Math.sin(lat2 * r) - Math.sin(lat1 * r) * Math.cos(lat2 * r) * Math.cos((lon2 - lon1) * r);
  return ((Math.atan2(y, x) / r) + 360) % 360;
}

// ---- live statistics ---------------------------------------------------------------------

function takeLive(message) {
  state.messages += 1;
  const ts = message.ts;
  if (typeof ts !== "number") return;
  for (const e of message.edges || []) {
    if (e.src === e.dst) continue;
    const k = key(e.src, e.dst);
    if (!state.live.has(k)) state.live.set(k, new Map());
    const perSecond = state.live.get(k);
    const cur = perSecond.get(ts) || { count: 0, delivered: 0, errors: 0, e2e_p99: null, hop_p99: null };
    cur.count += num(e.count);
    cur.delivered += num(e.delivered);
    cur.errors += num(e.errors);
    if (e.e2e_p99 !== null) cur.e2e_p99 = Math.max(cur.e2e_p99 || 0, num(e.e2e_p99));
    if (e.hop_p99 !== null) cur.hop_p99 = Math.max(cur.hop_p99 || 0, num(e.hop_p99));
    perSecond.set(ts, cur);
  }
  for (const s of message.samples || []) state.samples.push(s);
  if (state.samples.length > 500) state.samples.splice(0, state.samples.length - 500);
}

function liveStats(src, dst) {
  const perSecond = state.live.get(key(src, dst));
  if (!perSecond) return null;
  const now = Math.floor(Date.now() / 1000);
  let count = 0, errors = 0, p99 = null;
  for (const [ts, v] of perSecond) {
    if (ts < now - 60) { perSecond.delete(ts); continue; }
    if (ts <= now - LIVE_SECONDS - 1) continue;
    count += v.count;
    errors += v.errors;
    if (v.e2e_p99 !== null) p99 = Math.max(p99 || 0, v.e2e_p99);
  }
  return { rate: count / LIVE_SECONDS, errors, errorPct: count ? (100 * errors) / count : errors ? 100 : 0, p99 };
}

function connectLive() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/live`);
  const status = $("live-status");
  ws.onopen = () => { status.className = "live-status on"; };
  ws.onmessage = (ev) => {
    takeLive(JSON.parse(ev.data));
    $("live-text").textContent = `live · ${state.messages} updates`;
  };
  ws.onclose = async () => {
    status.className = "live-status off";
    $("live-text").textContent = "live feed lost, reconnecting…";
    // a refused upgrade shows no status to scripts: ask the API whether the session ended
    const reply = await fetch("/api/session").catch(() => null);
    if (reply && reply.status === 401) return signIn();
    setTimeout(connectLive, 1000);
  };
}

// ---- the map -----------------------------------------------------------------------------

function regionIndex() {
  const out = new Map();
  for (const r of state.topology.regions) if (r.lat !== null && r.lon !== null) out.set(r.id, r);
  return out;
}

function buildTraces() {
  const regions = regionIndex();
  const traces = [];
  const linkState = new Map(state.topology.links.map((l) => [key(l.src, l.dst), l]));
  // mesh links: faint when up, dashed red when down
  for (const l of state.topology.links) {
    const a = regions.get(l.src), b = regions.get(l.dst);
    if (!a || !b) continue;
    const down = l.state !== "up";
    const g = arc(a, b);
    traces.push({
      type: "scattergeo", mode: "lines", lat: g.lats, lon: g.lons, hoverinfo: "text",
      text: g.lats.map(() => `link ${plain(l.src)} → ${plain(l.dst)}: ${plain(l.state)}${l.stale ? " (no report)" : ""}<br>RTT ${fmt(l.rtt_ms)} ms · queue ${num(l.queue_depth)} · reconnects ${num(l.reconnects)}`),
      line: { width: down ? 2 : 0.6, color: down ? HEALTH_COLORS.red : "rgba(140,160,200,0.35)", dash: down ? "dash" : "dot" },
      showlegend: false, name: down ? "link-down" : "link",
    });
  }
  // traffic edges
  const maxRate = Math.max(1, ...state.topology.edges.map((e) => num(e.events_per_s)));
  const arrows = { lat: [], lon: [], angle: [], color: [], text: [], customdata: [] };
  for (const e of state.topology.edges) {
    const a = regions.get(e.src), b = regions.get(e.dst);
    if (!a || !b) continue;
    const live = liveStats(e.src, e.dst);
    const link = linkState.get(key(e.src, e.dst));
    const linkDown = link && link.state !== "up";
    const rate = live && state.window === "1m" ? live.rate : num(e.events_per_s);
    const width = 1 + 7 * Math.sqrt(Math.min(1, rate / maxRate));
    const color = linkDown ? HEALTH_COLORS.red : pick(HEALTH_COLORS, e.health, HEALTH_COLORS.idle);
    const g = arc(a, b);
    const errs = Object.entries(e.errors_by_status || {}).map(([s, n]) => `${plain(s)} ${num(n)}`).join(", ") || "none";
    const hover = `<b>${plain(e.src)} → ${plain(e.dst)}</b><br>${fmt(e.events_per_s, 2)} ev/s over ${plain(state.window)}` +
      (live ? ` · live ${fmt(live.rate, 1)} ev/s` : "") +
      `<br>hop p50/p99 ${fmt(e.hop_p50)} / ${fmt(e.hop_p99)} ms<br>e2e p50/p99 ${fmt(e.e2e_p50)} / ${fmt(e.e2e_p99)} ms` +
      `<br>errors ${fmt(e.error_pct, 2)} % (${errs})` + (linkDown ? "<br><b>link down</b>" : "");
    traces.push({
      type: "scattergeo", mode: "lines", lat: g.lats, lon: g.lons, hoverinfo: "text",
      text: g.lats.map(() => hover), customdata: g.lats.map(() => [e.src, e.dst]),
      line: { width, color }, opacity: 0.9, showlegend: false, name: "edge",
    });
    const i = Math.floor(g.lats.length * 0.72);
    arrows.lat.push(g.lats[i]);
    arrows.lon.push(g.lons[i]);
    arrows.angle.push(bearing(g.lats[i], g.lons[i], g.lats[i + 1], g.lons[i + 1]));
    arrows.color.push(color);
    arrows.text.push(hover);
    arrows.customdata.push([e.src, e.dst]);
  }
  traces.push({
    type: "scattergeo", mode: "markers", lat: arrows.lat, lon: arrows.lon, hoverinfo: "text", text: arrows.text,
    customdata: arrows.customdata, showlegend: false, name: "direction",
    marker: { symbol: "triangle-up", size: 11, angle: arrows.angle, color: arrows.color, line: { width: 0 } },
  });
  // regions
  const rs = [...regions.values()];
  const maxRegion = Math.max(1, ...rs.map((r) => num(r.events_per_s)));
  traces.push({
    type: "scattergeo", mode: "markers+text", name: "regions", showlegend: false,
    lat: rs.map((r) => r.lat), lon: rs.map((r) => r.lon), customdata: rs.map((r) => r.id),
    text: rs.map((r) => plain(r.id)), textposition: "bottom center", textfont: { color: "#dbe2f1", size: 11 }, hoverinfo: "text",
    hovertext: rs.map((r) => `<b>${plain(r.id)}</b> (${plain(r.city)})<br>${fmt(r.events_per_s, 2)} ev/s published · ${num(r.delivered)} delivered here`),
    marker: {
      size: rs.map((r) => 10 + 22 * Math.sqrt(num(r.events_per_s) / maxRegion)),
      color: rs.map((r) => pick(PROVIDER_COLORS, r.provider, PROVIDER_COLORS.onprem)),
      line: { width: 1.5, color: "#0b1020" }, opacity: 0.95,
    },
  });
  return traces;
}

const LAYOUT = {
  paper_bgcolor: "#0b1020", plot_bgcolor: "#0b1020", margin: { l: 0, r: 0, t: 0, b: 0 },
  geo: {
    projection: { type: "natural earth" }, showland: true, landcolor: "#1a2340", showocean: true,
    oceancolor: "#0b1020", showcountries: true, countrycolor: "#2b365a", coastlinecolor: "#33406a",
    showframe: false, bgcolor: "#0b1020",
  },
  hoverlabel: { bgcolor: "#131a2e", bordercolor: "#26304d", font: { color: "#dbe2f1" } },
  uirevision: "keep",
};

function drawMap() {
  const el = $("map");
  Plotly.react(el, buildTraces(), LAYOUT, { topojsonURL: "/static/topojson/", displayModeBar: false, responsive: true });
  if (!state.mapReady) {
    state.mapReady = true;
    el.on("plotly_click", (ev) => {
      const p = ev.points && ev.points[0];
      if (p && Array.isArray(p.customdata)) openEdge(p.customdata[0], p.customdata[1]);
    });
  }
}

function drawLiveEdges() {
  const rows = [];
  for (const k of state.live.keys()) {
    const [src, dst] = JSON.parse(k);
    const s = liveStats(src, dst);
    if (s && (s.rate > 0 || s.errors > 0)) rows.push({ src, dst, ...s });
  }
  rows.sort((a, b) => b.rate - a.rate);
  const body = $("live-edges-body");
  if (!rows.length) { body.innerHTML = '<tr><td colspan="4" class="muted">waiting for traffic…</td></tr>'; return; }
  body.innerHTML = rows.slice(0, 8).map((r) =>
    `<tr class="clickable live-edge" data-src="${esc(r.src)}" data-dst="${esc(r.dst)}"><td>${esc(r.src)} → ${esc(r.dst)}</td>` +
    `<td class="rate">${fmt(r.rate, 1)}</td><td>${r.p99 === null ? "–" : fmt(r.p99, 0) + " ms"}</td><td>${fmt(r.errorPct, 1)} %</td></tr>`).join("");
}

async function refreshTopology() {
  try {
    state.topology = await getJSON(`/api/topology?window=${state.window}`);
    const t = state.topology.thresholds;
    if (t) $("thresholds").textContent = `amber: errors ≥ ${t.error_amber_pct} % or p99 ≥ ${t.lag_amber_ms} ms · red: ≥ ${t.error_red_pct} % or ≥ ${t.lag_red_ms} ms`;
  } catch (err) {
    console.warn("topology", err);
  }
}

// ---- drill-down ------------------------------------------------------------------------

const CHART_LAYOUT = (title) => ({
  title: { text: title, font: { size: 12, color: "#8591ad" }, x: 0.02 }, height: 150,
  margin: { l: 40, r: 10, t: 24, b: 24 }, paper_bgcolor: "#131a2e", plot_bgcolor: "#131a2e",
  xaxis: { type: "date", color: "#8591ad", gridcolor: "#26304d" }, yaxis: { color: "#8591ad", gridcolor: "#26304d", rangemode: "tozero" },
});

async function openEdge(src, dst) {
  state.selected = { src, dst };
  $("panel").hidden = false;
  $("panel-title").textContent = `${src} → ${dst}`;
  $("trace").hidden = true;
  await refreshEdge();
}

async function refreshEdge() {
  if (!state.selected) return;
  const { src, dst } = state.selected;
  let edge;
  try {
    const query = new URLSearchParams({ src, dst, window: state.window });
    edge = await getJSON(`/api/edges?${query}`);
  } catch (err) {
    $("panel-summary").textContent = String(err.message || err);
    return;
  }
  const t = edge.series.map((p) => new Date(p.t * 1000));
  const opts = { displayModeBar: false, responsive: true };
  Plotly.react("chart-rate", [{ x: t, y: edge.series.map((p) => p.events_per_s), type: "scatter", mode: "lines", line: { color: "#4285f4" } }], CHART_LAYOUT("events/s"), opts);
  Plotly.react("chart-lag", [{ x: t, y: edge.series.map((p) => p.e2e_p99), type: "scatter", mode: "lines", line: { color: "#f5a623" }, connectgaps: false }], CHART_LAYOUT("p99 end-to-end lag (ms)"), opts);
  Plotly.react("chart-errors", [{ x: t, y: edge.series.map((p) => p.error_pct), type: "scatter", mode: "lines", line: { color: "#e74c3c" } }], CHART_LAYOUT("error %"), opts);
  $("panel-summary").innerHTML = `<span><b>${num(edge.events)}</b> events</span><span><b>${num(edge.errors)}</b> errors</span><span>window <b>${esc(edge.window)}</b></span>`;
  $("topics-body").innerHTML = edge.topics.map((x) =>
    `<tr><td>${esc(x.topic)}</td><td>${fmt(x.events_per_s, 2)}</td><td>${fmt(x.e2e_p50)}</td><td>${fmt(x.e2e_p99)}</td><td>${fmt(x.error_pct, 2)}</td></tr>`).join("");
  state.edgeSamples = edge.samples;
  drawTail();
}

function drawTail() {
  if (!state.selected) return;
  const { src, dst } = state.selected;
  const live = state.samples.filter((s) => s.src === src && s.dst === dst).slice(-20).reverse();
  const rows = live.length ? live : (state.edgeSamples || []);
  $("tail-body").innerHTML = rows.map((s) => {
    const at = new Date(num(s.ts) / 1000);
    const when = Number.isNaN(at.getTime()) ? "–" : at.toISOString().slice(11, 23);
    const cls = s.status === "ok" ? "status-ok" : "status-bad";
    return `<tr><td>${when}</td><td>${esc(s.topic)}</td><td class="${cls}">${esc(s.kind)}${s.status === "ok" ? "" : " " + esc(s.status)}</td>` +
      `<td>${fmt(s.e2e_ms)}</td><td>${s.trace_id ? `<a class="trace-link" data-trace="${esc(s.trace_id)}">${esc(String(s.trace_id).slice(0, 12))}…</a>` : "–"}</td></tr>`;
  }).join("") || '<tr><td colspan="5" class="muted">no sampled events yet</td></tr>';
}

async function openTrace(traceId) {
  $("trace").hidden = false;
  $("trace-id").textContent = traceId;
  try {
    const tr = await getJSON(`/api/traces/${encodeURIComponent(traceId)}`);
    $("trace-body").innerHTML = tr.hops.map((h, i) =>
      `<tr><td>${"&nbsp;".repeat(Math.min(60, Math.max(0, Math.floor(num(h.depth)))) * 3)}${i + 1}</td><td>${esc(h.kind)}</td><td>${esc(h.src_region)} → ${esc(h.dst_region)}</td>` +
      `<td>${esc(h.relay)}</td><td>${fmt(h.hop_ms, 2)}</td><td>${fmt(h.e2e_ms, 2)}</td>` +
      `<td class="${h.status === "ok" ? "status-ok" : "status-bad"}">${esc(h.status)}</td></tr>`).join("");
  } catch (err) {
    $("trace-body").innerHTML = `<tr><td colspan="7" class="muted">${esc(err.message || err)}</td></tr>`;
  }
}

// ---- SQL ----------------------------------------------------------------------------------

async function runSql() {
  const sql = $("sql-text").value;
  $("sql-status").textContent = "running…";
  $("sql-error").hidden = true;
  try {
    const r = await getJSON("/api/sql", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql }) });
    const head = `<thead><tr>${r.columns.map((c) => `<th>${esc(c)}</th>`).join("")}</tr></thead>`;
    const body = r.rows.map((row) => `<tr>${row.map((v) => `<td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td>`).join("")}</tr>`).join("");
    $("sql-table").innerHTML = head + `<tbody>${body}</tbody>`;
    $("sql-status").textContent = `${r.rows.length} rows${r.truncated ? ` (cut at ${r.row_limit})` : ""} · ${fmt(r.elapsed_ms, 1)} ms · ${r.rows_read} rows read`;
  } catch (err) {
    $("sql-error").hidden = false;
    $("sql-error").textContent = err.message || String(err);
    $("sql-status").textContent = "failed";
  }
}

async function downloadCsv() {
  const reply = await fetch("/api/sql?format=csv", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql: $("sql-text").value }) });
  if (reply.status === 401) return signIn();
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    $("sql-error").hidden = false;
    $("sql-error").textContent = body.error || reply.statusText;
    return;
  }
  const url = URL.createObjectURL(await reply.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = "meshscope.csv";
  a.click();
  URL.revokeObjectURL(url);
}

// ---- wiring --------------------------------------------------------------------------------

function wire() {
  for (const b of document.querySelectorAll("#windows button")) {
    b.addEventListener("click", async () => {
      document.querySelectorAll("#windows button").forEach((x) => x.classList.toggle("active", x === b));
      state.window = b.dataset.window;
      await refreshTopology();
      drawMap();
      refreshEdge();
    });
  }
  $("panel-close").addEventListener("click", () => { $("panel").hidden = true; state.selected = null; });
  $("sql-toggle").addEventListener("click", () => {
    $("sql").hidden = !$("sql").hidden;
    $("sql-toggle").classList.toggle("active", !$("sql").hidden);
  });
  $("sql-run").addEventListener("click", runSql);
  $("sql-csv").addEventListener("click", downloadCsv);
  $("sql-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql(); });
  document.body.addEventListener("click", (e) => {
    const link = e.target.closest("a.trace-link");
    if (link) openTrace(link.dataset.trace);
    const row = e.target.closest("tr.live-edge");
    if (row) openEdge(row.dataset.src, row.dataset.dst);
  });
}

async function main() {
  wire();
  await loadSession();
  await refreshTopology();
  drawMap();
  connectLive();
  setInterval(() => { drawMap(); drawLiveEdges(); drawTail(); }, 1000);
  setInterval(refreshTopology, 5000);
  setInterval(refreshEdge, 10000);
}

main();
