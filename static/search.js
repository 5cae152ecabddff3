// meshscope dashboard: one search box (/api/search) and the filters. A trace id or an event id
// opens the hop path; a topic pattern filters the map; provider chips and a region list narrow it.
"use strict";

async function runSearch(text) {
  const q = text.trim();
  const out = $("search-results");
  if (!q) return;
  out.hidden = false;
  out.replaceChildren(el("p", { class: "muted", text: "searching…" }));
  let found;
  try {
    found = await getJSON(`/api/search?${new URLSearchParams({ q })}`);
  } catch (err) {
    out.replaceChildren(el("p", { class: "muted", text: err.status === 404 ? `nothing found for ${q}` : String(err.message || err) }));
    return;
  }
  if (found.kind === "trace") return showTraceHit(found, out);
  if (found.kind === "topic") return showTopicHit(found, out);
  if (found.kind === "event") return showEventHit(found, out);
  out.replaceChildren(el("p", { class: "muted", text: "the server answered something this page does not know" }));
}

function showTraceHit(found, out) {
  if (!found.found) {
    out.replaceChildren(el("p", { class: "muted", text: `no flow records for trace ${found.trace_id}` }));
    return;
  }
  out.hidden = true;
  openTrace(found.trace_id);
}

function showTopicHit(found, out) {
  out.hidden = true;
  $("search").value = "";
  setFilter({ topic: String(found.pattern) });
}

function showEventHit(found, out) {
  const traces = list(found.traces);
  if (!traces.length) {
    out.replaceChildren(el("p", { class: "muted", text: `no traces for event ${found.event_id}` }));
    return;
  }
  out.replaceChildren(
    el("p", { class: "muted", text: `event ${found.event_id}: ${traces.length} trace${traces.length === 1 ? "" : "s"}` }),
    el("ul", {}, traces.slice(0, 20).map((t) => el("li", {},
      el("a", { class: "trace-link", href: "#", dataset: { trace: String(t.trace_id) } }, String(t.trace_id).slice(0, 16) + "…"),
      ` ${t.topic ?? ""} from ${t.src ?? "?"}${t.first_ts ? " at " + clock(fromMicros(t.first_ts)) : ""}`))),
  );
  if (traces.length === 1) openTrace(traces[0].trace_id);
}

// ---- filters --------------------------------------------------------------------------------

/** Change filters (topic, providers, regions), then reload everything the filters touch. */
function setFilter(change) {
  Object.assign(view, change);
  showFilters();
  syncUrl(true);
  refreshAll();
  refreshTimeline();
}

function knownRegions() {
  const ids = new Set(view.regions);
  for (const r of list(state.topology.regions)) ids.add(r.id);
  for (const r of state.seenRegions) ids.add(r);
  state.seenRegions = ids;
  return [...ids].sort();
}

function showFilters() {
  for (const b of document.querySelectorAll("#provider-chips button")) {
    const on = view.providers.includes(b.dataset.provider);
    b.classList.toggle("active", on);
    b.setAttribute("aria-pressed", String(on));
  }
  $("topic-chip").hidden = !view.topic;
  $("topic-chip-text").textContent = view.topic ? `topic ${view.topic}` : "";
  $("region-summary").textContent = view.regions.length ? `regions: ${view.regions.length}` : "all regions";
  const boxes = $("region-list");
  const checked = new Set(view.regions);
  const ids = knownRegions();
  if (boxes.dataset.ids === JSON.stringify(ids) && boxes.dataset.checked === JSON.stringify([...checked])) return;
  boxes.dataset.ids = JSON.stringify(ids);
  boxes.dataset.checked = JSON.stringify([...checked]);
  boxes.replaceChildren(...ids.map((id) => el("label", { class: "region-option" },
    el("input", { type: "checkbox", value: id, checked: checked.has(id) }), id)));
}

function wireFilters() {
  for (const provider of PROVIDERS) {
    $("provider-chips").append(el("button", { type: "button", class: "chip", dataset: { provider }, "aria-pressed": "false" }, provider));
  }
  $("provider-chips").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-provider]");
    if (!b) return;
    const p = b.dataset.provider;
    setFilter({ providers: view.providers.includes(p) ? view.providers.filter((x) => x !== p) : [...view.providers, p] });
  });
  $("region-list").addEventListener("change", () => {
    const picked = [...$("region-list").querySelectorAll("input:checked")].map((i) => i.value);
    setFilter({ regions: picked });
  });
  $("topic-clear").addEventListener("click", () => setFilter({ topic: "" }));
  $("filters-clear").addEventListener("click", () => setFilter({ topic: "", providers: [], regions: [] }));
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    runSearch($("search").value);
  });
  $("search").addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("search-results").hidden = true; });
}
