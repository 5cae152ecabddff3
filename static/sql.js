// meshscope dashboard: the SQL drawer (sql role): read-only queries over the flow history, CSV export.
"use strict";

async function runSql() {
  const sql = $("sql-text").value;
  $("sql-status").textContent = "running…";
  $("sql-error").hidden = true;
  try {
    const r = await getJSON("/api/sql", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql }) });
    const cell = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : v);
    $("sql-table").replaceChildren(
      el("thead", {}, el("tr", {}, list(r.columns).map((c) => el("th", { text: String(c) })))),
      el("tbody", {}, list(r.rows).map((values) => row(list(values).map(cell)))),
    );
    $("sql-status").textContent = `${list(r.rows).length} rows${r.truncated ? ` (cut at ${r.row_limit})` : ""} · ${fmt(r.elapsed_ms, 1)} ms · ${r.rows_read} rows read`;
  } catch (err) {
    $("sql-error").hidden = false;
    $("sql-error").textContent = err.message || String(err);
    $("sql-status").textContent = "failed";
  }
}

async function downloadCsv() {
  const reply = await fetch("/api/sql?format=csv", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql: $("sql-text").value }) });
  if (reply.status === 401) return signIn();
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    $("sql-error").hidden = false;
    $("sql-error").textContent = body.error || reply.statusText;
    return;
  }
  const url = URL.createObjectURL(await reply.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = "meshscope.csv";
  a.click();
  URL.revokeObjectURL(url);
}

function wireSql() {
  $("sql-toggle").addEventListener("click", () => {
    $("sql").hidden = !$("sql").hidden;
    $("sql-toggle").classList.toggle("active", !$("sql").hidden);
  });
  $("sql-run").addEventListener("click", runSql);
  $("sql-csv").addEventListener("click", downloadCsv);
  $("sql-text").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql(); });
}
