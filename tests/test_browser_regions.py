"""A region whose telemetry stops is drawn stale, not green: the map in a real headless Chromium.

A stack (two relays, the collector, the dashboard) runs live traffic; a third region is planted
with history in ClickHouse (a marker, and edges to a live region) and a relay report in its store
that stopped a minute ago, as when a region is cut off. The browser must draw that region and its
edges grey with "no data for N s", never in a provider or health colour, while the live regions
keep theirs; once the region reports again, the live feed turns it back within seconds.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.conftest import AUTH, CE_JSON, TEST_TOKEN, cloud_event, eventually, scaled
from tests.test_browser import CHROMIUM, FLAGS, require_chromium

A, B = "aws:us-east-1", "gcp:europe-west1"
SILENT = "onprem:frankfurt-dc"
STALE_COLOR = "#6b7280"  # static/map.js STALE_COLOR


def plant_silent_region(clickhouse_url: str, db: str, redis_url: str, last_report_s: float) -> None:
    """History from SILENT to A in ClickHouse, and SILENT's last relay report ``last_report_s`` ago in the store."""
    from collector.clickhouse import make_client
    from collector.sync import REGION_COLUMNS

    now = datetime.now(UTC)
    client = make_client(clickhouse_url)
    try:
        client.insert(
            f"`{db}`.`regions`",
            [[SILENT, "onprem", 50.1, 8.7, "Frankfurt", "relay-dc", now - timedelta(hours=1), now]],
            column_names=REGION_COLUMNS,
        )
        rows = []
        for i in range(20):
            trace, spans = secrets.token_hex(16), [secrets.token_hex(8) for _ in range(3)]
            at = now - timedelta(seconds=90 + i)
            for n, (kind, dst, parent) in enumerate([("publish", SILENT, ""), ("forward", A, spans[0]),
                                                     ("deliver", A, spans[1])]):  # fmt: skip
                rows.append([at + timedelta(milliseconds=n), f"dc-{i}", trace, spans[n], parent, "orders.created",
                             kind, SILENT, dst, "relay-dc", 20.0, 20.0, "ok", 100, 1, i])  # fmt: skip
        columns = ["ts", "event_id", "trace_id", "span_id", "parent_span_id", "topic", "kind", "src_region",
                   "dst_region", "relay", "hop_ms", "e2e_ms", "status", "bytes", "attempt", "seq"]  # fmt: skip
        client.insert(f"`{db}`.`flows`", rows, column_names=columns)
    finally:
        client.close()
    report(redis_url, last_report_s)


def report(redis_url: str, age_s: float) -> None:
    """SILENT's relay report, as a relay writes it, ``age_s`` old."""
    state = {"ts": int((time.time() - age_s) * 1e6), "region": SILENT, "relay": "relay-dc", "governance": "none",
             "routes": [], "links": [], "subscriptions": [], "groups": [], "interest": []}  # fmt: skip
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset("meshscope:relaystate", SILENT, orjson.dumps(state))
    finally:
        client.close()


def regions_drawn(page: Any) -> dict[str, dict[str, Any]]:
    return {
        r["id"]: r
        for r in page.evaluate(
            """() => {
              const t = document.getElementById('map').data.find(t => t.name === 'regions');
              return t.customdata.map((id, i) => ({id, meta: t.meta[i], text: t.text[i], color: t.marker.color[i],
                                                   hover: t.hovertext[i]}));
            }"""
        )
    }


def edges_drawn(page: Any) -> list[dict[str, Any]]:
    return list(
        page.evaluate(
            "() => document.getElementById('map').data.filter(t => t.name === 'edge')"
            ".map(t => ({src: t.meta.src, dst: t.meta.dst, color: t.line.color}))"
        )
    )


