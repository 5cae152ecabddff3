// meshscope dashboard: the drill-down panel. For an edge: its time series, why it flows (route,
// and who pulls each topic at the destination), topics with their error classes, refusals with
// the rule or schema behind them, alert history, and a live tail. A trace's hop path either
// inside an edge's panel or alone (from the search box or a link). Cells hold text only.
"use strict";

function chartLayout(title, series) {
  const first = series.length ? num(series[0].t) : nowS();
  return {
    title: { text: `${title} · ${plain(localStamp(first).slice(0, 10))}`, font: { size: 12, color: "#8591ad" }, x: 0.02 },
    height: 160, margin: { l: 44, r: 12, t: 26, b: 34 }, paper_bgcolor: "#131a2e", plot_bgcolor: "#131a2e",
    xaxis: { type: "date", color: "#8591ad", gridcolor: "#26304d", tickformat: "%H:%M", hoverformat: "%H:%M:%S", nticks: 8 },
    yaxis: { color: "#8591ad", gridcolor: "#26304d", rangemode: "tozero" },
  };
}

function showPanel(mode) {
  $("panel").hidden = false;
  $("edge-view").hidden = mode !== "edge";
}

async function openEdge(src, dst) {
  view.edge = { src, dst };
  view.trace = "";
  syncUrl(true);
  showPanel("edge");
  $("panel-title").textContent = `${src} → ${dst}`;
  $("trace").hidden = true;
  await refreshEdge();
}

function closePanel() {
  $("panel").hidden = true;
  view.edge = null;
  view.trace = "";
  syncUrl(true);
}

async function refreshEdge() {
  if (!view.edge) return;
  const { src, dst } = view.edge;
  let edge;
  try {
    edge = await getJSON(`/api/edges?${mapQuery({ src, dst })}`);
  } catch (err) {
    $("panel-summary").textContent = String(err.message || err);
    return;
  }
  if (!view.edge || view.edge.src !== src || view.edge.dst !== dst) return; // another edge opened meanwhile
  drawCharts(list(edge.series));
  drawSummary(edge);
  drawWhy(edge.why);
  drawTopics(list(edge.topics));
  drawRefusals(list(edge.refusals));
  drawEdgeAlerts(edge.alerts);
  state.edgeSamples = list(edge.samples);
  drawTail();
}

function drawCharts(series) {
  const t = series.map((p) => new Date(num(p.t) * 1000));
  const opts = { displayModeBar: false, responsive: true };
  const line = (field, color) => [{ x: t, y: series.map((p) => p[field]), type: "scatter", mode: "lines", line: { color }, connectgaps: false }];
  Plotly.react("chart-rate", line("events_per_s", "#4285f4"), chartLayout("events/s", series), opts);
  Plotly.react("chart-lag", line("e2e_p99", "#f5a623"), chartLayout("p99 end-to-end lag (ms)", series), opts);
  Plotly.react("chart-errors", line("error_pct", "#e74c3c"), chartLayout("error %", series), opts);
}

function drawSummary(edge) {
  const c = errorClasses(edge);
  const item = (value, label) => el("span", {}, el("b", { text: String(value) }), ` ${label}`);
  $("panel-summary").replaceChildren(
    item(num(edge.events), "events"), item(num(edge.errors), "errors"),
    item(c.denied, "denied (policy)"), item(c.rejected, "rejected (schema)"), item(c.lost, "lost"),
    el("span", {}, "window ", el("b", { text: String(edge.window ?? view.window) })),
    el("span", {}, view.end === null ? "live" : `until ${localStamp(view.end)}`),
  );
}

function describeRoute(route, src, dst) {
  if (!route) return `no route from ${src} to ${dst} is known (no fresh relay state)`;
  const hops = list(route.path).length ? list(route.path) : [dst];
  const path = [hops[0] === src ? [] : [src], hops].flat().join(" → ");
  const cost = route.cost_ms !== undefined && route.cost_ms !== null ? ` · cost ${fmt(route.cost_ms)} ms` : "";
  if (route.direct) return `direct: ${path}${cost}`;
  return `via ${route.next_hop ?? "another region"}: ${path}${cost}`;
}

