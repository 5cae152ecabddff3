// meshscope dashboard: the SQL drawer (sql role): read-only queries over the flow history, and the
// CSV of the rows the grid shows (made here: running the query again could answer other rows).
"use strict";

// the result the grid shows: the CSV button exports exactly it, never a new run of the query
let sqlShown = null;

async function runSql() {
  const sql = $("sql-text").value;
  $("sql-status").textContent = "running…";
  $("sql-error").hidden = true;
  try {
    const r = await getJSON("/api/sql", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ sql }) });
    const columns = list(r.columns).map(String);
    const rows = list(r.rows).map((values) => list(values));
    $("sql-table").replaceChildren(
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c })))),
      el("tbody", {}, rows.map((values) => row(values.map(gridCell)))),
    );
    sqlShown = { columns, rows };
    $("sql-csv").disabled = false;
    $("sql-status").textContent = `${rows.length} rows${r.truncated ? ` (cut at ${r.row_limit})` : ""} · ${fmt(r.elapsed_ms, 1)} ms · ${r.rows_read} rows read`;
  } catch (err) {
    $("sql-error").hidden = false;
    $("sql-error").textContent = err.message || String(err);
    $("sql-status").textContent = "failed";
  }
}

const gridCell = (v) => (typeof v === "object" && v !== null ? JSON.stringify(v) : v);

// spreadsheets run a text cell that starts with one of these as a formula (dashboard/csvexport.py)
const FORMULA_LEADS = ["=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20"];

/** One CSV field (RFC 4180) of a value as the grid shows it; NULL is empty, formula-like text gets a quote. */
function csvField(v) {
  if (v === null || v === undefined) return "";
  let text = String(gridCell(v));
  if (typeof v === "string" && FORMULA_LEADS.some((lead) => text.startsWith(lead))) text = `'${text}`;
  return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

/** The grid's result as CSV with CRLF rows, as the server's ?format=csv writes it. */
function gridCsv(shown) {
  const header = shown.columns.map((c) => csvField(String(c)));
  return [header, ...shown.rows.map((values) => values.map(csvField))].map((fields) => fields.join(",") + "\r\n").join("");
}

function downloadCsv() {
  if (!sqlShown) return;
  const url = URL.createObjectURL(new Blob([gridCsv(sqlShown)], { type: "text/csv;charset=utf-8" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = "meshscope.csv";
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 0);
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
