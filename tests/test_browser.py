"""The dashboard in a real headless Chromium (Debian's), driven by Playwright, against a running stack.

The browser signs in once through ``/login?token=…`` and then works through the session cookie
alone (API, live WebSocket, SQL). A hostile region, with markup and script in its id, city,
topics, relay name and statuses, is stored in ClickHouse next to the real traffic: the map and the
panel must show it as plain text, under the Content-Security-Policy, with no dialog, no console
error and no policy violation.

In CI (``CI`` set) it never skips: without Chromium it fails and says how to
install it. On a developer machine without Chromium it is skipped with that advice.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from router.simulator import Simulator, SimulatorConfig
from tests.conftest import TEST_TOKEN, eventually, scaled

CHROMIUM = os.environ.get("MESHSCOPE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("MESHSCOPE_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts"))
REGIONS = ["aws:us-east-1", "gcp:europe-west1", "azure:southeastasia"]
HOSTILE = 'evil:<a href="javascript:alert(1)">x</a><img src=x onerror=alert(1)>'
CITY = "<b>bold</b>"
TOPIC = "<img src=x onerror=alert(2)>.created"
RELAY = '<span style="font-size:90px">relay</span>'
STATUS = '<a href="javascript:alert(3)">boom</a>'
TARGET = REGIONS[0]
PROVIDER = "constructor"  # a name every plain JS object answers: the colour lookup must not


def plant_hostile_region(clickhouse_url: str, db: str, traces: int = 4) -> None:
    """A region with markup in every field, and flows from it to TARGET: publish, forward, deliver, one drop."""
    from collector.clickhouse import make_client
    from collector.sync import REGION_COLUMNS

    now = datetime.now(UTC)
    client = make_client(clickhouse_url)
    try:
        client.insert(
            f"`{db}`.`regions`",
            [[HOSTILE, PROVIDER, 0.0, -30.0, CITY, RELAY, now - timedelta(minutes=1), now]],
            column_names=REGION_COLUMNS,
        )
        columns = ["ts", "event_id", "trace_id", "span_id", "parent_span_id", "topic", "kind", "src_region",
                   "dst_region", "relay", "hop_ms", "e2e_ms", "status", "bytes", "attempt", "seq"]  # fmt: skip
        rows: list[list[Any]] = []
        for i in range(traces):
            trace, spans = secrets.token_hex(16), [secrets.token_hex(8) for _ in range(3)]
            at = now - timedelta(seconds=20 + i)
            event = f"<img src=x onerror=alert({i})>"
            hops = [
                ("publish", HOSTILE, "", 0.0),
                ("forward", TARGET, spans[0], 40.0),
                ("deliver", TARGET, spans[1], 41.0),
            ]
            for n, (kind, dst, parent, e2e) in enumerate(hops):
                rows.append([at + timedelta(milliseconds=n), event, trace, spans[n], parent, TOPIC, kind, HOSTILE,
                             dst, RELAY, e2e, e2e, "ok", 100, 1, i])  # fmt: skip
        rows.append([now - timedelta(seconds=10), "<b>e</b>", secrets.token_hex(16), secrets.token_hex(8), "", TOPIC,
                     "drop", HOSTILE, TARGET, RELAY, 1.0, 1.0, STATUS, 100, 1, 99])  # fmt: skip
        client.insert(f"`{db}`.`flows`", rows, column_names=columns)
    finally:
        client.close()


def drive(url: str) -> dict[str, Any]:
    """Everything the browser saw; runs in a worker thread (Playwright's sync API)."""
    from playwright.sync_api import sync_playwright

    seen: dict[str, Any] = {"requests": [], "console_errors": [], "dialogs": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.on("websocket", lambda ws: seen["requests"].append(ws.url))
        page.on("console", lambda m: m.type == "error" and seen["console_errors"].append(m.text))
        page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
        page.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`));"
        )
        # sign in once; the 303 takes the token out of the address bar, the cookie does the rest
        # predicates are functions, never strings: a string would be eval'd in the page, which the CSP forbids
        landed = page.goto(f"{url}/login?token={TEST_TOKEN}")
        assert landed is not None
        seen["landed"] = page.url
        seen["csp"] = landed.headers.get("content-security-policy")
        seen["token_in_history"] = TEST_TOKEN in page.evaluate("location.href + document.referrer")
        page.wait_for_function("() => document.getElementById('map').data !== undefined", timeout=15_000)
        page.wait_for_function(
            "() => (document.getElementById('map').data.find(t => t.name === 'regions') || {lat: []}).lat.length >= 4",
            timeout=20_000,
        )
        seen["regions"] = page.evaluate(
            "document.getElementById('map').data.find(t => t.name === 'regions').customdata"
        )
        seen["region_markers"] = page.locator("#map g.trace.scattergeo").last.locator("path.point").count()
        seen.update(hostile_on_the_map(page))
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
            "() => (document.getElementById('map').data.find(t => t.name === 'direction') || {lat: []}).lat.length > 0",
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
            "() => (document.getElementById('chart-rate').data || [{y: []}])[0].y.some(v => v > 0)", timeout=15_000
        )
        seen["panel_title"] = page.inner_text("#panel-title")
        seen["series_points"] = page.evaluate("document.getElementById('chart-rate').data[0].y.length")
        # a trace id from the live tail opens its hop path
        page.wait_for_selector("#tail-body a.trace-link", timeout=15_000)
        page.locator("#tail-body a.trace-link").first.click()
        page.wait_for_selector("#trace-body tr td", timeout=10_000)
        seen["trace_rows"] = page.locator("#trace-body tr").count()
        seen.update(hostile_in_the_panel(page))
        page.click("#panel-close")
        # SQL: the default query returns rows
        page.click("#sql-toggle")
        page.fill("#sql-text", "SELECT kind, count() AS n FROM flows GROUP BY kind ORDER BY kind")
        page.click("#sql-run")
        page.wait_for_selector("#sql-table tbody tr", timeout=15_000)
        seen["sql_rows"] = page.locator("#sql-table tbody tr").count()
        seen["sql_status"] = page.inner_text("#sql-status")
        page.click("#sql-toggle")
        seen["violations"] = page.evaluate("window.__violations")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        browser.close()
    return seen


def hostile_on_the_map(page: Any) -> dict[str, Any]:
    """What the map made of the hostile region: its label, its hover box, any link or image."""
    seen: dict[str, Any] = {}
    labels = "() => [...document.querySelectorAll('#map g.trace.scattergeo text')].map(t => t.textContent)"
    try:
        page.wait_for_function(f"([id]) => ({labels})().includes(id)", arg=[HOSTILE], timeout=20_000)
    except Exception as exc:
        raise AssertionError(f"no map label reads {HOSTILE!r}; the labels: {page.evaluate(labels)}") from exc
    seen["labels"] = page.evaluate(labels)
    # hover the hostile marker until its own box shows: its edge starts at the marker's centre, so
    # points inside the marker but off the centre, on the side away from the edge, are tried
    spots = page.evaluate(
        """([id, target]) => {
          const gd = document.getElementById('map');
          const regions = gd.data.find(t => t.name === 'regions');
          const traces = document.querySelectorAll('#map g.trace.scattergeo');
          const points = traces[traces.length - 1].querySelectorAll('path.point');
          const centre = (i) => {
            const r = points[i].getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2, r.width];
          };
          const [x, y, w] = centre(regions.customdata.indexOf(id));
          const [tx, ty] = centre(regions.customdata.indexOf(target));
          const away = Math.atan2(y - ty, x - tx);
          const out = [];
          for (const turn of [0, 0.5, -0.5, 1, -1]) {
            for (const share of [0.4, 0.3, 0.45]) {
              out.push([x + share * w * Math.cos(away + turn), y + share * w * Math.sin(away + turn)]);
            }
          }
          return out;
        }""",
        [HOSTILE, TARGET],
    )
    seen["hover_text"] = ""
    for x, y in spots:
        page.mouse.move(x, y)
        page.wait_for_timeout(150)
        seen["hover_text"] = page.evaluate("(document.querySelector('#map .hoverlayer') || {}).textContent || ''")
        if CITY in seen["hover_text"]:
            break
    seen["map_links"] = page.locator("#map a").count()
    seen["map_images"] = page.locator("#map img, #map image, #map foreignObject").count()
    seen["map_bold_from_data"] = page.evaluate(
        "[...document.querySelectorAll('#map .hoverlayer tspan')].filter(t => t.textContent === 'bold').length"
    )
    page.mouse.move(5, 800)
    return seen


def hostile_in_the_panel(page: Any) -> dict[str, Any]:
    """The drill-down of the hostile edge: title, topics, tail and a trace, all as text."""
    seen: dict[str, Any] = {}
    page.evaluate("([src, dst]) => openEdge(src, dst)", [HOSTILE, TARGET])
    page.wait_for_function(
        "([t]) => [...document.querySelectorAll('#topics-body td')].some(td => td.textContent === t)",
        arg=[TOPIC],
        timeout=15_000,
    )
    seen["panel_hostile_title"] = page.inner_text("#panel-title")
    page.wait_for_function(
        "([s]) => [...document.querySelectorAll('#tail-body td')].some(td => td.textContent.includes(s))",
        arg=[STATUS],
        timeout=15_000,
    )
    page.locator("#tail-body tr", has_text="deliver").locator("a.trace-link").first.click()
    page.wait_for_function(
        "([r]) => [...document.querySelectorAll('#trace-body td')].some(td => td.textContent === r)",
        arg=[RELAY],
        timeout=10_000,
    )
    seen["hostile_trace_rows"] = page.locator("#trace-body tr").count()
    seen["panel_elements"] = page.evaluate(
        "[...document.querySelectorAll('#panel td *:not(a.trace-link), #panel h2 *, #panel-summary span *:not(b)')]"
        ".map(e => e.outerHTML)"
    )
    return seen


@pytest.mark.browser
async def test_dashboard_in_a_real_browser(stack_factory: Any, clickhouse_url: str) -> None:
    if not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)):
        advice = f"{CHROMIUM} is missing: apt-get install -y chromium (or set MESHSCOPE_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(advice + "; in CI the browser test must run")
        pytest.skip(advice)
    stack = await stack_factory(REGIONS)
    await asyncio.to_thread(plant_hostile_region, clickhouse_url, stack.database)
    relays = {r: stack.mesh[r].ws_url for r in REGIONS}
    simulator = Simulator(SimulatorConfig(relays, rate_per_s=150, seed=3, token=TEST_TOKEN))
    traffic = asyncio.create_task(simulator.run())
    try:
        await eventually(lambda: stack.dashboard.hub.received >= 2, 15)
        started = time.monotonic()
        seen = await asyncio.wait_for(asyncio.to_thread(drive, stack.url), scaled(180))
    finally:
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
    assert seen["landed"] == stack.url + "/" and not seen["token_in_history"]
    assert seen["csp"] is not None and "script-src 'self';" in seen["csp"] and "unsafe-eval" not in seen["csp"]
    assert sorted(seen["regions"]) == sorted([*REGIONS, HOSTILE])
    assert seen["region_markers"] >= 4
    # the hostile region is text: its label is the id, letter for letter; nothing became a link,
    # an image or bold type, and no script ran
    assert HOSTILE in seen["labels"]
    assert seen["map_links"] == 0 and seen["map_images"] == 0
    assert HOSTILE in seen["hover_text"] and f"({CITY})" in seen["hover_text"], seen["hover_text"]
    assert seen["map_bold_from_data"] == 0
    assert seen["panel_hostile_title"] == f"{HOSTILE} → {TARGET}"
    assert seen["hostile_trace_rows"] == 3
    assert seen["panel_elements"] == [], seen["panel_elements"]
    assert seen["dialogs"] == [], seen["dialogs"]
    assert seen["violations"] == [], seen["violations"]
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
