"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against a running stack.

In CI (``CI`` set) it never skips: without Chromium it fails and says how to
install it. On a developer machine without Chromium it is skipped with that advice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from router.simulator import Simulator, SimulatorConfig
from tests.conftest import eventually, scaled

CHROMIUM = os.environ.get("MESHSCOPE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("MESHSCOPE_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
REGIONS = ["aws:us-east-1", "gcp:europe-west1", "azure:southeastasia"]


def drive(url: str) -> dict[str, Any]:
    """Everything the browser saw; runs in a worker thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"requests": [], "console_errors": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("websocket", lambda ws: seen["requests"].append(ws.url))
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.goto(url)
        page.wait_for_function("document.getElementById('map').data !== undefined", timeout=15_000)
        page.wait_for_function(
            "(document.getElementById('map').data.find(t => t.name === 'regions') || {lat: []}).lat.length >= 3",
            timeout=20_000,
        )
        seen["regions"] = page.evaluate("document.getElementById('map').data.find(t => t.name === 'regions').text")
        seen["region_markers"] = page.locator("#map g.trace.scattergeo").last.locator("path.point").count()
        # live numbers: the live edge table changes from one second to the next
        page.wait_for_selector("#live-edges-body tr.live-edge", timeout=20_000)
        readings = []
        for _ in range(8):
            readings.append(page.inner_text("#live-edges-body"))
            page.wait_for_timeout(1000)
        seen["live_readings"] = readings
        seen["live_status"] = page.inner_text("#live-text")
        # an edge click on the map (its direction marker) opens the drill-down with a time series
        page.wait_for_function(
            "(document.getElementById('map').data.find(t => t.name === 'direction') || {lat: []}).lat.length > 0",
            timeout=20_000,
        )
        # the centre of a direction marker that no overlay covers; plotly takes the click there
        spot = page.evaluate(
            """() => {
              const traces = document.querySelectorAll('#map g.trace.scattergeo');
              for (const p of traces[traces.length - 2].querySelectorAll('path.point')) {
                const r = p.getBoundingClientRect();
                const x = r.x + r.width / 2, y = r.y + r.height / 2;
                const hit = document.elementFromPoint(x, y);
                if (hit && document.getElementById('map').contains(hit)) return [x, y];
              }
              return null;
            }"""
        )
        assert spot is not None, "no edge marker is visible"
        page.mouse.move(spot[0], spot[1])
        page.wait_for_timeout(300)
        page.mouse.click(spot[0], spot[1])
        page.wait_for_selector("#panel:not([hidden])", timeout=10_000)
        page.wait_for_function(
            "(document.getElementById('chart-rate').data || [{y: []}])[0].y.some(v => v > 0)", timeout=15_000
        )
        seen["panel_title"] = page.inner_text("#panel-title")
        seen["series_points"] = page.evaluate("document.getElementById('chart-rate').data[0].y.length")
        # a trace id from the live tail opens its hop path
        page.wait_for_selector("#tail-body a.trace-link", timeout=15_000)
        page.locator("#tail-body a.trace-link").first.click()
        page.wait_for_selector("#trace-body tr td", timeout=10_000)
        seen["trace_rows"] = page.locator("#trace-body tr").count()
        # SQL: the default query returns rows
        page.click("#sql-toggle")
        page.fill("#sql-text", "SELECT kind, count() AS n FROM flows GROUP BY kind ORDER BY kind")
        page.click("#sql-run")
        page.wait_for_selector("#sql-table tbody tr", timeout=15_000)
        seen["sql_rows"] = page.locator("#sql-table tbody tr").count()
        seen["sql_status"] = page.inner_text("#sql-status")
        page.click("#sql-toggle")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        browser.close()
    return seen


@pytest.mark.browser
async def test_dashboard_in_a_real_browser(stack_factory: Any) -> None:
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        advice = f"{CHROMIUM} is missing: apt-get install -y chromium (or set MESHSCOPE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(advice + "; in CI the browser test must run")
        pytest.skip(advice)
    stack = await stack_factory(REGIONS)
    relays = {r: stack.mesh[r].ws_url for r in REGIONS}
    simulator = Simulator(SimulatorConfig(relays, rate_per_s=150, seed=3))
    traffic = asyncio.create_task(simulator.run())
    try:
        await eventually(lambda: stack.dashboard.hub.received >= 2, 15)
        started = time.monotonic()
        seen = await asyncio.wait_for(asyncio.to_thread(drive, stack.url), scaled(180))
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
    assert sorted(seen["regions"]) == sorted(REGIONS)
    assert seen["region_markers"] >= 3
    assert len(set(seen["live_readings"])) > 1, "live numbers never changed"
    assert "updates" in seen["live_status"]
    assert "→" in seen["panel_title"] and seen["series_points"] > 0
    assert seen["trace_rows"] >= 2
    assert seen["sql_rows"] == 3 or seen["sql_rows"] == 4, seen["sql_status"]
    outside = [
        u for u in seen["requests"] if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:"))
    ]
    assert outside == [], f"requests left 127.0.0.1: {outside}"
    assert not seen["console_errors"], seen["console_errors"]
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    assert time.monotonic() - started < scaled(180)
