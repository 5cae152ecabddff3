"""Telemetry per region: each region's flow stream holds its records until a collector has them,
bounded with a drop record for what it gives up; the dashboard reads every region's store.

Real relays, one real Valkey per region, the collectors and the dashboard in one process over
embedded ClickHouse (the form ``meshscope up`` runs).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from meshcore.flowrecord import unpack
from tests.conftest import AUTH, CE_JSON, Mesh, RegionValkeys, cloud_event, eventually, scaled

A, B = "aws:us-east-1", "gcp:europe-west1"
STREAM = "meshscope:flows"
GROUP = "meshscope-collectors"


async def publish(http: httpx.AsyncClient, url: str, count: int, prefix: str) -> None:
    for i in range(count):
        event = orjson.dumps(cloud_event("orders.created", f"{prefix}-{i}"))
        assert (await http.post(f"{url}/v1/events", headers=CE_JSON, content=event)).status_code == 202


def stream_records(client: redis.Redis) -> list[Any]:
    out = []
    for _, fields in client.xrange(STREAM):
        out.extend(unpack(fields))
    return out


async def test_a_full_region_stream_names_every_record_it_gives_up_and_keeps_what_was_collected(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A], flow_stream_maxlen=20)
    redis_sync.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    await publish(http, mesh[A].url, 15, "read")  # one entry per publish
    read: Any = redis_sync.xreadgroup(GROUP, "c", {STREAM: ">"})
    ids = [entry_id for entry_id, _ in read[0][1]]
    redis_sync.xack(STREAM, GROUP, *ids)
    acked_up_to = ids[-1]
    # past the bound with acknowledged entries at the old end: they go, and nothing is named lost
    await publish(http, mesh[A].url, 10, "more")
    await eventually(lambda: redis_sync.xlen(STREAM) <= 20, 5)
    metrics = mesh[A].relay.metrics
    assert metrics.get("flow_entries_trimmed_total") > 0 and metrics.get("flow_records_given_up_total") == 0
    assert not [r for r in stream_records(redis_sync) if r.status == "trimmed"]
    # a region cut off from its collector: unread entries are given up at the bound, each one counted
    await publish(http, mesh[A].url, 40, "cut")
    given_up = await eventually(lambda: [r for r in stream_records(redis_sync) if r.status == "trimmed"], 5)
    await asyncio.sleep(scaled(1.5))  # the sink's idle check has run since the last write
    assert redis_sync.xlen(STREAM) <= 21
    left = stream_records(redis_sync)
    named = sum(r.seq for r in left if r.status == "trimmed")
    # one record per event (no_route: nobody subscribes); those of the acknowledged ones are gone
    unread = [r for r in left if r.status != "trimmed" and not r.event_id.startswith("read-")]
    assert named + len(unread) == 50, (named, len(unread))  # every record written since is still there or named
    record = given_up[0]
    assert (record.kind, record.src_region, record.dst_region, record.event_id) == ("drop", A, A, "")
    assert record.e2e_ms > 0  # how old the oldest given up was
    assert metrics.get("flow_records_given_up_total") >= named
    assert acked_up_to  # the acknowledged ones were trimmed without a record


def region_config(stores: dict[str, str], clickhouse_url: str, database: str) -> Any:
    from collector.config import CollectorConfig

    return CollectorConfig(
        redis_url=stores[A],
        region_stores=tuple(stores.items()),
        clickhouse_url=clickhouse_url,
        database=database,
        consumer="test",
        flush_interval_s=0.1,
        metrics_port=-1,
    )


async def test_the_dashboard_reads_every_regions_own_store_and_a_silent_one_turns_stale(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys, clickhouse_url: str, database: str
) -> None:
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    stores = region_stores([A, B])
    await mesh.start([A, B], env={"MESHSCOPE_LINK_STATS_INTERVAL_S": "0.2"}, redis_urls=stores)
    config = DashboardConfig(store=region_config(stores, clickhouse_url, database), port=0, auth_file=mesh.auth_file)
    runtime = await asyncio.to_thread(DashboardRuntime, config, True, False)
    await runtime.start()
    try:
        url = runtime.server.url
        async with connect(f"{mesh[B].ws_url}/v1/subscribe?topic=orders.>&group=audit&consumer=c",
                           additional_headers=AUTH):  # fmt: skip
            pass
        await eventually(lambda: mesh[A].relay.routes.route(B) is not None, 10)
        await publish(http, mesh[A].url, 20, "tele")
        # history from both regions' streams: publishes written in A, deliveries in B
        from collector.clickhouse import make_client

        ch = make_client(clickhouse_url, database=database)
        try:

            def kinds() -> dict[str, int]:
                sql = "SELECT kind, count() FROM flows WHERE event_id LIKE 'tele-%' GROUP BY kind"
                return {k: int(n) for k, n in ch.query(sql).result_rows}

            # each kind reaches ClickHouse in its own collector's batch: wait for all three
            want = {"publish": 20, "forward": 20, "deliver": 20}

            def complete() -> dict[str, int] | None:
                k = kinds()
                return k if all(k.get(n) == c for n, c in want.items()) else None

            got = await eventually(complete, 20, 0.25)  # not a query every 20 ms: it would queue behind the inserts
        finally:
            ch.close()
        assert {n: got[n] for n in want} == want
        health = runtime.health()
        assert set(health["collectors"]) == {A, B} and health["status"] == "ok", health

        # each relay's report comes from its own region's store
        async def both_report() -> bool:
            return {r["region"] for r in (await http.get(f"{url}/api/routes")).json()["relays"]} == {A, B}

        await eventually(both_report, 10, 0.2)

        async def both_fresh() -> bool:
            topology = (await http.get(f"{url}/api/topology?window=15m")).json()
            return {r["id"]: r["stale"] for r in topology["regions"]} == {A: False, B: False}

        await eventually(both_fresh, 10, 0.2)
        # the live feed fans in from both stores, and its heartbeat says each region's freshness each second
        async with connect(url.replace("http", "ws") + "/ws/live", additional_headers=AUTH) as ws:
            seen: dict[str, Any] = {"links": set()}
            stopped_at = 0.0

            async def listen() -> None:
                async for raw in ws:
                    message = orjson.loads(raw)
                    if message["type"] == "links":
                        seen["links"].add(message["region"])
                    elif message["type"] == "heartbeat" and stopped_at:
                        regions = message["freshness"]["verdicts"]
                        if regions.get(B, {}).get("stale") and "regions_stale" not in seen:
                            seen["regions_stale"] = (time.monotonic() - stopped_at, regions)

            listener = asyncio.create_task(listen())
            await eventually(lambda: seen["links"] == {A, B}, 10)
            region_stores.servers[B].stop()  # B's store goes away: the dashboard cannot vouch for B
            stopped_at = time.monotonic()
            await eventually(lambda: "regions_stale" in seen, 15)
            listener.cancel()
        after_s, regions = seen["regions_stale"]
        assert after_s < scaled(10), after_s
        assert f"Valkey of {B} unreachable from the dashboard" in regions[B]["cause"], regions
        assert not regions[A]["stale"], regions
        topology = (await http.get(f"{url}/api/topology?window=15m")).json()
        by_id = {r["id"]: r for r in topology["regions"]}
        assert by_id[B]["stale"] and not by_id[A]["stale"]
        assert all(e["stale"] for e in topology["edges"] if B in (e["src"], e["dst"]))
        health = (await http.get(f"{url}/healthz")).json()
        gone = f"Valkey of {B} unreachable from the dashboard"
        assert health["status"] == "degraded" and any(r.startswith(gone) for r in health["reasons"]), health
    finally:
        await runtime.stop()


def test_region_stores_are_read_from_the_environment_strictly() -> None:
    from collector.config import CollectorConfig
    from meshcore.settings import SettingError

    config = CollectorConfig.from_env(
        {"REDIS_URL": "redis://a:1/0", "MESHSCOPE_REGION_STORES": f"{A}=redis://a:1/0, {B}=rediss://b:2/0"}
    )
    assert config.region_stores == ((A, "redis://a:1/0"), (B, "rediss://b:2/0"))
    each = config.for_each_region()
    assert [(c.region, c.redis_url, c.alerts.enabled) for c in each] == [
        (A, "redis://a:1/0", True),
        (B, "rediss://b:2/0", False),  # alerts run once, in the collector of the dashboard's own store
    ]
    for bad in (f"{A}=http://x", f"{A}", "nope=redis://x", f"{A}=redis://x,{A}=redis://y", f"{A}=redis:/x"):
        with pytest.raises(SettingError):
            CollectorConfig.from_env({"MESHSCOPE_REGION_STORES": bad})
    with pytest.raises(SettingError):
        CollectorConfig.from_env({"MESHSCOPE_REGION": "not a region"})