function pullers(subscriptions, groups) {
  const subs = list(subscriptions).map((s) => `${s.principal} (${list(s.patterns).join(", ")}) × ${num(s.subscribers)}`);
  const grps = list(groups).map((g) => `${g.group} of ${g.owner} (${list(g.patterns).join(", ")}), ${num(g.members)} members`);
  return { subs: subs.join("; ") || "none", groups: grps.join("; ") || "none" };
}

function drawWhy(why) {
  const { src, dst } = view.edge;
  $("why-route").textContent = why ? describeRoute(why.route, src, dst) : "not reported by this server";
  const rows = list(why && why.topics).map((t) => {
    const p = pullers(t.subscriptions, t.groups);
    return row([t.topic, p.subs, p.groups]);
  });
  fillRows($("why-body"), rows, 3, why ? "no topic crossed this edge in the window" : "–");
}

function drawTopics(topics) {
  fillRows($("topics-body"), topics.map((x) => {
    const c = errorClasses(x);
    return row([x.topic, fmt(x.events_per_s, 2), fmt(x.e2e_p50), fmt(x.e2e_p99), fmt(x.error_pct, 2), c.denied, c.rejected, c.lost]);
  }), 8, "no topics in the window");
}

function drawRefusals(refusals) {
  fillRows($("refusals-body"), refusals.map((r) => row([r.topic, r.principal, { text: r.status, class: "status-bad" },
    { text: r.ref || "–", title: refKind(r.ref) }, num(r.events)])), 5, "no refusals in the window");
}

/** What a refusal's ref names: a policy rule or a schema version. */
function refKind(ref) {
  if (typeof ref !== "string" || !ref) return "";
  return ref.startsWith("policy:") ? `policy rule ${ref.slice(7)}` : `schema version ${ref}`;
}

function drawEdgeAlerts(alerts) {
  const history = Array.isArray(alerts) ? alerts : list(alerts && (alerts.history || alerts.alerts));
  const unavailable = alerts && alerts.available === false;
  fillRows($("edge-alerts-body"), history.slice(0, 30).map((a) => row([
    a.ts ? localStamp(num(a.ts)) : "–", a.alertname, { text: a.state, class: a.state === "firing" ? "status-bad" : "" },
    a.severity, a.summary,
  ])), 5, unavailable ? "alerting is not available on this server" : "no alerts on this edge");
}

function drawTail() {
  if (!view.edge || $("panel").hidden) return;
  const { src, dst } = view.edge;
  const live = view.end === null ? state.samples.filter((s) => s.src === src && s.dst === dst).slice(-20).reverse() : [];
  const rows = live.length ? live : (state.edgeSamples || []);
  fillRows($("tail-body"), rows.map((s) => {
    const at = dateOf(fromMicros(s.ts));
    const when = at ? at.toISOString().slice(11, 23) : "–";
    const ok = s.status === "ok";
    const link = s.trace_id ? el("a", { class: "trace-link", href: "#", dataset: { trace: String(s.trace_id) } },
      `${String(s.trace_id).slice(0, 12)}…`) : "–";
    return row([when, s.topic, { text: `${s.kind}${ok ? "" : " " + s.status}`, class: ok ? "status-ok" : "status-bad" },
      fmt(s.e2e_ms), link]);
  }), 5, "no sampled events yet");
}

async function openTrace(traceId) {
  view.trace = traceId;
  syncUrl(true);
  if (!view.edge || $("panel").hidden) {
    showPanel("trace");
    $("panel-title").textContent = "Trace";
  }
  $("trace").hidden = false;
  $("trace-id").textContent = traceId;
  try {
    const tr = await getJSON(`/api/traces/${encodeURIComponent(traceId)}`);
    fillRows($("trace-body"), list(tr.hops).map((h, i) => row([
      { text: `${"\u00a0".repeat(Math.min(60, Math.max(0, Math.floor(num(h.depth)))) * 3)}${i + 1}`, class: "nowrap" }, h.kind,
      `${h.src_region} → ${h.dst_region}`, h.relay, { text: fmt(h.hop_ms, 2), class: "nowrap num" },
      { text: fmt(h.e2e_ms, 2), class: "nowrap num" },
      { text: h.status, class: `nowrap ${h.status === "ok" ? "status-ok" : "status-bad"}` },
    ])), 7, "no hops");
  } catch (err) {
    fillRows($("trace-body"), [], 7, String(err.message || err));
  }
  $("trace").scrollIntoView({ block: "nearest" });
}
