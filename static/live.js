// meshscope dashboard: the live feed (/ws/live). Edge messages ("type": "edges", or none from an
// older server) feed the live edges table and the tail; link messages ("type": "links") update the
// map's links at once, so a link that goes down shows within a second; the hub's heartbeat
// ("type": "heartbeat", every second) says how fresh every source of every region is (freshness.js
// shows it), and which regions the dashboard cannot vouch for: drawn grey at once.
"use strict";

const LIVE_SECONDS = 5;

function takeEdges(message) {
  const ts = message.ts;
  if (typeof ts !== "number") return;
  if (list(message.edges).length) state.liveTs = Math.max(state.liveTs || 0, ts);
  if (typeof message.as_of === "number") state.liveAsOf = Math.max(state.liveAsOf || 0, message.as_of);
  for (const e of list(message.edges)) {
    if (e.src === e.dst) continue;
    const k = key(e.src, e.dst);
    if (!state.live.has(k)) state.live.set(k, new Map());
    const perSecond = state.live.get(k);
    const cur = perSecond.get(ts) || { count: 0, delivered: 0, errors: 0, e2e_p99: null, hop_p99: null };
    cur.count += num(e.count);
    cur.delivered += num(e.delivered);
    cur.errors += num(e.errors);
    if (e.e2e_p99 !== null && e.e2e_p99 !== undefined) cur.e2e_p99 = Math.max(cur.e2e_p99 || 0, num(e.e2e_p99));
    if (e.hop_p99 !== null && e.hop_p99 !== undefined) cur.hop_p99 = Math.max(cur.hop_p99 || 0, num(e.hop_p99));
    perSecond.set(ts, cur);
  }
  for (const s of list(message.samples)) state.samples.push(s);
  if (state.samples.length > 500) state.samples.splice(0, state.samples.length - 500);
}

const LINK_FIELDS = ["state", "cause", "reported_state", "edge_state", "last_sample", "rtt_ms", "security", "via",
  "governance_mismatch", "gov", "local_gov", "queue_depth", "reconnects", "clock_offset_ms", "peer_skew_s"];
const QUIET_FIELDS = ["rtt_ms", "last_sample", "clock_offset_ms"]; // they change often and redraw nothing

/** Merge a relay's link report into the map's links; true when something the map shows changed. */
function takeLinks(message) {
  if (view.end !== null) return false; // a past window keeps the links it had then
  const links = list(state.topology.links);
  let changed = false;
  for (const report of list(message.links)) {
    if (!report || typeof report.src !== "string" || typeof report.dst !== "string") continue;
    let link = links.find((l) => l.src === report.src && l.dst === report.dst);
    if (!link) {
      link = { src: report.src, dst: report.dst };
      links.push(link);
      changed = true;
    }
    for (const field of LINK_FIELDS) {
      if (!(field in report) || link[field] === report[field]) continue;
      if (!QUIET_FIELDS.includes(field)) changed = true;
      link[field] = report[field];
    }
    link.stale = false;
  }
  state.topology.links = links;
  return changed;
}

function takeLive(message) {
  state.messages += 1;
  state.lastMessageAt = Date.now() / 1000;
  if (message.type === "heartbeat") {
    state.heartbeat = message;
    if (takeVerdicts(message.freshness)) drawMap();
  } else if (message.type === "links") {
    if (takeLinks(message)) drawMap();
  } else if (message.type === undefined || message.type === "edges") {
    takeEdges(message);
  }
}

/** One edge's figures over the LIVE_SECONDS ending at `end` (now, or the last second with data). */
function liveStats(src, dst, end = nowS()) {
  const perSecond = state.live.get(key(src, dst));
  if (!perSecond) return null;
  let count = 0, errors = 0, p99 = null;
  for (const [ts, v] of perSecond) {
    if (ts < end - 60) { perSecond.delete(ts); continue; }
    if (ts <= end - LIVE_SECONDS - 1 || ts > end) continue;
    count += v.count;
    errors += v.errors;
    if (v.e2e_p99 !== null) p99 = Math.max(p99 || 0, v.e2e_p99);
  }
  return { rate: count / LIVE_SECONDS, errors, errorPct: count ? (100 * errors) / count : errors ? 100 : 0, p99 };
}

function connectLive() {
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/live`);
  ws.onopen = () => { state.feedLost = false; };
  ws.onmessage = (ev) => {
    let message;
    try {
      message = JSON.parse(ev.data);
    } catch {
      return;
    }
    takeLive(message);
  };
  ws.onclose = async () => {
    state.feedLost = true;
    showFreshness();
    // a refused upgrade shows no status to scripts: ask the API whether the session ended
    const reply = await fetch("/api/session").catch(() => null);
    if (reply && reply.status === 401) return signIn();
    setTimeout(connectLive, 1000);
  };
}

/** The live edges table: live figures while they are live; else the last known ones, greyed, with their time. */
function drawLiveEdges() {
  const fresh = sourceFreshness("flows").level === "live" && liveIndicator().kind === "on";
  const end = fresh || !state.liveTs ? nowS() : state.liveTs;
  $("live-caption").textContent = liveCaption(state.liveAsOf, fresh);
  const rows = [];
  for (const k of state.live.keys()) {
    const [src, dst] = JSON.parse(k);
    const s = liveStats(src, dst, end);
    if (s && (s.rate > 0 || s.errors > 0)) rows.push({ src, dst, ...s });
  }
  rows.sort((a, b) => b.rate - a.rate);
  fillRows($("live-edges-body"), rows.slice(0, 8).map((r) => {
    const tr = row([`${r.src} → ${r.dst}`, { text: fmt(r.rate, 1), class: "rate" },
      r.p99 === null ? "–" : `${fmt(r.p99, 0)} ms`, `${fmt(r.errorPct, 1)} %`],
    { class: "clickable live-edge", tabindex: 0 });
    tr.dataset.src = r.src;
    tr.dataset.dst = r.dst;
    return tr;
  }), 4, "waiting for traffic…");
}
