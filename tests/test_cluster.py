"""A region's store on a real three-node Valkey cluster: keys spread by hash tag, commits split per slot,
collectors sharing the flow stream's shards; and the pure parts of the key plan."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot
from websockets.asyncio.client import connect

from collector.batch import Batch
from collector.config import CollectorConfig
from collector.service import Collector
from meshcore import storekeys as sk
from meshcore.breaker import CircuitBreaker
from meshcore.flowrecord import pack
from meshcore.server import is_cluster, redis_client
from router.committer import Committer, Ops, split_by_tag
from tests.conftest import AUTH, CE_JSON, POLICY, Mesh, cloud_event, eventually, scaled, stop_collectors
from tests.test_collector import count, flow_keys, make_records

A, C = "aws:us-east-1", "azure:westeurope"
SHARDS = 4
CE_BATCH = {"content-type": "application/cloudevents-batch+json"}


# ---- the key plan (pure) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("meshscope:flows", "meshscope:flows"),
        ("meshscope:flows:{3}", "3"),
        (sk.applied(A), A),
        (sk.dedup(A, "relay-1"), A),
        (sk.outmeta(A), A),
        (sk.groups(A), A),
        (sk.commit_counter(A, f"{A}/relay-1"), A),
        (sk.group_stream(A, "billing"), f"{A}:billing"),
        (sk.outbound(A, C), f"{A}>{C}"),
        (sk.GOVERNANCE_CURRENT, "governance"),
        (sk.ALERTS_STATE, "alerts"),
        (sk.manifests("meshscope:flows"), "meshscope:flows"),
        (sk.manifests("meshscope:flows:{3}"), "3"),
        ("a{}b{c}", "a{}b{c}"),  # an empty first tag: the whole key, as a cluster hashes it
        ("a{b", "a{b"),
    ],
)
def test_each_key_hashes_on_the_tag_that_keeps_it_with_its_own(key: str, tag: str) -> None:
    assert sk.hash_tag(key) == tag
    assert key_slot(key.encode()) == key_slot(tag.encode())  # what the cluster itself computes


def test_the_region_state_a_commit_marks_last_shares_one_slot() -> None:
    slots = {key_slot(k.encode()) for k in (sk.applied(A), sk.dedup(A, "r"), sk.outmeta(A), sk.commit_counter(A, "w"))}
    assert len(slots) == 1
    governance = (sk.GOVERNANCE_CURRENT, sk.GOVERNANCE_VERSION, sk.GOVERNANCE_VERSIONS, sk.GOVERNANCE_LOG)
    assert len({key_slot(k.encode()) for k in governance}) == 1  # one transaction changes them
    assert key_slot(sk.ALERTS_STATE.encode()) == key_slot(sk.ALERTS_LEADER.encode())


@given(st.text(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_a_writer_always_writes_the_same_shard_of_those_collectors_read(writer: str, shards: int) -> None:
    shard = sk.flow_shard("meshscope:flows", shards, writer)
    assert shard == sk.flow_shard("meshscope:flows", shards, writer)
    assert shard in sk.flow_streams_read("meshscope:flows", shards)
    assert len(set(sk.flow_shards("meshscope:flows", shards))) == shards


def test_one_shard_is_the_stream_itself_and_more_are_read_with_it() -> None:
    assert sk.flow_shards("meshscope:flows", 1) == ["meshscope:flows"]
    assert sk.flow_streams_read("meshscope:flows", 1) == ["meshscope:flows"]
    shards_and_before = ["meshscope:flows:{0}", "meshscope:flows:{1}", "meshscope:flows"]
    assert sk.flow_streams_read("meshscope:flows", 2) == shards_and_before


_keys = st.sampled_from(
    [sk.applied(A), sk.outmeta(A), sk.group_stream(A, "g"), sk.outbound(A, C), "meshscope:flows:{1}", "plain"]
)
_op = st.one_of(
    st.tuples(st.just("X"), _keys, st.dictionaries(st.binary(max_size=4), st.binary(max_size=8), max_size=3)),
    st.tuples(st.just("H"), _keys, st.text(max_size=5), st.binary(max_size=8)),
    st.tuples(st.just("D"), _keys, st.text(max_size=5)),
    st.tuples(st.just("T"), _keys, st.integers(0, 100)),
)


@given(st.lists(_op, max_size=20))
def test_a_commit_split_by_tag_keeps_every_operation_once_in_order(ops: list[tuple[Any, ...]]) -> None:
    whole = Ops()
    by_tag: dict[str, Ops] = {}
    for op in ops:
        for target in (whole, by_tag.setdefault(sk.hash_tag(op[1]), Ops())):
            if op[0] == "X":
                target.xadd(op[1], op[2])
            elif op[0] == "H":
                target.hset(op[1], op[2], op[3])
            elif op[0] == "D":
                target.hdel(op[1], op[2])
            else:
                target.trim(op[1], op[2])
    parts = split_by_tag(whole.args)
    assert parts == {tag: o.args for tag, o in by_tag.items() if o.args}


def test_a_commit_with_an_unknown_operation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown commit operation"):
        split_by_tag(["Z", "key"])


def test_waiting_for_the_disk_is_refused_on_a_cluster_with_a_clear_error() -> None:
    client = aioredis.Redis()  # never connected
    with pytest.raises(ValueError, match="not offered on a cluster"):
        Committer(client, "w", CircuitBreaker("t"), wait="fsync", cluster=True)


def test_the_store_url_and_the_shard_count_choose_the_cluster_and_its_shards() -> None:
    from collector.config import CollectorConfig
    from meshcore.settings import SettingError
    from router.config import RelayConfig

    env = {"MESHSCOPE_REGION": A, "REDIS_URL": "redis+cluster://10.0.0.1:7000", "MESHSCOPE_FLOW_SHARDS": "8"}
    relay, collector = RelayConfig.from_env(env), CollectorConfig.from_env(env)
    assert relay.flow_shards == collector.flow_shards == 8
    assert CollectorConfig.from_env({"MESHSCOPE_REGION_STORES": f"{A}=rediss+cluster://h:7000"}).region_stores == (
        (A, "rediss+cluster://h:7000"),
    )
    for bad in ("0", "-1", "x", "²"):
        with pytest.raises(SettingError):
            RelayConfig.from_env({**env, "MESHSCOPE_FLOW_SHARDS": bad})
    assert is_cluster(redis_client("redis+cluster://127.0.0.1:1"))
    assert not is_cluster(redis_client("redis://127.0.0.1:1/0"))


# ---- on the cluster -----------------------------------------------------------------------


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(cluster_url, "meshscope:test")
    assert is_cluster(client)
    yield client
    await client.aclose()


async def test_a_commit_over_three_nodes_lands_each_part_once_and_a_retry_is_skipped(
    store: aioredis.Redis, valkey_cluster: Any
) -> None:
    keys = [sk.outbound(A, C), sk.group_stream(A, "billing"), sk.applied(A), "meshscope:flows:{1}"]
    assert len({valkey_cluster.node_of(k) for k in keys}) == 3
    committer = Committer(store, f"{A}/relay-1", CircuitBreaker("t"), home=A, cluster=True)
    ops = Ops()
    ops.xadd(keys[0], {b"d": b"held"})
    ops.xadd(keys[1], {b"e": b"event"})
    ops.hset(keys[2], "origin", b"{}")
    ops.xadd(keys[3], {b"r": b"[]"})
    landed: list[bool] = []
    ops.then.append(lambda: landed.append(True))
    runner = asyncio.create_task(committer.run())
    try:
        await committer.commit(ops, scaled(5))
        assert landed == [True]
        assert [await store.xlen(k) for k in (keys[0], keys[1], keys[3])] == [1, 1, 1]
        assert await store.hget(keys[2], "origin") == b"{}"
        # a reply lost after every part landed: each part run again under its number is skipped
        parts = split_by_tag(ops.args)
        assert len(parts) == 4 and len(committer._numbers) == 4
        for tag, args in parts.items():
            counter = sk.commit_counter(tag, f"{A}/relay-1")
            assert await committer._run(counter, committer._numbers[counter], args) == 0
        assert [await store.xlen(k) for k in (keys[0], keys[1], keys[3])] == [1, 1, 1]
        counters = [k async for k in store.scan_iter(match=f"{sk.COMMIT_PREFIX}*")]
        assert len(counters) == 4  # one per tag the commit touched
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def cluster_collector(url: str, clickhouse_url: str, database: str, **kw: Any) -> CollectorConfig:
    base: dict[str, Any] = dict(
        redis_url=url,
        clickhouse_url=clickhouse_url,
        database=database,
        consumer="c1",
        flow_shards=SHARDS,
        flush_interval_s=0.05,
        claim_idle_s=0.5,
        metrics_port=-1,
    )
    return CollectorConfig(**{**base, **kw})


@pytest.fixture
async def run_collector(cluster_url: str, clickhouse_url: str, database: str) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Collector, asyncio.Task[None], aioredis.Redis]] = []

    async def start(**kw: Any) -> Collector:
        client = redis_client(cluster_url)
        collector = Collector(cluster_collector(cluster_url, clickhouse_url, database, **kw), client)
        running.append((collector, asyncio.create_task(collector.run()), client))
        return collector

    yield start
    await stop_collectors(running)


async def test_events_cross_a_mesh_whose_stores_are_a_cluster_into_clickhouse_and_a_durable_group(
    cluster_url: str,
    valkey_cluster: Any,
    tmp_path: Any,
    store: aioredis.Redis,
    run_collector: Any,
    ch_admin: Any,
    database: str,
) -> None:
    mesh = Mesh(cluster_url, tmp_path)
    try:
        await mesh.start([A, C], env={"MESHSCOPE_FLOW_SHARDS": str(SHARDS)})
        written = {mesh[r].relay.flow_stream for r in (A, C)}
        assert len({valkey_cluster.node_of(k) for k in written}) == 2  # the relays' shards on two nodes
        base = f"{mesh[C].ws_url}/v1/subscribe?topic=orders.>&group=billing"
        async with (
            connect(f"{base}&consumer=m1", additional_headers=AUTH) as member,
            httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http,
        ):
            await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
            batch = [cloud_event("orders.x", f"k-{i}") for i in range(30)]
            reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_BATCH, content=orjson.dumps(batch))
            assert reply.status_code == 202, reply.text
            got: list[dict[str, Any]] = []
            while len(got) < 30:
                got.append(orjson.loads(await asyncio.wait_for(member.recv(), scaled(10))))
            assert sorted(m["event"]["id"] for m in got) == sorted(e["id"] for e in batch)
            await member.send(orjson.dumps({"ack": [m["ack"] for m in got]}).decode())
            group = sk.group_stream(C, "billing")
            await eventually(lambda: _pending(store, group))

        # the link store held them until C acknowledged: its numbering moved past all 30
        async def link_store() -> Any:
            meta = orjson.loads(await store.hget(sk.outmeta(A), C) or b"{}")
            return meta.get("floor") == meta.get("next") == 31 and await store.xlen(sk.outbound(A, C)) == 0

        await eventually(link_store, 5)
        # a publish, a forward and a deliver record per event, from both relays' shards
        await run_collector()
        await eventually(lambda: count(ch_admin, database, "event_id LIKE 'k-%'") >= 90, 15)
        kinds = Counter(kind for (eid, kind, _, _), n in flow_keys(ch_admin, database).items() if eid.startswith("k-"))
        assert kinds == {"publish": 30, "forward": 30, "deliver": 30}
        assert all(n == 1 for n in flow_keys(ch_admin, database).values())
    finally:
        await mesh.stop()


async def _pending(client: aioredis.Redis, stream: str) -> bool:
    summary: Any = await client.xpending(stream, "billing")
    return int(summary["pending"]) == 0


async def test_collectors_share_the_shards_and_take_over_from_one_that_died(
    store: aioredis.Redis, valkey_cluster: Any, run_collector: Any, ch_admin: Any, database: str
) -> None:
    shards = sk.flow_shards("meshscope:flows", SHARDS)
    assert len({valkey_cluster.node_of(k) for k in shards}) == 3
    records = make_records(4000, seed=11)
    for i in range(0, len(records), 100):
        await store.xadd(shards[(i // 100) % SHARDS], pack(records[i : i + 100]))  # type: ignore[arg-type]

    class Crash(BaseException):
        pass

    def crash(batch: Batch) -> None:
        raise Crash

    first = await run_collector(consumer="one", read_count=5, batch_rows=500)
    first.after_insert = crash  # dies between an insert and its acknowledgement
    await eventually(lambda: count(ch_admin, database) > 0, 15)
    second = await run_collector(consumer="two", read_count=5, batch_rows=500)
    await eventually(lambda: count(ch_admin, database) >= 4000, 30)
    keys = flow_keys(ch_admin, database)
    assert len(keys) == 4000 and set(keys.values()) == {1}  # the dead one's batch was not inserted twice

    async def settled() -> bool:
        for shard in shards:
            if int((await store.xpending(shard, "meshscope-collectors"))["pending"]):
                return False
            if await store.hlen(sk.manifests(shard)):
                return False
        return True

    await eventually(settled, 15)
    assert (
        second.metrics.get("collector_recovered_batches_total") + second.metrics.get("collector_claimed_entries_total")
        > 0
    )
    assert second.health()["streams"][0]["stream"] == "meshscope:flows"  # one position for the sharded stream


def test_the_cluster_spreads_what_a_relay_writes_over_its_nodes(valkey_cluster: Any) -> None:
    keys = [sk.outbound(A, C), sk.group_stream(C, "billing"), sk.applied(A), *sk.flow_shards("meshscope:flows", 4)]
    assert {valkey_cluster.node_of(k) for k in keys} == {0, 1, 2}
    with redis.Redis.from_url(valkey_cluster.node_url(0)) as node:
        assert b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO")


async def test_a_governance_change_on_a_cluster_store_is_one_transaction_and_reaches_every_relay(
    cluster_url: str, tmp_path: Any, store: aioredis.Redis
) -> None:
    mesh = Mesh(cluster_url, tmp_path)
    try:
        await mesh.start([A, C])
        async with httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http:
            reply = await http.put(f"{mesh[A].url}/v1/policies", json=POLICY)
            assert reply.status_code == 200, reply.text
            version = reply.json()["version"]
            for region in (A, C):
                await eventually(lambda region=region: mesh[region].relay.gov_version == version, 5)
            assert (await store.get(sk.GOVERNANCE_VERSION)) == version.encode()
            assert await store.xlen(sk.GOVERNANCE_LOG) == 1
            refused = await http.post(
                f"{mesh[C].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("secret.x", "s-1"))
            )
            assert refused.status_code == 403
    finally:
        await mesh.stop()


async def test_the_dashboard_reads_a_cluster_store_and_its_live_feed(
    cluster_url: str, tmp_path: Any, clickhouse_url: str, database: str
) -> None:
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    mesh = Mesh(cluster_url, tmp_path)
    runtime: Any = None
    try:
        await mesh.start([A, C], env={"MESHSCOPE_FLOW_SHARDS": str(SHARDS)})
        store = cluster_collector(cluster_url, clickhouse_url, database, consumer="dash", flush_interval_s=0.1)
        config = DashboardConfig(store=store, port=0, auth_file=mesh.auth_file)
        runtime = await asyncio.to_thread(DashboardRuntime, config, True, False)
        await runtime.start()
        sub = mesh[C].relay.subscribe(["orders.>"])
        await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
        url = str(runtime.server.url)
        async with (
            connect(url.replace("http", "ws") + "/ws/live", additional_headers=AUTH) as ws,
            httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http,
        ):
            batch = [cloud_event("orders.x", f"d-{i}") for i in range(12)]
            reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_BATCH, content=orjson.dumps(batch))
            assert reply.status_code == 202, reply.text
            await eventually(lambda: sub.queue.qsize() == 12)
            delivered = 0
            deadline = asyncio.get_running_loop().time() + scaled(10)
            while asyncio.get_running_loop().time() < deadline and delivered < 12:
                message = orjson.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
                if message["type"] == "edges":
                    delivered += sum(e["delivered"] for e in message["edges"] if (e["src"], e["dst"]) == (A, C))
            assert delivered == 12

            async def healthy() -> Any:
                health = (await http.get(f"{url}/healthz")).json()
                return health["status"] == "ok" or print("HEALTH", health)

            await eventually(healthy, 10, 0.5)  # the collector's position and live feed, read from the cluster
    finally:
        if runtime is not None:
            await runtime.stop()
        await mesh.stop()


async def test_a_relay_restarted_on_a_cluster_store_loads_what_it_held_and_the_keys_it_accepted(
    cluster_url: str, tmp_path: Any, store: aioredis.Redis
) -> None:
    mesh = Mesh(cluster_url, tmp_path)
    try:
        await mesh.start([A, C])
        mesh[C].relay.subscribe(["orders.>"])
        await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
        await mesh.stop_one(C)  # C's interest is still known at A: what A accepts for it is held
        batch = [cloud_event("orders.x", f"h-{i}") for i in range(10)]
        async with httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http:
            reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_BATCH, content=orjson.dumps(batch))
            assert reply.status_code == 202, reply.text
            assert mesh[A].relay.outbox.depth == 10
            await mesh.stop_one(A)
            a = await mesh.start_one(A)  # from the cluster: the link store, its numbering, the store's run id
            assert a.relay.outbox.depth == 10 and a.relay.outbox.store_run
            again = await http.post(f"{a.url}/v1/events", headers=CE_BATCH, content=orjson.dumps(batch[:3]))
            assert again.json()["duplicates"] == ["h-0", "h-1", "h-2"]  # the dedup keys came back from the cluster
    finally:
        await mesh.stop()
