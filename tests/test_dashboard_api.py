"""The dashboard's API against a running stack: real relays, Valkey, ClickHouse and collector."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from tests.conftest import AUTH, CE_JSON, Stack, cloud_event, eventually, scaled

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"


async def publish_and_settle(stack: Stack, http: httpx.AsyncClient, n: int) -> list[str]:
    """Publish ``n`` orders.x events in A with a subscriber in C; wait until all flow records are stored."""
    mesh = stack.mesh
    sub = mesh[C].relay.subscribe(["orders.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
    batch = [cloud_event("orders.x", f"o-{i}") for i in range(n)]
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch))
    assert reply.status_code == 202
    await eventually(lambda: sub.queue.qsize() == n)
    collector = stack.dashboard.collector
    await eventually(lambda: collector.metrics.get("collector_rows_inserted_total") >= 3 * n, 15)
    traces = []
    while not sub.queue.empty():
        traces.append(orjson.loads(sub.queue.get_nowait())["traceparent"].split("-")[1])
    return traces


async def test_topology_edges_and_traces_match_what_was_published(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A, B, C])
    traces = await publish_and_settle(stack, http, 40)

    topo = (await http.get(f"{stack.url}/api/topology?window=5m")).json()
    assert topo["window"] == "5m"
    edges = {(e["src"], e["dst"]): e for e in topo["edges"]}
    ac = edges[(A, C)]
    assert (ac["events"], ac["delivered"], ac["errors"]) == (40, 40, 0)
    assert ac["events_per_s"] == pytest.approx(40 / 300, rel=0.01)
    assert ac["health"] == "green" and ac["e2e_p99"] is not None and ac["e2e_p50"] <= ac["e2e_p99"]
    assert (A, B) not in edges  # B had no interest: nothing crossed that way
    regions = await eventually(lambda: _regions(http, stack), 10)
    assert regions[A]["events"] == 40 and regions[A]["provider"] == "aws"
    assert regions[C]["lat"] == pytest.approx(52.37)
    links = await eventually(lambda: _links(http, stack), 10)
    assert links[(A, C)]["state"] == "up" and links[(A, C)]["rtt_ms"] >= 0

    edge = (await http.get(f"{stack.url}/api/edges/{A}/{C}?window=5m")).json()
    assert (edge["src"], edge["dst"], edge["events"]) == (A, C, 40)
    assert sum(round(p["events_per_s"] * edge["step_s"]) for p in edge["series"]) == 40
    assert edge["series"][-1]["t"] - edge["series"][0]["t"] <= 300
    assert [t["topic"] for t in edge["topics"]] == ["orders.x"]
    assert {s["trace_id"] for s in edge["samples"]} <= set(traces) and edge["samples"]

    trace = (await http.get(f"{stack.url}/api/traces/{traces[0]}")).json()
    hops = trace["hops"]
    assert [(h["kind"], h["depth"]) for h in hops] == [("publish", 0), ("forward", 1), ("deliver", 2)]
    assert hops[1]["parent_span_id"] == hops[0]["span_id"] and hops[2]["parent_span_id"] == hops[1]["span_id"]
    assert [(h["src_region"], h["dst_region"]) for h in hops] == [(A, A), (A, C), (A, C)]
    assert all(h["status"] == "ok" for h in hops)


async def _regions(http: httpx.AsyncClient, stack: Stack) -> dict[str, Any] | None:
    topo = (await http.get(f"{stack.url}/api/topology?window=5m")).json()
    regions = {r["id"]: r for r in topo["regions"]}
    return regions if set(regions) == {A, B, C} else None


async def _links(http: httpx.AsyncClient, stack: Stack) -> dict[tuple[str, str], Any] | None:
    topo = (await http.get(f"{stack.url}/api/topology?window=1m")).json()
    links = {(x["src"], x["dst"]): x for x in topo["links"]}
    # the first samples synced may be from before the links came up; the latest must say up
    return links if (A, C) in links and links[(A, C)]["state"] == "up" else None


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/api/topology?window=7m", 400, "window must be one of"),
        ("/api/edges/a/b?window=forever", 400, "window must be one of"),
        ("/api/traces/not-a-trace", 400, "32 lower-case hex"),
        ("/api/traces/" + "ab" * 16, 404, "no flow records"),
    ],
)
async def test_bad_api_requests_say_why(
    stack_factory: Any, http: httpx.AsyncClient, path: str, status: int, says: str
) -> None:
    stack = await stack_factory([A])
    reply = await http.get(stack.url + path)
    assert reply.status_code == status
    assert says in reply.json()["error"]


REFUSED = [
    "INSERT INTO flows (event_id) VALUES ('x')",
    "ALTER TABLE flows DELETE WHERE 1",
    "DROP TABLE flows",
    "TRUNCATE TABLE flows",
    "SYSTEM FLUSH LOGS",
    "SET max_threads = 1",
    "CREATE TABLE t (a UInt8) ENGINE = Memory",
    "OPTIMIZE TABLE flows FINAL",
    "KILL QUERY WHERE 1",
    "GRANT SELECT ON *.* TO default",
    "SELECT 1; DROP TABLE flows",
    "SELECT count() FROM flows; SELECT 1",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",
    "SELECT 1 IN system.users",
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a String')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k.csv')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT name FROM system.tables",
    "SELECT * FROM flows INTO OUTFILE '/tmp/x.csv'",
    "SELECT 1 SETTINGS readonly = 0",
    "WITH x AS (SELECT * FROM system.users) SELECT * FROM x",
    "DESCRIBE TABLE system.tables",
    "SHOW TABLES FROM system",
    "SHOW GRANTS",
    "/* comment */ DELETE FROM flows WHERE 1",
    "",
]


async def test_refused_sql_changes_nothing(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A, C])
    await publish_and_settle(stack, http, 5)
    before = await _sql(http, stack, "SELECT count() FROM flows")
    tables_before = await _sql(http, stack, "SHOW TABLES")
    for sql in REFUSED:
        reply = await http.post(f"{stack.url}/api/sql", json={"sql": sql})
        assert reply.status_code in (400, 403), (sql, reply.text)
        error = reply.json()["error"]
        assert error, sql
        assert reply.status_code == 403 or not sql, (sql, error)  # refused before anything ran
        assert await _sql(http, stack, "SELECT count() FROM flows") == before, sql
        assert await _sql(http, stack, "SHOW TABLES") == tables_before, sql


async def _sql(http: httpx.AsyncClient, stack: Stack, sql: str, **params: str) -> Any:
    reply = await http.post(f"{stack.url}/api/sql", json={"sql": sql}, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()["rows"]


async def test_sql_answers_with_columns_rows_timing_and_csv(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A, C])
    await publish_and_settle(stack, http, 10)
    reply = await http.post(
        f"{stack.url}/api/sql", json={"sql": "SELECT kind, count() AS n FROM flows GROUP BY kind ORDER BY kind;"}
    )
    body = reply.json()
    assert body["columns"] == ["kind", "n"]
    assert body["rows"] == [["deliver", 10], ["forward", 10], ["publish", 10]]
    assert body["elapsed_ms"] > 0 and body["rows_read"] > 0 and body["truncated"] is False
    text = await http.post(
        f"{stack.url}/api/sql",
        content="SELECT count() AS n FROM meshscope_unused_alias",
        headers={"content-type": "text/plain"},
    )
    error = text.json()["error"]  # ClickHouse's error: its name and first line, without the query echo
    assert text.status_code == 400 and error.startswith("UNKNOWN_TABLE (code 60): ") and "In scope" not in error
    csv = await http.post(
        f"{stack.url}/api/sql",
        params={"format": "csv"},
        json={"sql": "SELECT kind, count() AS n FROM flows GROUP BY kind ORDER BY kind"},
    )
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines() == ["kind,n", "deliver,10", "forward,10", "publish,10"]
    for allowed in (
        "SELECT 1",
        "SELECT now()",
        "SELECT 1 + 1",
        "EXPLAIN SELECT * FROM flows",
        "DESCRIBE TABLE flows",
        "SHOW TABLES",
        "SHOW CREATE TABLE flows",
        "SELECT * FROM numbers(3)",
    ):
        assert (await http.post(f"{stack.url}/api/sql", json={"sql": allowed})).status_code == 200, allowed


async def test_sql_limits_hold(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A], sql_max_rows=5, sql_max_execution_s=0.5, sql_max_memory_bytes=8 << 20)
    rows = await http.post(f"{stack.url}/api/sql", json={"sql": "SELECT number FROM numbers(100)"})
    assert rows.json()["truncated"] is True and len(rows.json()["rows"]) == 5
    slow = await http.post(
        f"{stack.url}/api/sql", json={"sql": "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1"}
    )
    assert slow.status_code == 400 and "TIMEOUT_EXCEEDED" in slow.json()["error"]
    hungry = await http.post(
        f"{stack.url}/api/sql", json={"sql": "SELECT groupArray(toString(number)) FROM numbers(10000000)"}
    )
    assert hungry.status_code == 400 and "MEMORY_LIMIT_EXCEEDED" in hungry.json()["error"]


async def test_live_websocket_reports_edges(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A, C])
    async with connect(stack.url.replace("http", "ws") + "/ws/live", additional_headers=AUTH) as ws:
        await asyncio.sleep(scaled(0.2))
        await publish_and_settle(stack, http, 12)
        deadline = asyncio.get_running_loop().time() + scaled(5)
        seen: dict[str, int] = {}
        while asyncio.get_running_loop().time() < deadline and seen.get("delivered", 0) < 12:
            message = orjson.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
            for e in message["edges"]:
                if (e["src"], e["dst"]) == (A, C):
                    seen["count"] = seen.get("count", 0) + e["count"]
                    seen["delivered"] = seen.get("delivered", 0) + e["delivered"]
        assert seen == {"count": 12, "delivered": 12}


async def test_map_page_and_assets_are_served_locally(stack_factory: Any, http: httpx.AsyncClient) -> None:
    stack = await stack_factory([A])
    page = await http.get(stack.url + "/")
    assert page.status_code == 200 and "/static/plotly.min.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    plotly_js = await http.get(stack.url + "/static/plotly.min.js")
    assert plotly_js.status_code == 200 and len(plotly_js.content) > 1_000_000
    world = await http.get(stack.url + "/static/topojson/world_110m.json")
    assert world.status_code == 200 and world.json()["type"] == "Topology"
    app_js = (await http.get(stack.url + "/static/app.js")).text
    assert 'topojsonURL: "/static/topojson/"' in app_js
