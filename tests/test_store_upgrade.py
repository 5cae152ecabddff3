"""A store written before the keys had hash tags: nothing in it is stranded after the upgrade."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import redis
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from collector.config import CollectorConfig
from collector.service import Collector
from meshcore import storekeys as sk
from meshcore.flowrecord import pack
from tests.conftest import AUTH, CE_JSON, Mesh, cloud_event, eventually, scaled
from tests.test_collector import count, flow_keys, make_records

A, C = "aws:us-east-1", "azure:westeurope"


def to_legacy(client: redis.Redis, region: str, relay: str) -> list[str]:
    """Rename the tagged keys of ``region`` back to the names of before; returns the old names."""
    pairs = list(sk.legacy_region_keys(region, relay).items())
    pairs += [sk.legacy_outbound(region, dst.decode()) for dst in client.hkeys(sk.outmeta(region))]
    pairs += [sk.legacy_group_stream(region, g.decode()) for g in client.hkeys(sk.groups(region))]
    pairs += list(sk.LEGACY_GOVERNANCE.items())
    old = []
    for legacy, new in pairs:
        if client.exists(new):
            client.rename(new, legacy)
            old.append(legacy)
    return old


async def test_a_relay_moves_a_store_of_before_onto_the_tagged_keys_and_loses_nothing(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    mesh[C].relay.subscribe(["orders.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
    await mesh.stop_one(C)  # C's interest is still known: what A publishes for it waits in A's link store
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=orders.>&group=audit"
    async with connect(f"{base}&consumer=m1", additional_headers=AUTH):
        await eventually(lambda: redis_sync.hexists(sk.groups(A), "audit"))
    for i in range(5):
        event = orjson.dumps(cloud_event("orders.x", f"u-{i}"))
        reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=event)
        assert reply.status_code == 202, reply.text
    held = mesh[A].relay.outbox.depth
    assert held == 5
    name = mesh[A].relay.name
    await mesh.stop_one(A)
    old = to_legacy(redis_sync, A, name)
    assert sk.legacy_group_stream(A, "audit")[0] in old and sk.legacy_outbound(A, C)[0] in old
    assert f"meshscope:outmeta:{A}" in old and f"meshscope:groups:{A}" in old

    again = await mesh.start_one(A)
    assert all(not redis_sync.exists(key) for key in old)  # every key of before was moved
    assert "audit" in again.relay.groups.groups
    assert again.relay.outbox.depth == held  # the events held for C are held again
    assert redis_sync.xlen(sk.group_stream(A, "audit")) == 5
    url = f"{again.ws_url}/v1/subscribe?topic=orders.>&group=audit&consumer=m1"
    async with connect(url, additional_headers=AUTH) as member:
        got = [orjson.loads(await asyncio.wait_for(member.recv(), scaled(5))) for _ in range(5)]
    assert sorted(m["event"]["id"] for m in got) == [f"u-{i}" for i in range(5)]


async def test_sharded_collectors_read_the_plain_flow_stream_of_before_too(
    redis_url: str, redis_sync: redis.Redis, clickhouse_url: str, ch_admin: Any, database: str
) -> None:
    records = make_records(600, seed=5)
    for i in range(0, 300, 100):
        redis_sync.xadd("meshscope:flows", pack(records[i : i + 100]))  # type: ignore[arg-type]
    for i in range(300, 600, 100):
        shard = sk.flow_shards("meshscope:flows", 2)[i // 100 % 2]
        redis_sync.xadd(shard, pack(records[i : i + 100]))  # type: ignore[arg-type]
    config = CollectorConfig(
        redis_url=redis_url,
        clickhouse_url=clickhouse_url,
        database=database,
        consumer="c1",
        flow_shards=2,
        flush_interval_s=0.05,
        metrics_port=-1,
    )
    client = aioredis.Redis.from_url(redis_url)
    collector = Collector(config, client)
    task = asyncio.create_task(collector.run())
    try:
        await eventually(lambda: count(ch_admin, database) >= 600, 15)
        assert set(flow_keys(ch_admin, database).values()) == {1} and count(ch_admin, database) == 600
    finally:
        collector.stop()
        await asyncio.wait_for(task, scaled(10))
        await client.aclose()
