// meshscope dashboard: the world map as plotly traces, bottom to top: mesh links, detours, traffic
// edges, flags on links, alert badges, consumer-group rings, direction arrows, regions.
// Every trace has a name (tests and clicks find them by it); edge traces carry meta {src, dst, change, state}.
"use strict";

const PROVIDER_COLORS = { aws: "#ff9900", gcp: "#4285f4", azure: "#00a2ed", onprem: "#9aa0a6" };
// what the view cannot vouch for (an edge in state unknown, a stale region and its edges): never a health colour
const STALE_COLOR = "#6b7280";
// one colour per view state (meshcore.freshness.STATES; the server decides which applies)
const STATE_COLORS = {
  healthy: "#2ecc71", idle: "#5f6b7a", degraded: "#f5a623", failing: "#e74c3c", down: "#e74c3c", unknown: STALE_COLOR,
};
const CHANGE_COLORS = {
  new: "#22d3ee", gone: "#8b93a7", errors_up: "#e74c3c", errors_down: "#2ecc71",
  lag_up: "#fb923c", lag_down: "#a3e635", same: "#4b5567",
};
const CHANGE_LABELS = {
  new: "new", gone: "gone", errors_up: "errors up", errors_down: "errors down",
  lag_up: "lag up", lag_down: "lag down", same: "unchanged",
};
const GROUP_COLORS = { OK: "#2ecc71", WARN: "#f5a623", STALL: "#e74c3c", STOP: "#c084fc", unknown: STALE_COLOR };
const GROUP_RANK = { OK: 0, unknown: 1, WARN: 2, STALL: 3, STOP: 4 };
const SEVERITY_COLORS = { critical: "#e74c3c", warning: "#f5a623", info: "#4285f4" };
const SEVERITY_RANK = { info: 0, warning: 1, critical: 2 };
const LINK_STYLES = {
  up: { width: 0.6, color: "rgba(140,160,200,0.35)", dash: "dot" },
  down: { width: 2, color: "#e74c3c", dash: "dash" },
  degraded: { width: 1.6, color: "#f5a623", dash: "dash" },
  unknown: { width: 1.4, color: "rgba(150,160,180,0.6)", dash: "dot" },
  plain: { width: 1.6, color: "#f5a623", dash: "dashdot" },
  mismatch: { width: 1.8, color: "#c084fc", dash: "longdash" },
};
const REFUSAL_STATUSES = ["policy_denied", "schema_rejected"];
const DETOUR_COLOR = "#e8ecf7";

function regionIndex(topology) {
  const out = new Map();
  for (const r of list(topology.regions)) {
    if (r.lat !== null && r.lon !== null && r.lat !== undefined && r.lon !== undefined) out.set(r.id, r);
  }
  return out;
}

// ---- what is wrong where ------------------------------------------------------------------------

function linkStyleName(l) {
  if (l.state === "down" || l.state === "failing") return "down";
  if (l.state === "unknown") return "unknown";
  if (l.state === "degraded") return "degraded";
  if (l.governance_mismatch) return "mismatch";
  if (l.security === "plain") return "plain";
  return "up";
}

function linkHover(l) {
  const said = l.reported_state && l.reported_state !== "up" ? ` (the relay says ${plain(l.reported_state)})` : "";
  const lines = [`link ${plain(l.src)} → ${plain(l.dst)}: <b>${plain(l.state)}</b>${said}`];
  if (l.cause) lines.push(plain(l.cause));
  if (l.last_sample) lines.push(`last report ${ago(l.last_sample)}`);
  lines.push(`RTT ${fmt(l.rtt_ms)} ms · queue ${num(l.queue_depth)} · reconnects ${num(l.reconnects)}`);
  if (l.security) lines.push(l.security === "plain" ? "<b>unencrypted (plain) link</b>" : `security ${plain(l.security)}`);
  if (l.via) lines.push(`route detours via ${plain(l.via)}`);
  if (l.governance_mismatch) lines.push(`<b>governance mismatch</b>: here ${plain(l.local_gov)} · peer ${plain(l.gov)}`);
  return lines.join("<br>");
}

