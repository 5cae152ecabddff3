// meshscope dashboard: start-up and wiring. Loaded last; the other scripts (util, state, geo, map,
// freshness, live, timeline, drill, alerts, views, search, sql) only define functions. Everything is fetched
// from this origin; plotly and the world topojson are served locally.
"use strict";

const TOPOLOGY_POLL_MS = 5000;
const EDGE_POLL_MS = 10000;
const TIMELINE_POLL_MS = 60000;
let topologySeq = 0;

async function loadSession() {
  try {
    const me = await getJSON("/api/session");
    $("who-name").textContent = me.principal;
    $("sign-out").hidden = me.via !== "session";
    $("who").hidden = false;
    $("sql-toggle").hidden = !list(me.roles).includes("sql");
  } catch (err) {
    console.warn("session", err);
  }
}

// ---- the map's data ------------------------------------------------------------------------------

/** Fetch the topology (or the diff, when comparing) for the current view; stale answers are dropped. */
async function refreshTopology() {
  const seq = ++topologySeq;
  const ce = compareEnd();
  try {
    if (ce !== null) {
      const diff = await getJSON(`/api/topology/diff?${mapQuery({ compare_end: ce })}`);
      if (seq !== topologySeq) return;
      state.diff = diff;
      state.topology = diff.now || { regions: [], edges: [], links: [] };
    } else {
      const topology = await getJSON(`/api/topology?${mapQuery()}`);
      if (seq !== topologySeq) return;
      state.diff = null;
      state.topology = topology;
    }
    mapStatus(emptyMapText(), "info");
  } catch (err) {
    if (seq !== topologySeq) return;
    mapStatus(`${ce !== null ? "compare" : "topology"}: ${err.message || err}`);
    return;
  }
  const t = state.topology;
  $("map").dataset.at = String(t.at ?? t.to ?? "");
  if (t.thresholds) {
    const h = t.thresholds;
    $("thresholds").textContent = `degraded: lost ≥ ${h.loss_degraded_pct} % or p99 ≥ ${h.lag_degraded_ms} ms · ` +
      `failing: ≥ ${h.loss_failing_pct} % or ≥ ${h.lag_failing_ms} ms, or its link down`;
  }
  drawLegend();
  showFilters();
}

/** What an empty map means: no traffic, or no traffic known, because the history is not fresh. */
function emptyMapText() {
  if (list(state.topology.edges).length) return "";
  const flows = ((state.topology.freshness || {}).sources || {}).flows || {};
  if (flows.level === "live" || flows.level === "behind") return "no traffic between regions in this window";
  return `no traffic known in this window — ${flows.says || "the flow history cannot be vouched for"}`;
}

function mapStatus(text, kind = "error") {
  $("map-status").hidden = !text;
  $("map-status").className = `map-status ${kind}`;
  $("map-status").textContent = text;
}

function drawLegend() {
  const comparing = Boolean(state.diff);
  $("diff-legend").hidden = !comparing;
  if (comparing) {
    const ce = compareEnd();
    $("diff-caption").textContent = `against the ${view.window} ending ${localStamp(ce)}`;
    const counts = {};
    for (const c of list(state.diff.changes)) counts[c.change] = (counts[c.change] || 0) + 1;
    for (const item of document.querySelectorAll("#diff-legend [data-change]")) {
      item.querySelector(".n").textContent = String(counts[item.dataset.change] || 0);
    }
  }
}

/** Everything that depends on the view: the map, the open edge, the open view. */
async function refreshAll() {
  await refreshTopology();
  drawMap();
  const jobs = [refreshEdge()];
  if (view.tab === "governance") jobs.push(refreshGovernance());
  if (view.tab === "routes") jobs.push(refreshRoutes());
  if (view.tab === "lag") jobs.push(refreshGroups());
  await Promise.all(jobs);
}

// ---- applying a view (from the URL or history) ------------------------------------------------------

function showWindow() {
  for (const b of document.querySelectorAll("#windows button")) {
    const on = b.dataset.window === view.window;
    b.classList.toggle("active", on);
    b.setAttribute("aria-pressed", String(on));
  }
}

function applyView() {
  showWindow();
  showTime();
  $("compare").value = view.compare;
  showFilters();
  showTab();
  if (view.edge) {
    showPanel("edge");
    $("panel-title").textContent = `${view.edge.src} → ${view.edge.dst}`;
    $("trace").hidden = true;
  } else if (!view.trace) {
    $("panel").hidden = true;
  }
  drawScrubber();
}

async function restoreView() {
  stopPlay(false);
  readUrl();
  applyView();
  await refreshAll();
  if (view.trace) openTrace(view.trace);
  if (view.tab) refreshTab();
}

// ---- wiring ---------------------------------------------------------------------------------------

function wire() {
  $("windows").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-window]");
    if (!b) return;
    stopPlay();
    view.window = b.dataset.window;
    showWindow();
    showTime();
    drawScrubber();
    syncUrl(true);
    refreshAll();
  });
  $("panel-close").addEventListener("click", closePanel);
  $("views").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-tab]");
    if (b) openTab(b.dataset.tab);
  });
  $("side-close").addEventListener("click", () => openTab(view.tab));
  document.body.addEventListener("click", onBodyClick);
  document.body.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && ev.target.matches("tr.live-edge, tr.alert-edge, tr.edge-row")) onBodyClick(ev);
  });
  window.addEventListener("popstate", restoreView);
  wireScrubber();
  wireTimeControls();
  wireFilters();
  wireSql();
  wireEdgeTable();
}

function onBodyClick(ev) {
  const link = ev.target.closest("a.trace-link");
  if (link) {
    ev.preventDefault();
    openTrace(link.dataset.trace);
    return;
  }
  const edgeRow = ev.target.closest("tr.live-edge, tr.alert-edge, tr.edge-row");
  if (edgeRow) openEdge(edgeRow.dataset.src, edgeRow.dataset.dst);
  if (!ev.target.closest("#search-results, #search-form")) $("search-results").hidden = true;
}

async function main() {
  wire();
  readUrl();
  applyView();
  await loadSession();
  await Promise.all([refreshTopology(), refreshAlerts(), refreshGroups()]);
  drawMap();
  if (view.edge) refreshEdge();
  if (view.trace) openTrace(view.trace);
  if (view.tab) refreshTab();
  syncUrl(false);
  connectLive();
  refreshTimeline();
  setInterval(() => {
    showFreshness();
    if (view.end === null) drawMap();
    drawLiveEdges();
    drawTail();
  }, 1000);
  setInterval(async () => {
    if (state.playing) return;
    await refreshTopology();
    if (view.end !== null) drawMap();
  }, TOPOLOGY_POLL_MS);
  setInterval(() => { if (!state.playing) refreshEdge(); }, EDGE_POLL_MS);
  setInterval(refreshAlerts, ALERT_POLL_MS);
  setInterval(refreshGroups, GROUP_POLL_MS);
  setInterval(() => { if (view.tab === "routes" || view.tab === "governance") refreshTab(); }, GROUP_POLL_MS);
  setInterval(() => { refreshTimeline(); }, TIMELINE_POLL_MS);
}

main();
