// meshscope dashboard: how old what the page shows is. The server judges every source of every
// region (meshcore.freshness) and says so in each answer ("freshness") and in a heartbeat on
// /ws/live every second; this file turns that into the header's indicator, the banner, the
// regions drawn stale ("no data for N s"), and the greying of what cannot be vouched for. The page
// never says "live" about data older than a few seconds, names the cause, and keeps showing the
// last known figures as such, with their time.
"use strict";

const FEED_SILENT_S = 5; // no message at all for this long: the feed itself is silent
const TRUSTED_LEVELS = ["live", "behind"];

function ageText(s) {
  const d = Math.max(0, num(s));
  if (d < 100) return `${Math.round(d)} s`;
  if (d < 5400) return `${Math.round(d / 60)} min`;
  if (d < 172800) return `${fmt(d / 3600, 1).replace(".0", "")} h`;
  return `${Math.round(d / 86400)} d`;
}

/** The freshness the page goes by: the last heartbeat's while the feed is up, else the last answer's. */
function freshness() {
  const beat = state.heartbeat;
  if (beat && beat.freshness && Date.now() / 1000 - state.lastMessageAt <= FEED_SILENT_S) return beat.freshness;
  return (state.topology && state.topology.freshness) || null;
}

/** One source over every region: {level, age_s, as_of, cause, says}. */
function sourceFreshness(source) {
  const f = freshness();
  const found = f && f.sources && Object.hasOwn(f.sources, source) ? f.sources[source] : null;
  return found || { level: "unknown", age_s: null, as_of: null, cause: "no word from the dashboard yet", says: "" };
}

const trusted = (level) => TRUSTED_LEVELS.includes(level);

/** {text, kind, title} for the header: live, "15 min behind — collector lag", silent, lost. */
function liveIndicator() {
  const now = Date.now() / 1000;
  if (state.feedLost) return { text: "live feed lost, reconnecting…", kind: "off", title: "the /ws/live socket closed" };
  if (!state.lastMessageAt) return { text: "connecting…", kind: "off", title: "" };
  const silent = now - state.lastMessageAt;
  if (silent > FEED_SILENT_S) {
    return { text: `feed silent for ${ageText(silent)}`, kind: "off",
      title: "no message from the dashboard on /ws/live, not even its heartbeat" };
  }
  const beat = state.heartbeat;
  if (beat && beat.feed && !beat.feed.subscribed) {
    return { text: "feed stopped", kind: "off", title: `the dashboard lost its live channel: ${beat.feed.error || "?"}` };
  }
  const flows = sourceFreshness("flows");
  if (flows.level === "live") return { text: `live · ${state.messages} updates`, kind: "on", title: "" };
  const age = flows.age_s === null || flows.age_s === undefined ? "unknown" : `${ageText(flows.age_s)} behind`;
  return { text: `${age} — ${flows.cause}`, kind: flows.level === "behind" ? "behind" : "stale", title: flows.says };
}

function showFreshness() {
  const ind = liveIndicator();
  $("live-status").className = `live-status ${ind.kind}`;
  $("live-status").title = ind.title || "live statistics over /ws/live";
  $("live-text").textContent = ind.text;
  const f = freshness();
  const lines = list(f && f.banner).filter((x) => typeof x === "string" && x);
  const banner = $("banner");
  banner.hidden = lines.length === 0;
  banner.replaceChildren(...lines.map((x) => el("div", {}, x)));
  const flows = sourceFreshness("flows");
  $("map").dataset.freshness = flows.level;
  $("live-edges").classList.toggle("stale", !(flows.level === "live" && ind.kind === "on"));
}

/** The caption of the live edges: the last 5 s, or the figures' time and why they are not live. */
function liveCaption(asOf, fresh) {
  if (fresh) return `events/s over the last ${LIVE_SECONDS} s`;
  const flows = sourceFreshness("flows");
  const when = asOf ? `as of ${clock(asOf)}` : "nothing live yet";
  return `${when} · ${flows.says || flows.cause || "not live"}`;
}

/** Each region's verdict of a heartbeat into the map's regions; true when one turned stale or back, or
 * its "no data for N s" moved on by a step worth a redraw. A past window keeps what it was drawn with. */
function takeVerdicts(fresh) {
  if (view.end !== null || !state.topology || !fresh || typeof fresh.verdicts !== "object") return false;
  let changed = false;
  for (const region of list(state.topology.regions)) {
    const v = Object.hasOwn(fresh.verdicts, region.id) ? fresh.verdicts[region.id] : null;
    if (!v || typeof v !== "object") continue;
    const stale = v.stale === true;
    const step = (r) => (r.stale === true && r.freshness ? Math.round(num(r.freshness.no_data_s) / 5) : null);
    const before = step(region);
    region.stale = stale;
    region.freshness = { level: String(v.level || ""), heard_at: v.heard_at, no_data_s: v.no_data_s,
      cause: typeof v.cause === "string" ? v.cause : "" };
    if (before !== step(region)) changed = true;
  }
  return changed;
}
