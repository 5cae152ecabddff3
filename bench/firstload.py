"""How long the dashboard takes to a drawn map on a small machine: a measurement, not a test.

    python -m bench.firstload URL TOKEN [--runs 5] [--cpu 4] [--mbit 20] [--rtt-ms 40]

For each run, a fresh Chromium context (an empty cache) signs in with ``TOKEN`` (its link sets the
session cookie), then navigates to ``URL`` with the CPU slowed ``--cpu`` times and the network
limited to ``--mbit`` Mbit/s down with ``--rtt-ms`` of latency, both through the DevTools protocol,
and waits until the map is drawn (the world's land and the regions trace on screen). It prints the
median time to the drawn map and the bytes the page fetched, cold (empty cache) and warm (a reload).
Needs Debian's chromium (``MESHSCOPE_CHROMIUM``) and a running dashboard (``meshscope up``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

CHROMIUM = os.environ.get("MESHSCOPE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DRAWN = (
    "() => { const gd = document.getElementById('map'); return Boolean(gd && gd.data"
    " && gd.data.some(t => t.name === 'regions') && gd.querySelector('.layer.land path')); }"
)


def _throttle(session: Any, cpu: float, mbit: float, rtt_ms: float) -> None:
    session.send("Emulation.setCPUThrottlingRate", {"rate": cpu})
    session.send("Network.enable")
    rate = mbit * 1_000_000 / 8
    session.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": rtt_ms, "downloadThroughput": rate, "uploadThroughput": rate},
    )


def _one(browser: Any, url: str, token: str, cpu: float, mbit: float, rtt_ms: float) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1400, "height": 860})
    page = context.new_page()
    page.goto(f"{url.rstrip('/')}/login?token={token}")  # signs in (the session cookie)
    page.goto("about:blank")
    session = context.new_cdp_session(page)
    session.send("Network.clearBrowserCache")
    _throttle(session, cpu, mbit, rtt_ms)
    out: dict[str, float] = {}
    for name in ("cold", "warm"):
        fetched: list[int] = []

        def count(response: Any, fetched: list[int] = fetched) -> None:
            try:
                sizes = response.request.sizes()
                fetched.append(int(sizes["responseBodySize"] + sizes["responseHeadersSize"]))
            except Exception:  # a response without sizes (an aborted one) counts nothing
                fetched.append(0)

        page.on("response", count)
        began = time.monotonic()
        page.goto(url, wait_until="commit")
        page.wait_for_function(DRAWN, timeout=120_000, polling=50)
        out[f"{name}_s"] = time.monotonic() - began
        out[f"{name}_bytes"] = float(sum(fetched))
        page.remove_listener("response", count)
    context.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("token")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cpu", type=float, default=4.0, help="CPU slowdown factor (DevTools)")
    parser.add_argument("--mbit", type=float, default=20.0, help="download and upload Mbit/s")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="added latency per request")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for _ in range(args.runs):
            results.append(_one(browser, args.url, args.token, args.cpu, args.mbit, args.rtt_ms))
        browser.close()
    conditions = f"CPU /{args.cpu:g}, {args.mbit:g} Mbit/s, +{args.rtt_ms:g} ms"
    for name in ("cold", "warm"):
        times = [r[f"{name}_s"] for r in results]
        size = statistics.median(r[f"{name}_bytes"] for r in results)
        print(
            f"{name}: median {statistics.median(times):.2f} s to a drawn map (min {min(times):.2f}, "
            f"max {max(times):.2f}, {len(times)} runs), {size / 1024:.0f} KiB transferred; {conditions}"
        )


if __name__ == "__main__":
    main()
