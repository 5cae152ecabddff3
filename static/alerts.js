// meshscope dashboard: firing alerts (/api/alerts, polled). The header button counts them, the
// Alerts view lists them, and the map badges edges and regions (map.js). A server without the
// alert evaluator answers {"available": false}: the view says so and nothing else changes.
"use strict";

const ALERT_POLL_MS = 5000;

async function refreshAlerts() {
  try {
    const reply = await getJSON("/api/alerts");
    state.alerts = { alerts: list(reply.alerts), available: reply.available !== false };
  } catch (err) {
    state.alerts = { alerts: [], available: false, error: String(err.message || err) };
  }
  drawAlertCount();
  if (view.tab === "alerts") drawAlerts();
}

function firingAlerts() {
  return state.alerts.alerts.filter((a) => !a.state || a.state === "firing");
}

function drawAlertCount() {
  const badge = $("alert-count");
  const n = firingAlerts().length;
  badge.textContent = state.alerts.available ? String(n) : "–";
  badge.classList.toggle("firing", n > 0);
  $("tab-alerts").setAttribute("aria-label", state.alerts.available ? `alerts: ${n} firing` : "alerts: not available");
}

function alertWhere(labels) {
  const l = labels || {};
  if (l.src && l.dst) return `${l.src} → ${l.dst}`;
  const parts = [l.region || l.src, l.group && `group ${l.group}`, l.topic && `topic ${l.topic}`, l.principal && `by ${l.principal}`];
  return parts.filter(Boolean).join(" · ") || "mesh";
}

function drawAlerts() {
  const note = $("alerts-note");
  if (!state.alerts.available) {
    note.hidden = false;
    note.textContent = state.alerts.error ? `alerts unavailable: ${state.alerts.error}`
      : "Alerting is not available on this server (the collector's alert evaluator is not running).";
  } else {
    note.hidden = true;
  }
  const rows = state.alerts.alerts.map((a) => {
    const l = a.labels || {};
    const tr = row([
      { text: a.severity, class: `sev-${pick(SEVERITY_COLORS, a.severity, null) ? a.severity : "info"}` },
      { text: a.state || "firing", class: a.state === "pending" ? "muted" : "status-bad" },
      a.alertname, alertWhere(l), fmt(a.value, 1), a.since ? ago(a.since) : "–", a.summary,
    ], { class: l.src && l.dst && l.src !== l.dst ? "clickable alert-edge" : "" });
    if (l.src && l.dst && l.src !== l.dst) {
      tr.dataset.src = l.src;
      tr.dataset.dst = l.dst;
      tr.tabIndex = 0;
    }
    return tr;
  });
  fillRows($("alerts-body"), rows, 7, state.alerts.available ? "no alert is firing" : "–");
}
