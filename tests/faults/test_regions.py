"""Regions stand alone: real relay processes, one real Valkey per region, real faults, every event counted.

- a region's Valkey killed with SIGKILL: only that region notices; every other region publishes on,
  events bound for it are held and all arrive once after it returns;
- a region cut off from every other region, from the central services and from the governance
  authority: its own traffic sees no error, cross-region events arrive after healing, the flow
  history is complete after the backfill, the map shows it stale, then caught up;
- a governance change made while one region is cut off converges after healing, and the mismatch
  is visible meanwhile;
- no relay of region X holds a connection to region Y's store: read from the stores' CLIENT LIST
  and from the relay processes' own sockets, not from their configuration.

Isolation windows here are seconds; ``meshscope chaos`` runs the same scenario for 60 s.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from meshcore import storekeys as sk
from meshcore.netproxy import TcpProxy
from tests.conftest import AUTH, POLICY, eventually, scaled
from tests.faults.conftest import (
    FaultMesh,
    Producer,
    ValkeyProcess,
    client_of,
    create_group,
    group_ids,
    tcp_connections,
)
from tests.faults.test_faults import exactly_once

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
HOME = {"MESHSCOPE_GOVERNANCE_HOME": A, "MESHSCOPE_LINK_STATS_INTERVAL_S": "0.2"}
B_LINKS = [(x, y) for x in (A, B, C) for y in (A, B, C) if x != y and B in (x, y)]

pytestmark = pytest.mark.faults

Stores = Callable[[list[str]], dict[str, ValkeyProcess]]


async def all_in(server: ValkeyProcess, region: str, group: str, producer: Producer, timeout_s: float = 30) -> None:
    """Every event ``producer`` got accepted is in ``region``'s group, exactly once."""
    client = client_of(server)
    try:
        want = set(producer.accepted)
        await eventually(lambda: want <= set(group_ids(client, region, group)), timeout_s, 0.2)
        await asyncio.sleep(0.5)  # nothing more arrives afterwards (no late duplicates)
        exactly_once(group_ids(client, region, group), producer.accepted)
    finally:
        client.close()


async def health(mesh: FaultMesh, region: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=3) as http:
        return dict((await http.get(f"{mesh[region].url}/healthz")).json())


async def test_a_regions_store_killed_stops_only_that_region_and_loses_nothing(
    fault_mesh: FaultMesh, region_valkeys: Stores
) -> None:
    stores = region_valkeys([A, B, C])
    await fault_mesh.start([A, B, C], stores=stores, **HOME)
    await create_group(fault_mesh[B], "audit", "orders.>")  # what A and C send to B
    await create_group(fault_mesh[A], "ledger", "payments.>")  # what C sends to A, while B is down
    for region in (A, C):
        await fault_mesh.wait_healthy(region)
    await asyncio.sleep(1.0)  # the groups' interest reaches the publishers
    stores[B].kill9()
    from_a = Producer(fault_mesh[A], "orders.created", "ka")
    from_c = Producer(fault_mesh[C], "orders.created", "kc")
    control = Producer(fault_mesh[C], "payments.settled", "pay")
    await asyncio.gather(from_a.publish(300, batch=20), from_c.publish(300, batch=20), control.publish(300, batch=20))
    # only B noticed: the other regions' publishers were never refused, and they say ok
    assert from_a.refusals == {} and from_c.refusals == {} and control.refusals == {}
    during = {region: await health(fault_mesh, region) for region in (A, B, C)}
    assert during[A]["status"] == "ok" and during[C]["status"] == "ok", (during[A], during[C])
    assert during[B]["status"] == "degraded" and any("redis" in r for r in during[B]["reasons"])
    async with httpx.AsyncClient(timeout=5, headers=AUTH) as http:
        own = await http.post(
            f"{fault_mesh[B].url}/v1/events",
            headers={"content-type": "application/cloudevents+json"},
            content=b'{"specversion":"1.0","id":"b-0","source":"/t","type":"orders.created"}',
        )
    assert own.status_code == 503 and own.headers["retry-after"]  # B's own producers are told to retry
    await all_in(stores[A], A, "ledger", control)  # delivered in A while B is down
    stores[B].start()  # the same port and append-only file
    await fault_mesh.wait_healthy(B)
    await all_in(stores[B], B, "audit", from_a)
    await all_in(stores[B], B, "audit", from_c)


@pytest.fixture
async def central(
    tmp_path: Path, clickhouse_url: str, database: str
) -> AsyncIterator[Callable[[dict[str, str], str], Any]]:
    """The central services in this process: a collector per region store (embedded ClickHouse) and the dashboard."""
    from collector.config import CollectorConfig
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    runtimes: list[Any] = []

    async def start(urls: dict[str, str], auth_file: str) -> Any:
        store = CollectorConfig(
            redis_url=urls[A],
            region_stores=tuple(urls.items()),
            clickhouse_url=clickhouse_url,
            database=database,
            consumer="central",
            flush_interval_s=0.1,
            metrics_port=-1,
        )
        runtime = await asyncio.to_thread(
            DashboardRuntime, DashboardConfig(store=store, port=0, auth_file=auth_file), True, False
        )
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.stop()


