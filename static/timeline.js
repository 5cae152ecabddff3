// meshscope dashboard: time travel. A scrubber over the last 24 h (events/s and errors from
// /api/timeline) where a click or a drag picks the end of the window, a time picker, a Live
// button, play (the 1m window stepping a minute per second) and "compare with".
"use strict";

const RANGE_S = 86400;
const PLAY_STEP_S = 60;
const PLAY_TICK_MS = 1000;
const SCRUB_HEIGHT = 38;

function rangeOf() {
  const to = nowS();
  return { from: to - RANGE_S, to };
}

async function refreshTimeline() {
  const q = mapQuery();
  q.set("window", "24h");
  q.delete("end");
  try {
    state.timeline = await getJSON(`/api/timeline?${q}`);
    $("scrubber").classList.remove("unavailable");
  } catch (err) {
    state.timeline = null;
    $("scrubber").classList.add("unavailable");
    $("scrubber").title = `timeline unavailable: ${err.message || err}`;
  }
  drawScrubber();
}

// ---- drawing -------------------------------------------------------------------------------

function scrubGeometry() {
  const box = $("scrubber");
  const width = Math.max(100, box.clientWidth);
  const { from, to } = rangeOf();
  return { width, from, to, x: (t) => ((t - from) / (to - from)) * width, t: (x) => from + (x / width) * (to - from) };
}

function drawScrubber() {
  const g = scrubGeometry();
  const out = $("scrubber-svg");
  out.setAttribute("width", g.width);
  out.setAttribute("height", SCRUB_HEIGHT);
  out.setAttribute("viewBox", `0 0 ${g.width} ${SCRUB_HEIGHT}`);
  const parts = [];
  const points = list(state.timeline && state.timeline.points).filter((p) => num(p.t) >= g.from - 3600);
  if (points.length) {
    parts.push(...trafficShapes(points, g));
  } else {
    const empty = svg("text", { x: 8, y: 24, class: "scrub-empty" });
    empty.textContent = state.timeline ? "no traffic in the last 24 h" : "timeline unavailable";
    parts.push(empty);
  }
  const ce = compareEnd();
  if (ce !== null) parts.push(windowRect(g, ce, "scrub-compare"));
  const end = view.end ?? g.to;
  parts.push(windowRect(g, end, "scrub-window"));
  parts.push(svg("line", { x1: g.x(end), x2: g.x(end), y1: 0, y2: SCRUB_HEIGHT, class: "scrub-cursor" }));
  parts.push(...hourTicks(g));
  out.replaceChildren(...parts);
  const slider = $("scrubber");
  slider.setAttribute("aria-valuemin", String(g.from));
  slider.setAttribute("aria-valuemax", String(g.to));
  slider.setAttribute("aria-valuenow", String(end));
  slider.setAttribute("aria-valuetext", view.end === null ? "live" : localStamp(end));
}

function trafficShapes(points, g) {
  const top = Math.max(1e-9, ...points.map((p) => num(p.events_per_s)));
  const errTop = Math.max(5, ...points.map((p) => num(p.error_pct)));
  const h = SCRUB_HEIGHT - 4;
  const line = points.map((p) => `${g.x(num(p.t)).toFixed(1)},${(h - (num(p.events_per_s) / top) * (h - 4)).toFixed(1)}`);
  const first = g.x(num(points[0].t)).toFixed(1), last = g.x(num(points[points.length - 1].t)).toFixed(1);
  const shapes = [svg("polygon", { points: `${first},${h} ${line.join(" ")} ${last},${h}`, class: "scrub-rate" })];
  const step = Math.max(1, (num(state.timeline.step_s) || 60) / (RANGE_S / g.width));
  for (const p of points) {
    if (num(p.error_pct) <= 0 && num(p.lost) <= 0) continue;
    const bar = Math.max(2, (num(p.error_pct) / errTop) * 12);
    shapes.push(svg("rect", { x: g.x(num(p.t)).toFixed(1), y: SCRUB_HEIGHT - bar, width: step.toFixed(1), height: bar,
      class: num(p.error_pct) > 0 ? "scrub-errors" : "scrub-lost" }));
  }
  return shapes;
}

function windowRect(g, end, cls) {
  const x0 = g.x(end - WINDOW_S[view.window]), x1 = g.x(end);
  return svg("rect", { x: Math.min(x0, x1 - 2), y: 0, width: Math.max(2, x1 - x0), height: SCRUB_HEIGHT, class: cls });
}

function hourTicks(g) {
  const out = [];
  const first = Math.ceil(g.from / 10800) * 10800;
  for (let t = first; t < g.to; t += 10800) {
    const label = svg("text", { x: g.x(t) + 3, y: 10, class: "scrub-tick" });
    label.textContent = localStamp(t).slice(11);
    out.push(svg("line", { x1: g.x(t), x2: g.x(t), y1: 0, y2: SCRUB_HEIGHT, class: "scrub-hour" }), label);
  }
  return out;
}

// ---- picking a time --------------------------------------------------------------------------

/** Go to a window ending at `end` (null: live); `push` for a change worth a history entry. */
function setEnd(end, push = true) {
  const { to } = rangeOf();
  view.end = end === null || end >= to - 30 ? null : Math.floor(end);
  showTime();
  drawScrubber();
  syncUrl(push);
  return refreshAll();
}

