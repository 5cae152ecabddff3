"""The dashboard as an on-call engineer uses it, in a real headless Chromium against a running stack.

Two relays carry live traffic (A -> B, where a durable group waits with no member); a third region
is planted with history in ClickHouse and a relay report that stopped a minute ago, so one edge is
one the view cannot vouch for. The browser answers the questions an on-call engineer asks:
which edge is worst now (the Edges table: sorted, filtered, in the map's states with their ages
and causes, unknown never shown as 0); since when a group lags (a deleted group is gone, every
column in view); an event id in the search box (its time, its hops with every column); the alerts
panel (wrapped between words, never inside one); the CSV of the SQL grid (the rows it shows, never
a new run of the query); Routes and Governance in time travel (what held then, from the link
samples and the governance history, and saying so).
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis

from collector.alertrules import parse_rules
from dashboard.csvexport import neutralize
from meshcore import storekeys as sk
from tests.conftest import AUTH, CE_JSON, TEST_TOKEN, cloud_event, eventually, scaled
from tests.test_browser import CHROMIUM, FLAGS, require_chromium
from tests.test_browser_regions import SILENT, plant_silent_region

A, B = "aws:us-east-1", "gcp:europe-west1"
GROUP = "audit"
# fires at the first evaluation, on the group that waits with no member; a summary of long tokens
ALERT_RULES = """
[[rule]]
id = "OnCallGroupStopped"
kind = "group_lag"
severity = "critical"
statuses = ["STOP"]
samples = 2
for = "0s"
window = "10m"
summary = "Consumer group {group} in {region} has no member: acknowledgement-of-orders.created is-waiting"
"""
DOOMED = "doomed"  # a group deleted while its relay keeps reporting: it leaves the Lag view


def edge_table(page: Any) -> list[dict[str, Any]]:
    """The Edges table's rows as shown: pair, state, the cells' text, whether greyed."""
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll('#edges-body tr.edge-row')].map(tr => ({
                 src: tr.dataset.src, dst: tr.dataset.dst, state: tr.dataset.state,
                 cells: [...tr.cells].map(td => td.textContent), stale: tr.classList.contains('stale')}))"""
        )
    )


def map_states(page: Any) -> dict[str, str]:
    return dict(
        page.evaluate(
            "() => document.getElementById('map').data.filter(t => t.name === 'edge')"
            ".map(t => [t.meta.src + ' → ' + t.meta.dst, t.meta.state])"
        )
    )


def sort_by(page: Any, column: str) -> list[dict[str, Any]]:
    page.click(f'#edges-table th[data-sort="{column}"] button')
    return edge_table(page)


NOT_KNOWN = "\u2013"  # the en dash the page shows for a figure it does not know
NULL_CELL = ""  # a NULL in the SQL grid shows as NOT_KNOWN, in the CSV as an empty cell


def figure(text: str) -> float | None:
    return None if text == NOT_KNOWN else float(text)