async def test_a_region_cut_off_serves_its_own_traffic_and_catches_up_after_healing(
    fault_mesh: FaultMesh, region_valkeys: Stores, central: Any, clickhouse_url: str, database: str
) -> None:
    stores = region_valkeys([A, B, C])
    await fault_mesh.start([A, B, C], proxied=B_LINKS, stores=stores, **HOME)
    gate = await TcpProxy("127.0.0.1", stores[B].port).start()  # the WAN between B's store and the central services
    try:
        urls = {A: stores[A].url, B: f"redis://127.0.0.1:{gate.port}/0", C: stores[C].url}
        runtime = await central(urls, str(fault_mesh.workdir / "principals.toml"))
        await create_group(fault_mesh[B], "audit", "orders.>")  # A -> B
        await create_group(fault_mesh[A], "inbox", "replies.>")  # B -> A
        await create_group(fault_mesh[B], "local", "local.>")  # B -> B
        for region in (A, B, C):
            await fault_mesh.wait_healthy(region)
        await eventually(lambda: none_stale(runtime, (A, B, C)), 15)
        await asyncio.sleep(1.0)
        # cut off from every other region, from the collector and dashboard, and so from the authority
        fault_mesh.isolate(B)
        gate.cut()
        cut_at = time.monotonic()
        into = Producer(fault_mesh[A], "orders.created", "in")
        out = Producer(fault_mesh[B], "replies.sent", "out")
        local = Producer(fault_mesh[B], "local.note", "loc")
        await asyncio.gather(into.publish(200, batch=20), out.publish(200, batch=20), local.publish(200, batch=20))
        assert out.refusals == {} and local.refusals == {}  # B's own producers saw no error
        await all_in(stores[B], B, "local", local, timeout_s=10)  # and its own subscribers got everything
        stale = await eventually(lambda: stale_view(runtime, B), 10)
        assert time.monotonic() - cut_at < scaled(10) and "unreachable from the dashboard" in stale.cause
        assert await none_stale(runtime, (A,))
        b_health = await health(fault_mesh, B)
        assert not b_health["governance"]["authority_reachable"] and b_health["links_up"] == 0
        await asyncio.sleep(max(0.0, 6 - (time.monotonic() - cut_at)))
        fault_mesh.heal(B)
        gate.forward()
        await all_in(stores[B], B, "audit", into)
        await all_in(stores[A], A, "inbox", out)
        await eventually(lambda: none_stale(runtime, (B,)), 15)
        # the flow history is complete after the backfill: every event published once and delivered once
        from collector.clickhouse import make_client

        ch = make_client(clickhouse_url, database=database)
        try:
            ids = {*into.accepted, *out.accepted, *local.accepted}

            def history() -> collections.Counter[str]:
                rows = ch.query(
                    "SELECT kind, event_id, count(), uniqExact(span_id) FROM flows"
                    " WHERE event_id LIKE 'in-%' OR event_id LIKE 'out-%' OR event_id LIKE 'loc-%'"
                    " GROUP BY kind, event_id"
                ).result_rows
                assert all(n == unique for _, _, n, unique in rows)  # no record stored twice
                return collections.Counter(k for k, e, n, _ in rows if e in ids and k in ("publish", "deliver") and n)

            counts = await eventually(
                lambda: (c := history())["publish"] == len(ids) and c["deliver"] == len(ids) and c, 30, 0.5
            )
            assert counts == {"publish": 600, "deliver": 600}
        finally:
            ch.close()
    finally:
        await gate.stop()


