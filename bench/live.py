"""The live path: from a publish at one relay to the dashboard's websocket reporting that event.

Relays run as processes; the collector and dashboard run in this process on
embedded ClickHouse, as ``meshscope up`` runs them. Events are published one at
a time over HTTP, slowly enough that each is among the sampled events of its
second; the figure is the time until its id shows in a ``/ws/live`` message.
Baseline: the time until the subscriber at the far relay receives the same event.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import orjson
import websockets

from bench.common import BenchMesh, Figure, clickhouse_url, processes, spawn_mesh, valkey
from collector.config import CollectorConfig
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime

A, B = "aws:us-east-1", "gcp:europe-west1"


async def _measure(mesh: BenchMesh, runtime: DashboardRuntime, n: int) -> tuple[list[float], list[float]]:
    published: dict[str, float] = {}
    live_seen: dict[str, float] = {}
    delivered: dict[str, float] = {}

    async def watch_live() -> None:
        headers = {"Authorization": f"Bearer {runtime.token}"}
        async with websockets.connect(
            runtime.server.ws_url + "/ws/live", max_size=None, additional_headers=headers
        ) as ws:
            async for raw in ws:
                now = time.time()
                for s in orjson.loads(raw).get("samples", []):
                    live_seen.setdefault(s["event_id"], now)

    async def subscriber() -> None:
        url = f"{mesh.ws(B)}/v1/subscribe?topic=live.>"
        async with websockets.connect(url, max_size=None, **mesh.ws_kwargs()) as ws:
            async for raw in ws:
                delivered.setdefault(orjson.loads(raw)["id"], time.time())

    tasks = [asyncio.create_task(watch_live()), asyncio.create_task(subscriber())]
    await asyncio.sleep(1.0)
    run_id = int(time.time() * 1000)
    async with httpx.AsyncClient(headers=mesh.headers, verify=mesh.ssl or True) as http:
        for i in range(n):
            event_id = f"live-{run_id}-{i}"
            body = {"specversion": "1.0", "id": event_id, "source": "/bench", "type": "live.probe", "data": {"i": i}}
            published[event_id] = time.time()
            reply = await http.post(
                f"{mesh.http(A)}/v1/events",
                content=orjson.dumps(body),
                headers={"content-type": "application/cloudevents+json"},
            )
            reply.raise_for_status()
            await asyncio.sleep(0.45)
    deadline = time.time() + 10
    while time.time() < deadline and not all(e in live_seen for e in published):
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    live = [(live_seen[e] - t0) * 1000 for e, t0 in published.items() if e in live_seen]
    base = [(delivered[e] - t0) * 1000 for e, t0 in published.items() if e in delivered]
    if len(live) < len(published):
        raise RuntimeError(f"only {len(live)} of {len(published)} events reached /ws/live")
    return live, base


def run(quick: bool = False) -> list[Figure]:
    n = 5 if quick else 60
    p50 = Figure("publish -> /ws/live p50", "ms", higher_is_better=False)
    p99 = Figure("publish -> /ws/live p99", "ms", target="<= 1,500", higher_is_better=False)
    with valkey() as redis_url, processes() as spawn:
        mesh = spawn_mesh(spawn, redis_url, [A, B])
        ch_url = clickhouse_url()
        store = CollectorConfig(
            redis_url=redis_url,
            clickhouse_url=ch_url,
            database=f"bench_live_{os.getpid()}",
            metrics_port=-1,
            flush_interval_s=0.5,
        )
        runtime = DashboardRuntime(DashboardConfig(store=store, port=0), with_collector=True, announce=False)

        async def go() -> tuple[list[float], list[float]]:
            await runtime.start()
            try:
                return await _measure(mesh, runtime, n)
            finally:
                await runtime.stop()

        live, base = asyncio.run(go())
        runtime.admin.command(f"DROP DATABASE IF EXISTS `{store.database}` SYNC")
    p50.values, p50.baseline = [_pct(live, 0.5)], [_pct(base, 0.5)]
    p99.values, p99.baseline = [_pct(live, 0.99)], [_pct(base, 0.99)]
    p50.note = (
        f"{n} events, one every 0.45 s; baseline: publish -> subscriber at the far relay. The collector "
        "publishes live stats once a second, so the figure includes up to a second of waiting"
    )
    return [p50, p99]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


__all__: list[Any] = ["run"]