function showTime() {
  const live = view.end === null;
  $("time-live").setAttribute("aria-pressed", String(live));
  $("time-live").classList.toggle("active", live);
  $("time-picker").value = live ? "" : localInput(view.end);
  const span = WINDOW_S[view.window];
  $("time-label").textContent = live ? `live · last ${view.window}`
    : `${localStamp(view.end - span)} – ${localStamp(view.end).slice(11)} (${view.window})`;
  document.body.classList.toggle("past", !live);
}

function scrubTimeAt(ev) {
  const g = scrubGeometry();
  const rect = $("scrubber").getBoundingClientRect();
  const x = Math.min(g.width, Math.max(0, ev.clientX - rect.left));
  return Math.floor(g.t(x) / 60) * 60;
}

function hintAt(t) {
  const points = list(state.timeline && state.timeline.points);
  const near = points.reduce((best, p) => (!best || Math.abs(num(p.t) - t) < Math.abs(num(best.t) - t) ? p : best), null);
  const stats = near && Math.abs(num(near.t) - t) <= 2 * (num(state.timeline.step_s) || 60)
    ? ` · ${fmt(near.events_per_s, 1)} ev/s · ${fmt(near.error_pct, 2)} % errors` : "";
  $("scrub-hint").textContent = `${localStamp(t)}${stats}`;
}

function wireScrubber() {
  const box = $("scrubber");
  let dragging = false;
  box.addEventListener("pointerdown", (ev) => {
    dragging = true;
    box.setPointerCapture(ev.pointerId);
    stopPlay();
    previewEnd(scrubTimeAt(ev));
  });
  box.addEventListener("pointermove", (ev) => {
    const t = scrubTimeAt(ev);
    hintAt(t);
    if (dragging) previewEnd(t);
  });
  box.addEventListener("pointerup", (ev) => {
    if (!dragging) return;
    dragging = false;
    setEnd(scrubTimeAt(ev), true);
  });
  box.addEventListener("pointerleave", () => { if (!dragging) $("scrub-hint").textContent = ""; });
  box.addEventListener("keydown", (ev) => {
    const step = ev.shiftKey ? 600 : 60;
    const end = view.end ?? nowS();
    const moves = { ArrowLeft: end - step, ArrowRight: end + step, Home: rangeOf().from, End: null };
    if (!Object.hasOwn(moves, ev.key)) return;
    ev.preventDefault();
    stopPlay();
    setEnd(moves[ev.key], true);
  });
  window.addEventListener("resize", drawScrubber);
}

/** While dragging: move the cursor and the label, fetch nothing yet. */
function previewEnd(t) {
  const { to } = rangeOf();
  view.end = t >= to - 30 ? null : t;
  showTime();
  drawScrubber();
}

function wireTimeControls() {
  $("time-picker").addEventListener("change", () => {
    const value = $("time-picker").value;
    if (!value) return;
    const t = new Date(value).getTime() / 1000;
    if (Number.isFinite(t)) {
      stopPlay();
      setEnd(t, true);
    }
  });
  $("time-live").addEventListener("click", () => { stopPlay(); setEnd(null, true); });
  $("play").addEventListener("click", () => (state.playing ? stopPlay() : startPlay()));
  $("compare").addEventListener("change", () => {
    view.compare = $("compare").value;
    syncUrl(true);
    drawScrubber();
    refreshAll();
  });
}

// ---- play ------------------------------------------------------------------------------------

function firstTraffic() {
  const p = list(state.timeline && state.timeline.points).find((x) => num(x.events_per_s) > 0);
  return p ? num(p.t) : rangeOf().from;
}

function startPlay() {
  const { to } = rangeOf();
  if (view.window !== "1m") {
    view.window = "1m";
    showWindow();
  }
  const start = view.end === null || view.end >= to - PLAY_STEP_S ? firstTraffic() : view.end;
  state.playing = { timer: null };
  $("play").setAttribute("aria-pressed", "true");
  $("play").textContent = "❚❚";
  $("play").setAttribute("aria-label", "pause");
  view.end = Math.floor(start);
  syncUrl(true);
  playStep();
}

async function playStep() {
  const playing = state.playing;
  if (!playing) return;
  const started = performance.now();
  showTime();
  drawScrubber();
  syncUrl(false);
  await refreshAll();
  if (state.playing !== playing) return;
  const next = view.end + PLAY_STEP_S;
  if (next >= nowS()) { // caught up with now: live again
    stopPlay(false);
    setEnd(null, true);
    return;
  }
  playing.timer = setTimeout(() => {
    if (state.playing !== playing) return;
    view.end = next;
    playStep();
  }, Math.max(0, PLAY_TICK_MS - (performance.now() - started)));
}

/** Stop playing; `sync` records where it stopped in the history (not when history moves itself). */
function stopPlay(sync = true) {
  if (!state.playing) return;
  clearTimeout(state.playing.timer);
  state.playing = null;
  $("play").setAttribute("aria-pressed", "false");
  $("play").textContent = "▶";
  $("play").setAttribute("aria-label", "play minute by minute");
  if (sync) syncUrl(true);
}