/** Alerts firing on an edge or region, from the alert list (labels), for hover text and counts. */
function alertsOn(src, dst, region) {
  return list(state.alerts.alerts).filter((a) => {
    if (a.state && a.state !== "firing") return false;
    const l = a.labels || {};
    if (region) return (l.region === region && !l.dst) || (l.src === region && (!l.dst || l.dst === region));
    return l.src === src && l.dst === dst;
  });
}

function alertCount(declared, found) {
  return typeof declared === "number" ? declared : found.length;
}

function worstSeverity(alerts) {
  return alerts.reduce((w, a) => (pick(SEVERITY_RANK, a.severity, 0) > pick(SEVERITY_RANK, w, 0) ? a.severity : w), "warning");
}

function regionGroups(r) {
  if (Array.isArray(r.groups)) return r.groups;
  return list(state.groups && state.groups.groups).filter((g) => g.region === r.id);
}

function worstGroup(groups) {
  return groups.reduce((w, g) => (pick(GROUP_RANK, g.status, -1) > pick(GROUP_RANK, w, -1) ? g.status : w), "OK");
}

// ---- edges --------------------------------------------------------------------------------------

function errorClasses(e) {
  const other = Object.entries(e.errors_by_status || {}).filter(([s]) => !REFUSAL_STATUSES.includes(s));
  const denied = e.denied ?? pick(e.errors_by_status || {}, "policy_denied", 0);
  const rejected = e.rejected ?? pick(e.errors_by_status || {}, "schema_rejected", 0);
  return { other, denied: num(denied), rejected: num(rejected), lost: num(e.lost) };
}

/** The state an edge is drawn in: its own, unless its link says the edge is failing now (live feed), or
 * an end of it is a region the heartbeat says is stale now. */
function edgeState(e, ctx) {
  if (ctx.link && ctx.link.edge_state) return ctx.link.edge_state;
  if (ctx.silent) return "unknown";
  return e.state || "unknown";
}

/** Why an edge is in the state it is drawn in: its link's cause, a stale end's, or its own. */
function edgeCause(e, ctx) {
  if (ctx.link && ctx.link.edge_state) return ctx.link.cause;
  if (ctx.silent) return `${staleLabel(ctx.silent)} from ${ctx.silent.id}: ${staleCause(ctx.silent)}`;
  return e.cause;
}

/** The context an edge is judged in (the same for the map and the edge table). */
function edgeContext(e, regions, linkOf, byKey, changes, live) {
  const a = regions.get(e.src) || regionOf(e.src), b = regions.get(e.dst) || regionOf(e.dst);
  const found = live ? alertsOn(e.src, e.dst) : [];
  return {
    live: live ? liveStats(e.src, e.dst) : null, link: linkOf.get(key(e.src, e.dst)),
    reverse: byKey.get(key(e.dst, e.src)), change: changes.get(key(e.src, e.dst)),
    alerts: alertCount(e.alerts, found), found, silent: [a, b].find((r) => r && r.stale),
  };
}

function regionOf(id) {
  return list(state.topology.regions).find((r) => r.id === id) || null;
}

/** The edges as the map draws them, each with its context: live, the topology's edges plus failing links. */
function judgedEdges() {
  const topology = state.topology;
  const regions = regionIndex(topology);
  const live = view.end === null;
  const linkOf = new Map(list(topology.links).map((l) => [key(l.src, l.dst), l]));
  const edges = live ? mapEdges(topology, linkOf) : list(topology.edges);
  const byKey = new Map(edges.map((e) => [key(e.src, e.dst), e]));
  const changes = new Map(list(state.diff && state.diff.changes).map((c) => [key(c.src, c.dst), c]));
  return { regions, live, linkOf, edges: edges.map((e) => ({ e, ctx: edgeContext(e, regions, linkOf, byKey, changes, live) })) };
}

