// meshscope dashboard: the operator views in the side drawer: consumer lag (/api/groups), the
// route table of every relay (/api/routes) and governance (/api/governance). Alerts are in alerts.js.
"use strict";

const GROUP_POLL_MS = 10000;

function openTab(tab, push = true) {
  view.tab = view.tab === tab ? "" : tab;
  syncUrl(push);
  showTab();
  refreshTab();
}

function showTab() {
  $("side").hidden = !view.tab;
  for (const b of document.querySelectorAll("#views button[data-tab]")) {
    const on = b.dataset.tab === view.tab;
    b.classList.toggle("active", on);
    b.setAttribute("aria-pressed", String(on));
  }
  for (const t of TABS) $(`view-${t}`).hidden = t !== view.tab;
  $("side-title").textContent = pick({ alerts: "Alerts", edges: "Edges", lag: "Consumer lag", routes: "Route table", governance: "Governance" }, view.tab, "");
}

function refreshTab() {
  const refresh = pick({ alerts: drawAlerts, edges: drawEdgeTable, lag: refreshGroups, routes: refreshRoutes, governance: refreshGovernance }, view.tab, null);
  if (refresh) refresh();
}

function showError(id, err) {
  const note = $(id);
  note.hidden = !err;
  note.textContent = err ? String(err.message || err) : "";
}

// ---- consumer lag ---------------------------------------------------------------------------

async function refreshGroups() {
  const q = mapQuery();
  q.set("window", "15m");
  try {
    state.groups = await getJSON(`/api/groups?${q}`);
    showError("lag-note", null);
  } catch (err) {
    showError("lag-note", err);
    return;
  }
  if (view.tab === "lag") drawGroups();
}

function drawGroups() {
  const groups = list(state.groups && state.groups.groups);
  fillRows($("groups-body"), groups.map((g) => {
    const known = Boolean(pick(GROUP_COLORS, g.status, null));
    const color = pick(GROUP_COLORS, g.status, GROUP_COLORS.OK);
    return row([
      g.region, g.probe ? `${g.group} (probe: never alerts)` : g.group,
      { text: g.status, class: `nowrap group-${known ? g.status : "OK"}`, title: g.cause || "" },
      el("span", { class: "backlog" }, sparkline(list(g.series).map((p) => p.backlog), 70, 18, color), ` ${num(g.backlog)}`),
      `${fmt(g.arrival_per_s, 2)} / ${fmt(g.ack_per_s, 2)}`,
      { text: membersText(g), class: "nowrap" }, { text: behindText(g), class: "nowrap" },
    ], { class: g.status === "unknown" ? "stale" : "" });
  }), 7, "no durable groups reported");
}

/** "for 5 min (since 12:01:07)", "for over 24 h (since before …)": from the group's history. */
function sinceText(since, before) {
  if (typeof since !== "number") return "–";
  const at = view.end ?? nowS();
  // before: no sample in the history shows it otherwise, so it began before the first one
  return before ? `for over ${ageText(at - since)} (since before ${clock(since)})` : `for ${ageText(at - since)} (since ${clock(since)})`;
}

function behindText(g) {
  if (g.status === "unknown") return g.cause || "not known";
  return num(g.backlog) > 0 ? sinceText(g.behind_since, g.behind_before) : "not behind";
}

function membersText(g) {
  const n = num(g.consumers);
  if (n > 0 || g.status === "unknown") return String(n);
  return `0, ${sinceText(g.no_member_since, g.no_member_before)}`;
}

// ---- route table ----------------------------------------------------------------------------

/** What moment a view shows: now as reported, or a past end read from the history. */
function momentText(reply, past) {
  if (!reply.from_history) return "as the relays report them now";
  return `as at ${localStamp(reply.at)}, ${past}`;
}