def drive(url: str, comes_back: Any) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.goto(f"{url}/login?token={TEST_TOKEN}")
        page.wait_for_function(
            "([id]) => { const t = (document.getElementById('map').data || []).find(t => t.name === 'regions');"
            " return t && t.customdata.includes(id) && t.meta[t.customdata.indexOf(id)] === 'stale'; }",
            arg=[SILENT],
            timeout=20_000,
        )
        page.wait_for_function(
            "([id]) => document.getElementById('map').data.some(t => t.name === 'edge' && t.meta.src === id)",
            arg=[SILENT],
            timeout=20_000,
        )
        seen["stale_regions"] = regions_drawn(page)
        seen["stale_edges"] = edges_drawn(page)
        comes_back()
        began = time.monotonic()
        page.wait_for_function(
            "([id]) => { const t = document.getElementById('map').data.find(t => t.name === 'regions');"
            " return t.meta[t.customdata.indexOf(id)] === ''; }",
            arg=[SILENT],
            timeout=scaled(10) * 1000,
        )
        seen["back_after_s"] = time.monotonic() - began
        seen["back_regions"] = regions_drawn(page)
        browser.close()
    return seen


@pytest.mark.browser
async def test_a_region_whose_telemetry_stopped_is_drawn_stale_not_green(
    stack_factory: Any, clickhouse_url: str, redis_url: str
) -> None:
    require_chromium()
    from websockets.asyncio.client import connect

    stack = await stack_factory([A, B])
    await asyncio.to_thread(plant_silent_region, clickhouse_url, stack.database, redis_url, 60)
    group = f"{stack.mesh[B].ws_url}/v1/subscribe?topic=orders.>&group=audit&consumer=c"
    async with connect(group, additional_headers=AUTH):
        pass  # a durable group in B: A's events flow to B, a live edge
    await eventually(lambda: stack.mesh[A].relay.routes.route(B) is not None, 10)

    async def live_edge(http: httpx.AsyncClient) -> bool:
        event = orjson.dumps(cloud_event("orders.created", f"live-{secrets.token_hex(4)}"))
        assert (await http.post(f"{stack.mesh[A].url}/v1/events", headers=CE_JSON, content=event)).status_code == 202
        edges = (await http.get(f"{stack.url}/api/topology?window=15m")).json()["edges"]
        return any((e["src"], e["dst"]) == (A, B) for e in edges)

    async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
        await eventually(lambda: live_edge(http), 20, 0.5)
    loop = asyncio.get_running_loop()
    keep_reporting = asyncio.Event()

    async def reporter() -> None:
        await keep_reporting.wait()
        while True:
            await asyncio.to_thread(report, redis_url, 0)
            await asyncio.sleep(1)

    task = asyncio.create_task(reporter())
    try:
        seen = await asyncio.wait_for(
            asyncio.to_thread(drive, stack.url, lambda: loop.call_soon_threadsafe(keep_reporting.set)), scaled(90)
        )
    finally:
        task.cancel()
    silent = seen["stale_regions"][SILENT]
    assert silent["meta"] == "stale" and silent["color"] == STALE_COLOR, silent
    assert "no data for" in silent["text"] and "no report from its relays" in silent["hover"], silent
    assert "0 ev/s" not in silent["hover"]  # never "0 events"
    for live in (A, B):
        assert seen["stale_regions"][live]["meta"] == "" and seen["stale_regions"][live]["color"] != STALE_COLOR
    from_silent = [e for e in seen["stale_edges"] if SILENT in (e["src"], e["dst"])]
    assert from_silent and all(e["color"] == STALE_COLOR for e in from_silent), from_silent
    assert any(e["color"] != STALE_COLOR for e in seen["stale_edges"] if SILENT not in (e["src"], e["dst"])), seen
    # it reports again: drawn in its own colour within seconds, from the live feed
    back = seen["back_regions"][SILENT]
    assert back["color"] != STALE_COLOR and "no data" not in back["text"], back
    assert seen["back_after_s"] < scaled(8), seen["back_after_s"]
    assert not seen["console_errors"], seen["console_errors"]