function edgeHover(e, ctx) {
  const live = ctx.live;
  const c = errorClasses(e);
  const errs = c.other.map(([s, n]) => `${plain(s)} ${num(n)}`).join(", ") || "none";
  const shown = edgeState(e, ctx);
  const cause = edgeCause(e, ctx);
  const lines = [
    `<b>${plain(e.src)} → ${plain(e.dst)}</b> (this direction)`,
    `<b>${plain(shown)}</b>${cause ? `: ${plain(cause)}` : ""}`,
    `${fmt(e.events_per_s, 2)} ev/s over ${plain(view.window)}` + (live ? ` · live ${fmt(live.rate, 1)} ev/s` : ""),
    `hop p50/p99 ${fmt(e.hop_p50)} / ${fmt(e.hop_p99)} ms`,
    `e2e p50/p99 ${fmt(e.e2e_p50)} / ${fmt(e.e2e_p99)} ms`,
    `errors ${fmt(e.error_pct, 2)} % (${errs})`,
    `denied ${c.denied} · rejected ${c.rejected} · lost ${c.lost}`,
  ];
  const vias = Object.entries(e.via || {}).filter(([, n]) => num(n) > 0);
  if (vias.length) lines.push(`<b>detour</b> via ${vias.map(([r, n]) => `${plain(r)} (${num(n)} forwards)`).join(", ")}`);
  if (ctx.reverse) lines.push(`reverse ${plain(e.dst)} → ${plain(e.src)}: ${fmt(ctx.reverse.events_per_s, 2)} ev/s`);
  if (ctx.change) lines.push(`<b>${plain(pick(CHANGE_LABELS, ctx.change.change, ctx.change.change))}</b> against the earlier window` +
    (ctx.change.before ? ` (then ${fmt(ctx.change.before.error_pct, 2)} % errors, p99 ${fmt(ctx.change.before.e2e_p99)} ms)` : ""));
  if (ctx.alerts) lines.push(`<b>${ctx.alerts} alert${ctx.alerts === 1 ? "" : "s"} firing</b>`);
  if (ctx.link && ctx.link.state !== "healthy") lines.push(`<b>link ${plain(ctx.link.state)}</b>`);
  if (ctx.link && ctx.link.security === "plain") lines.push("<b>unencrypted link</b>");
  return lines.join("<br>");
}

function edgeColor(e, ctx) {
  const shown = edgeState(e, ctx);
  if (shown === "unknown") return STALE_COLOR; // in a comparison too: what cannot be vouched for has no change colour
  if (ctx.change) return pick(CHANGE_COLORS, ctx.change.change, CHANGE_COLORS.same);
  return pick(STATE_COLORS, shown, STALE_COLOR);
}

/** Edges the topology answer has, plus one for every link the live feed says is failing with events held. */
function mapEdges(topology, linkOf) {
  const edges = list(topology.edges);
  const have = new Set(edges.map((e) => key(e.src, e.dst)));
  const extra = [];
  for (const [k, l] of linkOf) {
    if (have.has(k) || l.edge_state !== "failing" || num(l.queue_depth) <= 0) continue;
    extra.push({ src: l.src, dst: l.dst, events: 0, events_per_s: 0, state: "failing", cause: l.cause,
      held: num(l.queue_depth), via: {} });
  }
  return edges.concat(extra);
}

/** One line trace along an arc, its hover on every point, clickable through customdata. */
function lineTrace(g, name, hover, line, meta, extra = {}) {
  return {
    type: "scattergeo", mode: "lines", lat: g.lats, lon: g.lons, hoverinfo: "text", name, meta,
    text: g.lats.map(() => hover), customdata: g.lats.map(() => (meta ? [meta.src, meta.dst] : null)),
    line, showlegend: false, ...extra,
  };
}

const DETOUR_MIN_SHARE = 0.1; // of the edge's events in the window

