// meshscope dashboard: the edges as a table (the Edges view): every edge the map draws, in the
// same state, with the same cause and the age of its figures, sortable by rate, p99, error % and
// loss, under the map's window and filters plus a text filter of its own. An edge the view cannot
// vouch for is greyed, shows its last known figures ("–" rather than 0) and sorts after every vouched one.
"use strict";

// column -> what it sorts by (null: not known; the figures of an edge in state unknown are last known,
// not now: they sort after every vouched one)
const vouched = (r, v) => (r.unknown ? null : r.figure(v));
const EDGE_SORTS = {
  edge: (r) => `${r.e.src} → ${r.e.dst}`,
  state: (r) => pick(EDGE_STATE_RANK, r.state, 0),
  rate: (r) => vouched(r, r.e.events_per_s),
  p99: (r) => vouched(r, r.e.e2e_p99),
  err: (r) => vouched(r, r.e.error_pct),
  loss: (r) => vouched(r, r.e.loss_pct),
  lost: (r) => vouched(r, r.e.lost),
  age: (r) => r.age_s,
};
// worst first when sorted by state, descending
const EDGE_STATE_RANK = { unknown: 0, idle: 1, healthy: 2, degraded: 3, failing: 4, down: 5 };
const edgeSort = { by: "rate", desc: true };

/** "no data for 45 s" for an edge with a stale end; else how old the flow figures of its source are. */
function edgeAge(e, ctx) {
  if (ctx.silent) {
    const s = ctx.silent.freshness && ctx.silent.freshness.no_data_s;
    return typeof s === "number" ? { age_s: s, text: `no data for ${ageText(s)}` } : { age_s: null, text: "no data" };
  }
  if (view.end !== null) return { age_s: null, text: `window to ${localStamp(view.end)}` };
  const f = freshness();
  const own = f && f.regions && Object.hasOwn(f.regions, e.src) ? f.regions[e.src].flows : null;
  const flows = own || sourceFreshness("flows");
  if (typeof flows.age_s !== "number") return { age_s: null, text: "age unknown" };
  return { age_s: flows.age_s, text: `${ageText(flows.age_s)} old` };
}

/** Each edge as the table shows it: what the map decides, plus its age and a figure reader that says
 * "not known" (null) for the figures of an edge in state unknown that read 0. */
function edgeTableRows() {
  return judgedEdges().edges.map(({ e, ctx }) => {
    const shown = edgeState(e, ctx);
    const unknown = shown === "unknown";
    const figure = (v) => (v === null || v === undefined || !Number.isFinite(Number(v)) || (unknown && Number(v) === 0) ? null : Number(v));
    return { e, ctx, state: shown, cause: edgeCause(e, ctx) || "", unknown, figure, ...edgeAge(e, ctx) };
  });
}

function edgeMatches(r, text) {
  if (!text) return true;
  const hay = `${r.e.src} ${r.e.dst} ${r.state} ${r.cause}`.toLowerCase();
  return text.toLowerCase().split(/\s+/).filter(Boolean).every((w) => hay.includes(w));
}

/** Known figures first in the chosen order, then every row whose figure is not known. */
function sortEdgeRows(rows) {
  const by = pick(EDGE_SORTS, edgeSort.by, EDGE_SORTS.rate);
  const dir = edgeSort.desc ? -1 : 1;
  return rows.map((r) => [r, by(r)]).sort(([ra, a], [rb, b]) => {
    if ((a === null) !== (b === null)) return a === null ? 1 : -1;
    if (a !== null && a !== b) return (a < b ? -1 : 1) * dir;
    return key(ra.e.src, ra.e.dst) < key(rb.e.src, rb.e.dst) ? -1 : 1;
  }).map(([r]) => r);
}

function drawEdgeTable() {
  if (view.tab !== "edges") return;
  const all = edgeTableRows();
  const text = $("edge-filter").value.trim();
  const wanted = $("edge-state-filter").value;
  const shown = sortEdgeRows(all.filter((r) => edgeMatches(r, text) && (!wanted || r.state === wanted)));
  const cell = (v, digits) => (v === null ? "–" : fmt(v, digits));
  fillRows($("edges-body"), shown.map((r) => {
    const tr = row([
      `${r.e.src} → ${r.e.dst}`, { text: r.state, class: `state-${pick(STATE_COLORS, r.state, null) ? r.state : "unknown"} nowrap` },
      cell(r.figure(r.e.events_per_s), 2), cell(r.figure(r.e.e2e_p99), 1), cell(r.figure(r.e.error_pct), 2),
      cell(r.figure(r.e.loss_pct), 2), cell(r.figure(r.e.lost), 0), { text: r.text, class: "nowrap" }, r.cause || "–",
    ], { class: `clickable edge-row${r.unknown ? " stale" : ""}`, title: r.unknown ? "last known figures: this edge cannot be vouched for" : "" });
    tr.dataset.src = r.e.src;
    tr.dataset.dst = r.e.dst;
    tr.dataset.state = r.state;
    tr.tabIndex = 0;
    return tr;
  }), 9, all.length ? "no edge matches the filter" : emptyMapText() || "no edges in this window");
  $("edges-caption").textContent = `${shown.length} of ${all.length} edges · ${view.window}` +
    (view.end === null ? " up to now" : ` to ${localStamp(view.end)}`) + (filtersText() ? ` · ${filtersText()}` : "");
  for (const th of document.querySelectorAll("#edges-table th[data-sort]")) {
    const on = th.dataset.sort === edgeSort.by;
    th.setAttribute("aria-sort", on ? (edgeSort.desc ? "descending" : "ascending") : "none");
  }
}

function filtersText() {
  return [view.topic && `topic ${view.topic}`, view.providers.length && `providers ${view.providers.join(", ")}`,
    view.regions.length && `regions ${view.regions.join(", ")}`].filter(Boolean).join(" · ");
}

function wireEdgeTable() {
  $("edges-table").querySelector("thead").addEventListener("click", (ev) => {
    const th = ev.target.closest("th[data-sort]");
    if (!th) return;
    const by = th.dataset.sort;
    edgeSort.desc = edgeSort.by === by ? !edgeSort.desc : by !== "edge";
    edgeSort.by = by;
    drawEdgeTable();
  });
  $("edge-filter").addEventListener("input", drawEdgeTable);
  $("edge-state-filter").addEventListener("change", drawEdgeTable);
}