async def test_a_governance_change_made_while_a_region_is_cut_off_converges_after_healing(
    fault_mesh: FaultMesh, region_valkeys: Stores
) -> None:
    from collector.config import CollectorConfig
    from dashboard.regionstores import RegionStores
    from dashboard.relaystate import governance_view

    stores = region_valkeys([A, B, C])
    await fault_mesh.start([A, B, C], proxied=B_LINKS, stores=stores, **HOME)
    async with httpx.AsyncClient(timeout=scaled(15), headers=AUTH) as http:
        first = (await http.put(f"{fault_mesh[C].url}/v1/policies", json=POLICY)).json()["version"]

        async def versions() -> dict[str, str]:
            found = await asyncio.gather(*(health(fault_mesh, r) for r in (A, B, C)))
            return {r: h["governance"]["version"] for r, h in zip((A, B, C), found, strict=True)}

        await eventually(lambda: versions_are(versions, {A: first, B: first, C: first}), 10, 0.1)
        fault_mesh.isolate(B)
        await eventually(lambda: cut_off(fault_mesh, B), 10, 0.1)
        newer = await http.put(f"{fault_mesh[C].url}/v1/policies", json={"policies": POLICY["policies"][:1]})
        assert newer.status_code == 200, newer.text
        version = newer.json()["version"]
        await eventually(lambda: versions_are(versions, {A: version, B: first, C: version}), 10, 0.1)
        refused = await http.put(f"{fault_mesh[B].url}/v1/policies", json={"policies": []})
        assert refused.status_code == 503  # B cannot get a change ordered while cut off
        # the mismatch is visible: each region's report, read from each region's own store
        regions = RegionStores(
            CollectorConfig(redis_url=stores[A].url, region_stores=tuple((r, s.url) for r, s in stores.items())),
            client_of_async(stores[A].url),
        )
        try:
            view = await eventually(lambda: mismatch(regions, governance_view), 10, 0.5)
        finally:
            await regions.close()
            await regions.stores[0].client.aclose()
        assert {r["region"]: r["version"] for r in view["relays"]} == {A: version, B: first, C: version}
        assert next(r for r in view["relays"] if r["region"] == B)["cut_off"]
        healed = time.monotonic()
        fault_mesh.heal(B)
        await eventually(lambda: versions_are(versions, {A: version, B: version, C: version}), 10, 0.05)
        assert time.monotonic() - healed < scaled(5)
        stored = client_of(stores[B]).get(sk.GOVERNANCE_VERSION)
        assert stored is not None and stored.decode() == version  # kept in B's own store


async def none_stale(runtime: Any, regions: tuple[str, ...]) -> bool:
    """Whether the dashboard vouches for every one of ``regions`` now."""
    fresh = await runtime.hub.watch.assess()
    return not any(fresh.region(r).stale for r in regions)


async def stale_view(runtime: Any, region: str) -> Any:
    """The dashboard's verdict on ``region`` when it is stale, else None."""
    verdict = (await runtime.hub.watch.assess()).region(region)
    return verdict if verdict.stale else None


async def versions_are(versions: Callable[[], Any], want: dict[str, str]) -> bool:
    return bool(await versions() == want)


async def cut_off(mesh: FaultMesh, region: str) -> bool:
    return not (await health(mesh, region))["governance"]["authority_reachable"]


def client_of_async(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url)


async def mismatch(regions: Any, governance_view: Any) -> Any:
    await regions.poll()
    view = governance_view(regions.states(), None, [])
    return view if view["mismatch"] and len(view["relays"]) == 3 else None


async def test_no_relay_holds_a_connection_to_another_regions_store(
    fault_mesh: FaultMesh, region_valkeys: Stores
) -> None:
    stores = region_valkeys([A, B, C])
    await fault_mesh.start([A, B, C], stores=stores, **HOME)
    await create_group(fault_mesh[B], "audit", "orders.>")
    await create_group(fault_mesh[C], "audit", "orders.>")
    async with httpx.AsyncClient(timeout=scaled(15), headers=AUTH) as http:
        assert (await http.put(f"{fault_mesh[B].url}/v1/policies", json=POLICY)).status_code == 200
    await asyncio.sleep(1.0)
    producer = Producer(fault_mesh[A], "orders.created", "conn")
    await producer.publish(200, batch=20)
    await all_in(stores[B], B, "audit", producer)
    await asyncio.sleep(2.5)  # every periodic writer (samples, state, link state) has run
    store_ports = {region: server.port for region, server in stores.items()}
    for region, relay in fault_mesh.relays.items():
        assert relay.proc is not None
        # the relay process's own sockets: the only store it talks to is its region's
        remote = {port for _, port in tcp_connections(relay.proc.pid)}
        talks_to = {r for r, port in store_ports.items() if port in remote}
        assert talks_to == {region}, f"relay of {region} is connected to the stores of {sorted(talks_to)}"
    for region, server in stores.items():
        client = client_of(server)
        try:
            clients = client.client_list()
        finally:
            client.close()
        # by name (CLIENT SETNAME), and by address: each connection's source port belongs to one process
        named = {c["name"] for c in clients if c["name"].startswith("meshscope:relay:")}
        assert named and all(n.startswith(f"meshscope:relay:{region}:") for n in named), (region, named)
        owners = {}
        for other, relay in fault_mesh.relays.items():
            assert relay.proc is not None
            for local_port, remote_port in tcp_connections(relay.proc.pid):
                if remote_port == server.port:
                    owners[local_port] = other
        sources = {int(c["addr"].rsplit(":", 1)[1]) for c in clients}
        relays_here = {owners[port] for port in sources if port in owners}
        assert relays_here == {region}, f"{region}'s store has connections from the relays of {sorted(relays_here)}"