def edges_view(page: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    page.click('#views button[data-tab="edges"]')
    page.wait_for_function(
        "([a, s]) => { const rows = [...document.querySelectorAll('#edges-body tr.edge-row')];"
        " return rows.some(r => r.dataset.src === a) && rows.some(r => r.dataset.src === s); }",
        arg=[A, SILENT],
        timeout=20_000,
    )
    seen["rows"] = edge_table(page)
    seen["map"] = map_states(page)
    seen["by_p99_desc"] = sort_by(page, "p99")
    seen["by_p99_asc"] = sort_by(page, "p99")
    seen["by_err"] = sort_by(page, "err")
    seen["by_loss"] = sort_by(page, "loss")
    seen["by_rate"] = sort_by(page, "rate")
    page.select_option("#edge-state-filter", "unknown")
    seen["only_unknown"] = edge_table(page)
    page.select_option("#edge-state-filter", "")
    page.fill("#edge-filter", B)
    seen["only_b"] = edge_table(page)
    page.fill("#edge-filter", "")
    page.click(f'#edges-body tr.edge-row[data-src="{A}"]')
    page.wait_for_function("() => !document.getElementById('panel').hidden")
    seen["panel_title"] = page.text_content("#panel-title")
    seen["url"] = page.url
    page.click("#panel-close")
    return seen


def lag_view(page: Any) -> dict[str, Any]:
    page.click('#views button[data-tab="lag"]')
    page.wait_for_function(
        "([g, d]) => { const rows = [...document.querySelectorAll('#groups-body tr')].map(r => r.cells[1].textContent);"
        " return rows.includes(g) && !rows.includes(d); }",
        arg=[GROUP, DOOMED],
        timeout=scaled(20) * 1000,
    )
    rows = page.evaluate(
        "() => [...document.querySelectorAll('#groups-body tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    return {"rows": rows, "fits": fits(page, "side")}


def fits(page: Any, container: str) -> dict[str, Any]:
    """Whether every column of the open drawer is in view: nothing scrolls sideways, no cell is cut."""
    return dict(
        page.evaluate(
            """(id) => { const box = document.getElementById(id);
                 const right = box.getBoundingClientRect().right;
                 const cut = [...box.querySelectorAll('table')].filter(t => t.offsetParent !== null)
                   .flatMap(t => [...t.querySelectorAll('th, td')])
                   .filter(c => c.getBoundingClientRect().right > right + 1 || c.scrollWidth > c.clientWidth + 1)
                   .map(c => c.textContent);
                 return {scroll: box.scrollWidth, client: box.clientWidth, cut}; }""",
            container,
        )
    )


def broken_tokens(page: Any, selector: str) -> list[str]:
    """Words (runs without white space) of the cells under ``selector`` that the layout split over two lines."""
    return list(
        page.evaluate(
            """(sel) => { const out = [];
                 for (const td of document.querySelectorAll(sel)) {
                   const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
                   for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                     for (const m of node.data.matchAll(/\\S+/g)) {
                       const range = document.createRange();
                       range.setStart(node, m.index);
                       range.setEnd(node, m.index + m[0].length);
                       const tops = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
                       if (tops.size > 1) out.push(m[0]);
                     } } }
                 return out; }""",
            selector,
        )
    )


def search_and_trace(page: Any, event_id: str) -> dict[str, Any]:
    page.fill("#search", event_id)
    page.press("#search", "Enter")
    page.wait_for_function("() => document.querySelector('#search-results li') !== null", timeout=15_000)
    seen: dict[str, Any] = {"results": page.text_content("#search-results")}
    page.click("#search-results a.trace-link")
    page.wait_for_function("() => document.querySelectorAll('#trace-body tr').length >= 2", timeout=15_000)
    seen["hops"] = page.evaluate(
        "() => [...document.querySelectorAll('#trace-body tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    seen["fits"] = fits(page, "panel")
    page.keyboard.press("Escape")
    page.click("#panel-close")
    return seen


def alerts_view(page: Any) -> dict[str, Any]:
    page.click('#views button[data-tab="alerts"]')
    page.wait_for_function(
        "() => [...document.querySelectorAll('#alerts-body tr')].some(r => r.cells.length > 2)", timeout=20_000
    )
    return {
        "rows": page.evaluate(
            "() => [...document.querySelectorAll('#alerts-body tr')].map(r => [...r.cells].map(c => c.textContent))"
        ),
        "broken": broken_tokens(page, "#alerts-body td"),
        "fits": fits(page, "side"),
    }


CSV_QUERY = (
    "SELECT event_id, rand() AS r, toString(now64(6)) AS t, concat('=HYPERLINK(\"', event_id, '\")') AS f, "
    "concat('a,\"b\"', char(10), 'c') AS odd, NULL AS z FROM flows ORDER BY ts LIMIT 5"
)


def sql_csv(page: Any) -> dict[str, Any]:
    """Run a query whose every run answers other rows (rand(), now64()), then download the grid as CSV."""
    page.click("#sql-toggle")
    page.fill("#sql-text", CSV_QUERY)
    page.click("#sql-run")
    page.wait_for_function("() => document.querySelectorAll('#sql-table tbody tr').length === 5", timeout=15_000)
    grid = page.evaluate(
        "() => [...document.querySelectorAll('#sql-table tr')].map(r => [...r.cells].map(c => c.textContent))"
    )
    sql_posts: list[str] = []
    page.on("request", lambda r: "/api/sql" in r.url and sql_posts.append(r.url))
    with page.expect_download() as download:
        page.click("#sql-csv")
    path = download.value.path()
    with open(path, encoding="utf-8", newline="") as f:
        raw = f.read()
    page.click("#sql-toggle")
    return {"grid": grid, "csv": raw, "posts": sql_posts}


PAST_S = 600  # the past moment time travel goes to: link samples and a governance version planted then
PAST_VIA = "azure:westeurope"  # the detour A's route to B took then
ROUTE_ROWS = (
    "() => [...document.querySelectorAll('#routes-body tr.route-row')].map(r => [...r.cells].map(c => c.textContent))"
)


def plant_the_past(clickhouse_url: str, db: str, redis_url: str, now: float) -> None:
    """Link samples of A and B, and the governance version applied, as they were ``PAST_S`` ago."""
    from collector.clickhouse import make_client

    at = datetime.fromtimestamp(now - PAST_S, UTC)
    columns = ["ts", "relay", "src_region", "dst_region", "state", "rtt_ms", "queue_depth", "reconnects",
               "security", "via", "peer_gov", "gov"]  # fmt: skip
    rows = []
    for s in range(-40, 20):  # a sample a second around that moment, as relays write them
        ts = at + timedelta(seconds=s)
        rows += [[ts, "relay-a", A, B, "up", 80.0, 0, 0, "mtls", PAST_VIA, "7-old", "7-old"],
                 [ts, "relay-b", B, A, "up", 80.0, 0, 0, "mtls", "", "7-old", "7-old"]]  # fmt: skip
    client = make_client(clickhouse_url)
    try:
        client.insert(f"`{db}`.`links`", rows, column_names=columns)
    finally:
        client.close()
    applied = (at - timedelta(minutes=5)).isoformat()
    document = {"version": 7, "digest": "old", "author": "past-author", "changed_at": applied, "subjects": []}
    store = redis.Redis.from_url(redis_url)
    try:
        store.hset(sk.GOVERNANCE_VERSIONS, "7", orjson.dumps(document))
    finally:
        store.close()


def the_past(page: Any, url: str, end: int) -> dict[str, Any]:
    """Routes and Governance of a past window, then of now."""
    seen: dict[str, Any] = {}
    page.goto(f"{url}/?window=5m&end={end}&view=routes")
    page.wait_for_function(
        "() => document.getElementById('routes-moment').textContent.startsWith('as at')", timeout=20_000
    )
    page.wait_for_function("() => document.querySelectorAll('#routes-body tr.route-row').length > 0")
    seen["routes_moment"] = page.text_content("#routes-moment")
    seen["routes"] = page.evaluate(ROUTE_ROWS)
    page.click('#views button[data-tab="governance"]')
    page.wait_for_function("() => document.getElementById('gov-moment').textContent.startsWith('as at')")
    page.wait_for_function("() => document.getElementById('gov-document').textContent.includes('past-author')")
    seen["gov_moment"] = page.text_content("#gov-moment")
    seen["gov_document"] = page.text_content("#gov-document")
    page.click("#time-live")
    page.wait_for_function("() => document.getElementById('gov-moment').textContent.startsWith('as the relays')")
    seen["gov_live_document"] = page.text_content("#gov-document")
    page.click('#views button[data-tab="routes"]')
    page.wait_for_function("() => document.getElementById('routes-moment').textContent.startsWith('as the relays')")
    seen["routes_live"] = page.evaluate(ROUTE_ROWS)
    return seen


def drive(url: str, event_id: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.goto(f"{url}/login?token={TEST_TOKEN}")
        page.wait_for_function(
            "() => (document.getElementById('map').data || []).some(t => t.name === 'edge')", timeout=20_000
        )
        seen["edges"] = edges_view(page)
        seen["lag"] = lag_view(page)
        seen["search"] = search_and_trace(page, event_id)
        seen["alerts"] = alerts_view(page)
        seen["sql"] = sql_csv(page)
        seen["past"] = the_past(page, url, int(time.time()) - PAST_S)
        browser.close()
    return seen


def check_sorted(rows: list[dict[str, Any]], column: int, descending: bool) -> None:
    """Vouched figures in order, then every row whose figure is not known or cannot be vouched for."""
    values = [None if r["stale"] else figure(r["cells"][column]) for r in rows]
    known = [v for v in values if v is not None]
    assert values[: len(known)] == known, values  # nothing unknown before a known figure
    assert known == sorted(known, reverse=descending), values
    assert len(known) >= 1 and len(values) > len(known), values  # both kinds were there to order


@pytest.mark.browser
async def test_the_on_call_questions_answer_in_the_browser(
    stack_factory: Any, clickhouse_url: str, redis_url: str
) -> None:
    require_chromium()
    from websockets.asyncio.client import connect

    stack = await stack_factory([A, B])
    alerting = stack.dashboard.collector.alerts
    assert alerting is not None
    alerting.rules = parse_rules(ALERT_RULES, "on-call test rules")
    alerting.config = replace(alerting.config, interval_s=1.0)
    await asyncio.to_thread(plant_silent_region, clickhouse_url, stack.database, redis_url, 60)
    await asyncio.to_thread(plant_the_past, clickhouse_url, stack.database, redis_url, time.time())
    for name in (GROUP, DOOMED):
        group = f"{stack.mesh[B].ws_url}/v1/subscribe?topic=orders.>&group={name}&consumer=c"
        async with connect(group, additional_headers=AUTH):
            pass  # a durable group in B with no member: A's events flow to B and wait there
    await eventually(lambda: stack.mesh[A].relay.routes.route(B) is not None, 10)

    event_id = f"oncall-{secrets.token_hex(4)}"  # the event the search box finds

    async def live_edge(http: httpx.AsyncClient) -> bool:
        event = orjson.dumps(cloud_event("orders.created", f"live-{secrets.token_hex(4)}"))
        assert (await http.post(f"{stack.mesh[A].url}/v1/events", headers=CE_JSON, content=event)).status_code == 202
        edges = (await http.get(f"{stack.url}/api/topology?window=15m")).json()["edges"]
        return any((e["src"], e["dst"]) == (A, B) for e in edges)

    async def sampled(http: httpx.AsyncClient, name: str) -> bool:
        groups = (await http.get(f"{stack.url}/api/groups?window=5m")).json()["groups"]
        return any(g["group"] == name and g["status"] == "STOP" for g in groups)

    async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
        event = orjson.dumps(cloud_event("orders.created", event_id))
        assert (await http.post(f"{stack.mesh[A].url}/v1/events", headers=CE_JSON, content=event)).status_code == 202
        await eventually(lambda: live_edge(http), 20, 0.5)
        await eventually(lambda: sampled(http, DOOMED), 20, 0.5)
        assert (await http.delete(f"{stack.mesh[B].url}/v1/groups/{DOOMED}")).status_code == 204
    seen = await asyncio.wait_for(asyncio.to_thread(drive, stack.url, event_id), scaled(120))
    assert not seen["console_errors"], seen["console_errors"]

    # the Edges table: the map's edges, in the map's states, sortable, filterable
    ev = seen["edges"]
    rows = {f"{r['src']} → {r['dst']}": r for r in ev["rows"]}
    assert set(rows) == set(ev["map"]), (rows, ev["map"])
    for pair, r in rows.items():
        assert r["state"] == ev["map"][pair] and r["cells"][1] == r["state"], (pair, r, ev["map"])
    silent = rows[f"{SILENT} → {A}"]
    assert silent["state"] == "unknown" and silent["stale"], silent
    assert silent["cells"][7].startswith("no data for"), silent  # its age: since when nothing came
    assert "no report from its relays" in silent["cells"][8], silent  # the cause, as on the map
    assert all(c != "0" and c != "0.00" for c in silent["cells"][2:7]), silent  # never 0 for unknown
    live = rows[f"{A} → {B}"]
    assert live["state"] != "unknown" and not live["stale"], live
    assert figure(live["cells"][2]) is not None and live["cells"][7].endswith(" old"), live
    check_sorted(ev["by_p99_desc"], 3, True)
    check_sorted(ev["by_p99_asc"], 3, False)
    check_sorted(ev["by_err"], 4, True)
    check_sorted(ev["by_loss"], 5, True)
    check_sorted(ev["by_rate"], 2, True)
    assert [r["src"] for r in ev["only_unknown"]] == [SILENT], ev["only_unknown"]
    assert ev["only_b"] and all(B in (r["src"], r["dst"]) for r in ev["only_b"]), ev["only_b"]
    assert ev["panel_title"] == f"{A} → {B}" and "view=edges" in ev["url"], ev

    # the Lag view: since when a group is behind and without a member; a deleted group gone; nothing cut off
    lag = seen["lag"]
    (audit,) = [r for r in lag["rows"] if r[1] == GROUP]
    assert audit[0] == B and audit[2] == "STOP", audit
    assert audit[6].startswith("for ") and "since " in audit[6], audit  # never "0 s"
    assert audit[5].startswith("0, for "), audit
    assert all(r[1] != DOOMED for r in lag["rows"]), lag["rows"]
    assert lag["fits"]["scroll"] <= lag["fits"]["client"] and not lag["fits"]["cut"], lag["fits"]

    # an event id in the search box: its traces at a local time of day, never NaN; its hops with every column
    found = seen["search"]
    assert "NaN" not in found["results"] and re.search(r" at \d\d:\d\d:\d\d", found["results"]), found["results"]
    assert found["hops"] and all(re.fullmatch(r"\d+\.\d\d", h[4]) and h[6] for h in found["hops"]), found["hops"]
    assert found["fits"]["scroll"] <= found["fits"]["client"] and not found["fits"]["cut"], found["fits"]
    # the alerts panel wraps between words, never inside one
    alerts = seen["alerts"]
    assert any(r[2] == "OnCallGroupStopped" for r in alerts["rows"]), alerts["rows"]
    assert not alerts["broken"], alerts["broken"]
    assert alerts["fits"]["scroll"] <= alerts["fits"]["client"] and not alerts["fits"]["cut"], alerts["fits"]

    # the CSV button exports the rows the grid shows, not a new run of the query; made safe for a spreadsheet
    sql = seen["sql"]
    assert not sql["posts"], sql["posts"]
    assert sql["csv"].endswith("\r\n"), sql["csv"]
    exported = list(csv.reader(io.StringIO(sql["csv"], newline="")))
    shown = [[NULL_CELL if cell == NOT_KNOWN else cell for cell in r] for r in sql["grid"]]
    assert exported == [[neutralize(cell) for cell in r] for r in shown], (exported, sql["grid"])
    assert exported[1][3].startswith("'=HYPERLINK(") and exported[1][4] == 'a,"b"\nc' and exported[1][5] == ""

    # time travel: Routes and Governance show what held then, and say so; back to live, what holds now
    past = seen["past"]
    assert past["routes_moment"].startswith("as at ") and "link samples" in past["routes_moment"], past
    assert [A, B, PAST_VIA, f"{PAST_VIA} \u2192 {B}", NOT_KNOWN, "detour"] in past["routes"], past["routes"]
    assert past["gov_moment"].startswith("as at ") and "governance history" in past["gov_moment"], past
    assert "7-old" in past["gov_document"] and "past-author" in past["gov_document"], past["gov_document"]
    assert "past-author" not in past["gov_live_document"], past["gov_live_document"]
    assert past["routes_live"] and all(r[2] != PAST_VIA for r in past["routes_live"]), past["routes_live"]