async function refreshRoutes() {
  let reply;
  const end = view.end;
  try {
    reply = await getJSON(`/api/routes?${mapQuery()}`);
    showError("routes-note", null);
  } catch (err) {
    showError("routes-note", err);
    return;
  }
  if (end !== view.end) return; // the view moved meanwhile
  $("routes-moment").textContent = momentText(reply,
    "from the link samples: the next hop each relay used towards each peer (a route's full path and cost are not kept)");
  $("routes-moment").classList.toggle("past", Boolean(reply.from_history));
  const rows = [];
  for (const relay of list(reply.relays)) {
    const where = `${relay.region}${relay.stale ? " (stale)" : ""}`;
    for (const r of list(relay.routes)) {
      rows.push(row([where, r.dst, r.next_hop, list(r.path).join(" → "), fmt(r.cost_ms),
        { text: r.direct ? "direct" : "detour", class: r.direct ? "nowrap" : "detour nowrap" }], { class: relay.stale ? "stale route-row" : "route-row" }));
    }
    if (!list(relay.routes).length) rows.push(row([where, "–", "–", "no routes", "–", "–"]));
  }
  fillRows($("routes-body"), rows, 6, "no relay has reported its state");
  const links = list(reply.relays).flatMap((relay) => list(relay.links).map((l) => row([
    relay.region, l.peer, { text: l.state, class: l.state === "up" ? "status-ok" : "status-bad" },
    { text: l.security || "–", class: l.security === "plain" ? "warn" : "" }, fmt(l.rtt_ms), l.via || "–",
    { text: l.governance_mismatch ? `${l.gov} ≠` : l.gov || "–", class: l.governance_mismatch ? "mismatch" : "" },
  ])));
  fillRows($("route-links-body"), links, 7, "no links reported");
}

// ---- governance -----------------------------------------------------------------------------

async function refreshGovernance() {
  let gov;
  const end = view.end;
  try {
    gov = await getJSON(`/api/governance?${mapQuery()}`);
    showError("gov-note", null);
  } catch (err) {
    showError("gov-note", err);
    return;
  }
  if (end !== view.end) return; // the view moved meanwhile
  $("gov-moment").textContent = momentText(gov,
    "from the link samples and the governance history; refusals over the window before it");
  $("gov-moment").classList.toggle("past", Boolean(gov.from_history));
  drawGovernanceDocument(gov.document, gov.mismatch);
  const expected = gov.document && gov.document.version;
  fillRows($("gov-relays-body"), list(gov.relays).map((r) => {
    const off = Boolean(gov.mismatch) && (expected ? r.version !== expected : list(gov.versions).length > 1);
    const seen = (r.stale ? "stale" : "fresh") + (r.cut_off ? " · cut off from the authority" : "");
    return row([r.region, { text: r.version || "none", class: off ? "mismatch" : "" }, seen],
      { class: off ? "mismatch-row" : "" });
  }), 3, "no relay has reported its governance version");
  fillRows($("gov-links-body"), list(gov.links).map((l) => row([`${l.src} → ${l.dst}`, l.local_gov, l.peer_gov])),
    3, "every link agrees on the version");
  fillRows($("gov-refusals-body"), [...list(gov.refusals)].sort(byGovernance).map((r) => row([
    r.topic, r.principal, r.region, { text: r.status, class: "status-bad" }, { text: r.ref || "–", title: refKind(r.ref) }, num(r.events),
  ], { class: "refusal" })), 6, "no refusals in the window");
}

/** Unix seconds or an ISO date as a local stamp; anything else as it came. */
function stampOf(value) {
  const s = typeof value === "number" ? value : Date.parse(String(value)) / 1000;
  return Number.isFinite(s) ? localStamp(s) : String(value);
}

const GOVERNANCE_STATUSES = ["policy_denied", "schema_rejected"];

/** Policy denials and schema rejections first (they name a rule or schema), then the most events. */
function byGovernance(a, b) {
  const ga = GOVERNANCE_STATUSES.includes(a.status), gb = GOVERNANCE_STATUSES.includes(b.status);
  return ga !== gb ? (ga ? -1 : 1) : num(b.events) - num(a.events);
}

function drawGovernanceDocument(doc, mismatch) {
  const box = $("gov-document");
  if (!doc) {
    box.replaceChildren(el("p", { class: "muted", text: "no governance document: nothing is enforced" }));
    return;
  }
  const subjects = list(doc.subjects).map((s) => `${s.subject} (v${num(s.versions)})`).join(", ") || "none";
  box.replaceChildren(...[
    el("p", {}, "version ", el("code", { text: String(doc.version ?? "–") }), ` by ${doc.author ?? "–"}`,
      doc.changed_at ? `, ${stampOf(doc.changed_at)}` : ""),
    el("p", { text: `${num(doc.policies)} policy rules · schema subjects: ${subjects}` }),
    mismatch ? el("p", { class: "mismatch", text: "Relays enforce different versions: see the highlighted rows." }) : null,
  ].filter(Boolean));
}