function detourTraces(a, b, via, regions, color, hover, meta) {
  const out = [];
  for (const id of via) {
    const c = regions.get(id);
    if (!c) continue;
    for (const [p, q] of [[a, c], [c, b]]) {
      out.push(lineTrace(arc(p, q, 0.07), "detour", hover, { width: 2, color, dash: "dash" }, meta, { opacity: 0.95 }));
    }
  }
  return out;
}

// ---- the traces -----------------------------------------------------------------------------------

function buildTraces() {
  const { regions, live, edges: judged } = judgedEdges();
  const traces = [], flags = newPoints(), badges = newPoints(), arrows = newPoints();
  for (const l of list(state.topology.links)) traces.push(...linkTraces(l, regions, flags));
  traces.push(...goneEdgeTraces(regions));
  const maxRate = Math.max(1, ...judged.map(({ e }) => num(e.events_per_s)));
  for (const { e, ctx } of judged) {
    const a = regions.get(e.src), b = regions.get(e.dst);
    if (!a || !b) continue;
    const found = ctx.found;
    const rate = ctx.live && view.window === "1m" ? ctx.live.rate : num(e.events_per_s);
    const width = 1 + 7 * Math.sqrt(Math.min(1, rate / maxRate));
    const color = edgeColor(e, ctx);
    const hover = edgeHover(e, ctx);
    const vouched = edgeState(e, ctx) !== "unknown";
    const meta = { src: e.src, dst: e.dst, change: ctx.change ? ctx.change.change : null, state: edgeState(e, ctx) };
    const g = arc(a, b);
    // a detour is drawn when it carried a real share of the edge's traffic in the window
    // (a link that flapped for a second leaves a few forwards via C: those are in the hover only);
    // when it carried most of it, the direct line fades
    const events = Math.max(1, num(e.events));
    const detours = Object.entries(e.via || {}).filter(([, n]) => num(n) >= DETOUR_MIN_SHARE * events);
    const vias = detours.map(([r]) => r);
    const detoured = detours.reduce((sum, [, n]) => sum + num(n), 0) >= 0.5 * events;
    traces.push(...detourTraces(a, b, vias, regions, DETOUR_COLOR, hover, meta));
    // figures the view cannot vouch for are greyed: drawn thin and dotted, never as live
    const line = vouched ? { width, color } : { width: Math.min(width, 2), color, dash: "dot" };
    traces.push(lineTrace(g, "edge", hover, line, meta, { opacity: detoured ? 0.35 : vouched ? 0.9 : 0.5 }));
    const head = along(g.raw, 0.72);
    addPoint(arrows, head, hover, [e.src, e.dst], color, head.angle);
    if (vias.length) addPoint(flags, along(g.raw, 0.5), hover, [e.src, e.dst], color, 0, `via ${plain(vias.join(", "))}`);
    if (ctx.alerts > 0) {
      addPoint(badges, along(g.raw, 0.45), alertHover(`${e.src} → ${e.dst}`, found, ctx.alerts), [e.src, e.dst],
        pick(SEVERITY_COLORS, worstSeverity(found), SEVERITY_COLORS.warning), 0, String(ctx.alerts));
    }
  }
  const rs = [...regions.values()];
  const sizes = regionSizes(rs);
  for (const r of rs) {
    const found = live ? alertsOn(null, null, r.id) : [];
    const n = alertCount(r.alerts, found);
    if (n > 0) {
      addPoint(badges, { lat: r.lat + 4, lon: r.lon + 5 }, alertHover(r.id, found, n), null,
        pick(SEVERITY_COLORS, worstSeverity(found), SEVERITY_COLORS.warning), 0, String(n));
    }
  }
  traces.push(flagTrace(flags), badgeTrace(badges), ringTrace(rs, sizes), arrowTrace(arrows), regionTrace(rs, sizes));
  return traces;
}

function newPoints() {
  return { lat: [], lon: [], text: [], customdata: [], color: [], angle: [], label: [], pairs: new Set() };
}

