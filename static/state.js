// meshscope dashboard: what the user looks at (the view, mirrored in the URL) and what the
// server sent (the data). A pasted link opens the same view: readUrl() is the only way in.
"use strict";

const COMPARE_OFFSETS = { prev: null, "1h": 3600, "24h": 86400 }; // prev: one window earlier
const TABS = ["alerts", "edges", "lag", "routes", "governance"];
const PROVIDERS = ["aws", "gcp", "azure", "onprem"];

const view = {
  window: "5m",
  end: null, // unix seconds the window ends at; null: live
  compare: "", // a key of COMPARE_OFFSETS, or "" for off
  providers: [],
  regions: [],
  topic: "",
  edge: null, // {src, dst}
  trace: "",
  tab: "", // the side drawer: one of TABS, or ""
};

const state = {
  topology: { regions: [], edges: [], links: [] },
  diff: null, // {now, before, changes} while comparing
  live: new Map(), // "src|dst" -> Map(ts -> {count, delivered, errors, e2e_p99, hop_p99})
  samples: [], // newest last
  messages: 0,
  lastMessageAt: 0, // when /ws/live last said anything (unix seconds, the browser's clock)
  feedLost: false, // the /ws/live socket closed
  heartbeat: null, // the hub's last heartbeat: {feed, freshness}
  liveTs: 0, // the newest second with live figures
  liveAsOf: 0, // the newest record those figures counted
  mapReady: false,
  alerts: { alerts: [], available: true },
  groups: null, // /api/groups, when loaded
  timeline: null,
  playing: null, // {timer} while playing
  edgeSamples: [], // the open edge's sampled events, from the API
  seenRegions: new Set(), // every region id seen, for the region filter
};

/** The `end` of the comparison window, or null when not comparing. */
function compareEnd() {
  if (!view.compare || !Object.hasOwn(COMPARE_OFFSETS, view.compare)) return null;
  const end = view.end ?? nowS();
  return end - (COMPARE_OFFSETS[view.compare] ?? WINDOW_S[view.window]);
}

/** The query every map endpoint shares: window, end and the filters. */
function mapQuery(extra = {}) {
  const q = new URLSearchParams({ window: view.window });
  if (view.end !== null) q.set("end", String(view.end));
  if (view.providers.length) q.set("provider", view.providers.join(","));
  if (view.regions.length) q.set("region", view.regions.join(","));
  if (view.topic) q.set("topic", view.topic);
  for (const [name, value] of Object.entries(extra)) if (value !== null && value !== undefined) q.set(name, String(value));
  return q;
}

function urlOfView() {
  const q = mapQuery();
  if (view.compare) q.set("compare", view.compare);
  if (view.edge) {
    q.set("src", view.edge.src);
    q.set("dst", view.edge.dst);
  }
  if (view.trace) q.set("trace", view.trace);
  if (view.tab) q.set("view", view.tab);
  return `${location.pathname}?${q}`;
}

/** Mirror the view in the address bar: push on a meaningful change, replace otherwise. */
function syncUrl(push = false) {
  const url = urlOfView();
  if (url === location.pathname + location.search) return;
  if (push) history.pushState(null, "", url);
  else history.replaceState(null, "", url);
}

const splitList = (v) => (v ? v.split(",").map((s) => s.trim()).filter(Boolean) : []);

/** The view a URL describes; anything it does not name keeps its default. */
function readUrl() {
  const q = new URLSearchParams(location.search);
  const windowName = q.get("window");
  view.window = Object.hasOwn(WINDOW_S, windowName ?? "") ? windowName : "5m";
  const end = Number(q.get("end"));
  view.end = q.get("end") && Number.isFinite(end) && end > 0 ? Math.floor(end) : null;
  const compare = q.get("compare") ?? "";
  view.compare = Object.hasOwn(COMPARE_OFFSETS, compare) ? compare : "";
  view.providers = splitList(q.get("provider"));
  view.regions = splitList(q.get("region"));
  view.topic = (q.get("topic") ?? "").slice(0, 256);
  view.edge = q.get("src") && q.get("dst") ? { src: q.get("src"), dst: q.get("dst") } : null;
  view.trace = /^[0-9a-f]{32}$/.test(q.get("trace") ?? "") ? q.get("trace") : "";
  view.tab = TABS.includes(q.get("view")) ? q.get("view") : "";
}