function addPoint(points, at, hover, customdata, color, angle = 0, label = "") {
  points.lat.push(at.lat);
  points.lon.push(at.lon);
  points.text.push(hover);
  points.customdata.push(customdata);
  points.color.push(color);
  points.angle.push(angle);
  points.label.push(label);
}

function linkTraces(l, regions, flags) {
  const a = regions.get(l.src), b = regions.get(l.dst);
  if (!a || !b) return [];
  const style = linkStyleName(l);
  const hover = linkHover(l);
  const g = arc(a, b, 0.012);
  const out = [lineTrace(g, `link-${style}`, hover, { ...LINK_STYLES[style] }, null)];
  if (l.via && regions.has(l.via)) out.push(...detourTraces(a, b, [l.via], regions, "rgba(232,236,247,0.55)", hover, null));
  const mid = along(g.raw, 0.4);
  const pair = key(...[l.src, l.dst].sort()) + style;
  if (l.via) addPoint(flags, mid, hover, null, "#8591ad", 0, `via ${plain(l.via)}`);
  if (flags.pairs.has(pair)) return out; // one flag per pair and kind: both directions say the same
  flags.pairs.add(pair);
  if (style === "plain") addPoint(flags, mid, hover, null, LINK_STYLES.plain.color, 0, "⚠ plain");
  if (style === "mismatch") addPoint(flags, mid, hover, null, LINK_STYLES.mismatch.color, 0, "gov ≠");
  return out;
}

function goneEdgeTraces(regions) {
  if (!state.diff) return [];
  const before = regionIndex(state.diff.before || {});
  const out = [];
  for (const c of list(state.diff.changes)) {
    if (c.change !== "gone") continue;
    const a = regions.get(c.src) || before.get(c.src), b = regions.get(c.dst) || before.get(c.dst);
    if (!a || !b) continue;
    const hover = `<b>${plain(c.src)} → ${plain(c.dst)}</b><br><b>gone</b>: no traffic now; ` +
      `${fmt(c.before && c.before.events_per_s, 2)} ev/s in the earlier window`;
    out.push(lineTrace(arc(a, b), "edge", hover, { width: 2, color: CHANGE_COLORS.gone, dash: "dot" },
      { src: c.src, dst: c.dst, change: "gone" }, { opacity: 0.8 }));
  }
  return out;
}

function alertHover(where, found, n) {
  const lines = found.slice(0, 6).map((a) => `${plain(a.severity)} · ${plain(a.alertname)}: ${plain(a.summary)}`);
  return [`<b>${n} alert${n === 1 ? "" : "s"} firing</b> on ${plain(where)}`, ...lines].join("<br>");
}

function regionSizes(rs) {
  const top = Math.max(1, ...rs.map((r) => num(r.events_per_s)));
  return rs.map((r) => 10 + 22 * Math.sqrt(num(r.events_per_s) / top));
}

function flagTrace(p) {
  return {
    type: "scattergeo", mode: "text", name: "link-flags", lat: p.lat, lon: p.lon, text: p.label, hovertext: p.text,
    hoverinfo: "text", customdata: p.customdata, textfont: { color: p.color, size: 10 }, showlegend: false,
  };
}

function badgeTrace(p) {
  return {
    type: "scattergeo", mode: "markers+text", name: "alert-badges", lat: p.lat, lon: p.lon, text: p.label,
    hovertext: p.text, hoverinfo: "text", customdata: p.customdata, textposition: "middle center",
    textfont: { color: "#ffffff", size: 10 }, showlegend: false,
    marker: { size: 17, color: p.color, line: { width: 1.5, color: "#0b1020" }, symbol: "circle" },
  };
}

function ringTrace(rs, sizes) {
  const ringed = rs.map((r, i) => [r, sizes[i], regionGroups(r)]).filter(([, , gs]) => gs.length);
  return {
    type: "scattergeo", mode: "markers", name: "group-rings", hoverinfo: "skip", showlegend: false,
    lat: ringed.map(([r]) => r.lat), lon: ringed.map(([r]) => r.lon), customdata: ringed.map(([r]) => r.id),
    meta: ringed.map(([, , gs]) => worstGroup(gs)),
    marker: {
      symbol: "circle-open", size: ringed.map(([, s]) => s + 9),
      line: { width: 3 }, color: ringed.map(([, , gs]) => pick(GROUP_COLORS, worstGroup(gs), GROUP_COLORS.OK)),
    },
  };
}

function arrowTrace(p) {
  return {
    type: "scattergeo", mode: "markers", lat: p.lat, lon: p.lon, hoverinfo: "text", text: p.text,
    customdata: p.customdata, showlegend: false, name: "direction",
    marker: { symbol: "triangle-up", size: 11, angle: p.angle, color: p.color, line: { width: 0 } },
  };
}

/** "no data for 45 s", for a region whose data the dashboard cannot vouch for. */
function staleLabel(r) {
  const f = r.freshness || {};
  return typeof f.no_data_s === "number" ? `no data for ${Math.round(f.no_data_s)} s` : "no data";
}

function staleCause(r) {
  return (r.freshness && r.freshness.cause) || "its store has not been read";
}

function regionHover(r) {
  if (r.stale) return [`<b>${plain(r.id)}</b> (${plain(r.city)})`, `<b>${plain(staleLabel(r))}</b>`, plain(staleCause(r))].join("<br>");
  const lines = [`<b>${plain(r.id)}</b> (${plain(r.city)})`,
    `${fmt(r.events_per_s, 2)} ev/s published · ${num(r.delivered)} delivered here`];
  const groups = regionGroups(r);
  if (groups.length) lines.push("groups: " + groups.slice(0, 6).map((g) => `${plain(g.group)} ${plain(g.status)} (backlog ${num(g.backlog)})`).join(", "));
  if (num(r.alerts) > 0) lines.push(`<b>${num(r.alerts)} alerts firing</b>`);
  return lines.join("<br>");
}

function regionTrace(rs, sizes) {
  return {
    type: "scattergeo", mode: "markers+text", name: "regions", showlegend: false,
    lat: rs.map((r) => r.lat), lon: rs.map((r) => r.lon), customdata: rs.map((r) => r.id),
    meta: rs.map((r) => (r.stale ? "stale" : "")),
    text: rs.map((r) => plain(r.id) + (r.stale ? ` · ${plain(staleLabel(r))}` : "")), textposition: "bottom center",
    textfont: { color: rs.map((r) => (r.stale ? STALE_COLOR : "#dbe2f1")), size: 11 }, hoverinfo: "text",
    hovertext: rs.map(regionHover),
    marker: {
      size: sizes, color: rs.map((r) => (r.stale ? STALE_COLOR : pick(PROVIDER_COLORS, r.provider, PROVIDER_COLORS.onprem))),
      line: { width: 1.5, color: "#0b1020" }, opacity: 0.95,
    },
  };
}

const LAYOUT = {
  paper_bgcolor: "#0b1020", plot_bgcolor: "#0b1020", margin: { l: 0, r: 0, t: 0, b: 0 },
  geo: {
    projection: { type: "natural earth" }, fitbounds: false, showland: true, landcolor: "#1a2340", showocean: true,
    oceancolor: "#0b1020", showcountries: true, countrycolor: "#2b365a", coastlinecolor: "#33406a",
    showframe: false, bgcolor: "#0b1020",
  },
  hoverlabel: { bgcolor: "#131a2e", bordercolor: "#26304d", font: { color: "#dbe2f1" } },
  uirevision: "keep",
};

function drawMap() {
  const gd = $("map");
  Plotly.react(gd, buildTraces(), LAYOUT, { topojsonURL: "/static/topojson/", displayModeBar: false, responsive: true });
  drawEdgeTable();
  if (!state.mapReady) {
    state.mapReady = true;
    gd.on("plotly_click", (ev) => {
      const p = ev.points && ev.points[0];
      if (p && Array.isArray(p.customdata)) openEdge(p.customdata[0], p.customdata[1]);
    });
  }
}
