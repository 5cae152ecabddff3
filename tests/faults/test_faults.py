"""The fault suite: real relay processes, real Valkey, real faults; every event counted end to end.

Each scenario publishes numbered events at one relay for a durable group in
another region, injects a fault, and checks the group's stream at the end:
every accepted event is there exactly once, or (where losing it is the
documented policy) every missing one has a ``drop`` record naming it.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest
import redis

from meshcore import storekeys as sk
from tests.conftest import AUTH, eventually, scaled
from tests.faults.conftest import FaultMesh, Producer, ValkeyProcess, create_group, flow_records, group_ids

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"

pytestmark = pytest.mark.faults


def exactly_once(ids: list[str], accepted: list[str]) -> None:
    counts = collections.Counter(ids)
    twice = [i for i, n in counts.items() if n > 1]
    missing = sorted(set(accepted) - set(counts))
    assert not twice, f"{len(twice)} events stored twice, e.g. {twice[:5]}"
    assert not missing, f"{len(missing)} accepted events never arrived, e.g. {missing[:5]}"


async def all_arrive(client: redis.Redis, producer: Producer, region: str, group: str, timeout_s: float = 30) -> None:
    want = set(producer.accepted)
    await eventually(lambda: want <= set(group_ids(client, region, group)), timeout_s, 0.2)
    await asyncio.sleep(0.5)  # nothing more arrives afterwards (no late duplicates)
    exactly_once(group_ids(client, region, group), producer.accepted)


def delivered_ids(client: redis.Redis, region: str) -> list[str]:
    """Event ids of the deliver records written in ``region``."""
    return [r.event_id for r in flow_records(client) if r.kind == "deliver" and r.dst_region == region]


@pytest.fixture
def client(valkey: ValkeyProcess) -> redis.Redis:
    return redis.Redis.from_url(valkey.url)


async def test_sending_relay_killed_with_events_queued_loses_nothing(
    fault_mesh: FaultMesh, client: redis.Redis
) -> None:
    await fault_mesh.start([A, B], proxied=[(A, B)])
    await create_group(fault_mesh[B], "audit", "orders.>")
    await fault_mesh.wait_healthy(A)
    link = fault_mesh.proxies[(A, B)]
    link.cut()  # A cannot reach B: what A accepts for B waits in A's store
    producer = Producer(fault_mesh[A], "orders.created", "kill")
    await producer.publish(2000, batch=100)
    fault_mesh[A].kill9()
    link.forward()
    fault_mesh[A].start()
    await all_arrive(client, producer, B, "audit")
    records = flow_records(client)
    assert not [r for r in records if r.kind == "drop" and r.event_id.startswith("kill-")]
    delivered = collections.Counter(r.event_id for r in records if r.kind == "deliver" and r.dst_region == B)
    assert set(delivered) == set(producer.accepted) and max(delivered.values()) == 1


async def test_receiving_relay_killed_mid_stream_applies_each_event_once(
    fault_mesh: FaultMesh, client: redis.Redis
) -> None:
    await fault_mesh.start([A, B])
    await create_group(fault_mesh[B], "audit", "orders.>")
    producer = Producer(fault_mesh[A], "orders.created", "recv")
    publishing = asyncio.create_task(producer.publish(3000, batch=50))
    await eventually(lambda: len(producer.accepted) >= 500, 20)
    fault_mesh[B].kill9()
    await asyncio.sleep(0.5)
    fault_mesh[B].start()
    await publishing
    await all_arrive(client, producer, B, "audit")
    delivered = collections.Counter(
        r.event_id for r in flow_records(client) if r.kind == "deliver" and r.event_id.startswith("recv-")
    )
    assert max(delivered.values()) == 1 and len(delivered) == 3000  # deliver records once each, too


async def test_valkey_restart_while_publishing_loses_and_duplicates_nothing(
    fault_mesh: FaultMesh, client: redis.Redis, valkey: ValkeyProcess
) -> None:
    await fault_mesh.start([A, B])
    await create_group(fault_mesh[B], "audit", "orders.>", consumer="m1")  # the member that reads below
    from websockets.asyncio.client import connect

    received: list[str] = []

    async def member() -> None:
        """A group member connected through the outage; it must go on receiving afterwards."""
        import orjson

        url = f"{fault_mesh[B].ws_url}/v1/subscribe?topic=orders.>&group=audit&consumer=m1"
        async with connect(url, additional_headers=AUTH) as ws:
            async for raw in ws:
                msg = orjson.loads(raw)
                received.append(msg["event"]["id"])
                await ws.send(orjson.dumps({"ack": [msg["ack"]]}))

    consumer = asyncio.create_task(member())
    producer = Producer(fault_mesh[A], "orders.created", "vk")
    publishing = asyncio.create_task(producer.publish(2000, batch=20, pause_s=0.005))
    await eventually(lambda: len(producer.accepted) >= 300, 20)
    valkey.stop()
    await asyncio.sleep(3)
    async with httpx.AsyncClient() as http:
        outage = (await http.get(f"{fault_mesh[A].url}/healthz")).json()
    valkey.start()
    await publishing
    assert outage["status"] == "degraded" and any("redis" in r for r in outage["reasons"])
    assert producer.refusals.get(503, 0) > 0  # publishers were told to retry, not lied to
    # the member acknowledges what it gets, and acknowledged entries leave the group's stream: count
    # the deliver records instead, written in the same commit as each group append
    want = set(producer.accepted)
    await eventually(lambda: want <= set(delivered_ids(client, B)), 30, 0.2)
    await asyncio.sleep(0.5)  # nothing more arrives afterwards (no late duplicates)
    exactly_once(delivered_ids(client, B), producer.accepted)
    try:
        await eventually(lambda: set(received) >= set(producer.accepted), 20)
    except AssertionError:
        missing = set(producer.accepted) - set(received)
        raise AssertionError(
            f"member got {len(received)} ({len(set(received))} distinct), missing {len(missing)}; "
            f"consumer done={consumer.done()} {consumer.exception() if consumer.done() else ''}"
        ) from None
    assert not consumer.done(), "the group member's reader died with the outage"
    consumer.cancel()
    for region in (A, B):
        health = await fault_mesh.wait_healthy(region)
        assert health["status"] == "ok"


async def test_black_holed_link_is_declared_down_within_three_pings_and_loses_nothing(
    fault_mesh: FaultMesh, client: redis.Redis
) -> None:
    await fault_mesh.start([A, B], proxied=[(A, B)])
    await create_group(fault_mesh[B], "audit", "orders.>")
    producer = Producer(fault_mesh[A], "orders.created", "bh")
    await producer.publish(200, batch=50)
    link = fault_mesh.proxies[(A, B)]
    link.blackhole()
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        await eventually(
            lambda: http.get(f"{fault_mesh[A].url}/healthz"),
            1,
        )

        async def down() -> bool:
            health = (await http.get(f"{fault_mesh[A].url}/healthz")).json()
            return bool(health["links"][B] != "up")

        await eventually(down, 5, 0.05)
    detected_s = time.monotonic() - started
    assert detected_s <= scaled(3 * 0.3 + 0.6), f"black hole detected after {detected_s:.2f} s"
    await producer.publish(400, batch=50)  # accepted and held while the link is dead
    link.forward()
    await all_arrive(client, producer, B, "audit")


async def test_link_flaps_during_a_burst_lose_and_duplicate_nothing(fault_mesh: FaultMesh, client: redis.Redis) -> None:
    await fault_mesh.start([A, B], proxied=[(A, B)])
    await create_group(fault_mesh[B], "audit", "orders.>")
    producer = Producer(fault_mesh[A], "orders.created", "flap")
    publishing = asyncio.create_task(producer.publish(3000, batch=50))
    link = fault_mesh.proxies[(A, B)]
    for _ in range(6):
        await asyncio.sleep(0.3)
        link.cut()
        await asyncio.sleep(0.2)
        link.forward()
    await publishing
    await all_arrive(client, producer, B, "audit")


async def test_a_partition_forces_a_detour_and_healing_returns_to_the_direct_link(
    fault_mesh: FaultMesh, client: redis.Redis
) -> None:
    await fault_mesh.start([A, B, C], proxied=[(A, B), (B, A)])
    await create_group(fault_mesh[B], "audit", "orders.>")
    await fault_mesh.wait_healthy(A)
    fault_mesh.proxies[(A, B)].cut()
    fault_mesh.proxies[(B, A)].cut()
    await fault_mesh.wait_healthy(A, links_up=1)
    producer = Producer(fault_mesh[A], "orders.created", "part")
    await producer.publish(500, batch=50)
    await all_arrive(client, producer, B, "audit")
    records = flow_records(client)
    forwards = [r for r in records if r.kind == "forward" and r.event_id.startswith("part-") and r.dst_region == B]
    assert forwards and {r.via for r in forwards} == {C}  # the edge A->B was served through C
    transits = [r for r in records if r.kind == "transit" and r.event_id.startswith("part-")]
    assert transits and {r.relay for r in transits} == {f"relay-{C}"}
    delivers = [r for r in records if r.kind == "deliver" and r.event_id.startswith("part-")]
    assert {r.via for r in delivers} == {C} and {r.src_region for r in delivers} == {A}
    # one trace id per event across the detour, and the hops chain parent to child
    by_event = collections.defaultdict(list)
    for r in records:
        if r.event_id == "part-0":
            by_event[r.kind].append(r)
    assert by_event["transit"][0].parent_span_id == by_event["forward"][0].span_id
    assert by_event["deliver"][0].parent_span_id == by_event["transit"][0].span_id
    assert len({r.trace_id for rs in by_event.values() for r in rs}) == 1
    # healing: back to the direct link, without duplicates
    fault_mesh.proxies[(A, B)].forward()
    fault_mesh.proxies[(B, A)].forward()
    await fault_mesh.wait_healthy(A)
    healed = Producer(fault_mesh[A], "orders.created", "heal")
    await healed.publish(300, batch=50)
    await all_arrive(client, healed, B, "audit")
    exactly_once(group_ids(client, B, "audit"), producer.accepted + healed.accepted)
    direct = [r for r in flow_records(client) if r.kind == "forward" and r.event_id.startswith("heal-")]
    assert {r.via for r in direct} == {B}


async def test_store_overflow_drops_the_oldest_and_names_each_one(fault_mesh: FaultMesh, client: redis.Redis) -> None:
    await fault_mesh.start([A, B], proxied=[(A, B)], MESHSCOPE_LINK_STORE_MAX="100")
    await create_group(fault_mesh[B], "audit", "orders.>")
    await fault_mesh.wait_healthy(A)
    fault_mesh.proxies[(A, B)].cut()
    producer = Producer(fault_mesh[A], "orders.created", "ovf")
    await producer.publish(300, batch=50)
    fault_mesh.proxies[(A, B)].forward()
    arrived = await eventually(lambda: (ids := group_ids(client, B, "audit")) and len(ids) >= 100 and ids, 20)
    expired = {r.event_id for r in flow_records(client) if r.kind == "drop" and r.status == "expired"}
    assert len(arrived) == 100 and len(set(arrived)) == 100
    assert expired | set(arrived) == set(producer.accepted) and not expired & set(arrived)
    assert sorted(arrived, key=lambda i: int(i.split("-")[1])) == [f"ovf-{i}" for i in range(200, 300)]


async def test_stored_events_missing_after_a_restart_are_reported_as_a_gap(
    fault_mesh: FaultMesh, client: redis.Redis
) -> None:
    await fault_mesh.start([A, B], proxied=[(A, B)])
    await create_group(fault_mesh[B], "audit", "orders.>")
    await fault_mesh.wait_healthy(A)
    fault_mesh.proxies[(A, B)].cut()
    producer = Producer(fault_mesh[A], "orders.created", "gap")
    await producer.publish(50, batch=10)
    fault_mesh[A].kill9()
    client.delete(sk.outbound(A, B))  # the store lost what A held (its sequence state survived)
    fault_mesh.proxies[(A, B)].forward()
    fault_mesh[A].start()
    gaps = await eventually(
        lambda: [r for r in flow_records(client) if r.kind == "drop" and r.status == "gap" and r.dst_region == B], 20
    )
    assert [(g.src_region, g.seq, g.seq_end) for g in gaps] == [(A, 1, 50)]
    assert group_ids(client, B, "audit") == []
    # the mesh goes on: later events arrive
    after = Producer(fault_mesh[A], "orders.created", "after")
    await after.publish(20, batch=10)
    await all_arrive(client, after, B, "audit")
    assert scaled(1) > 0


async def test_collector_killed_repeatedly_stores_every_record_once(
    tmp_path: pytest.TempPathFactory, client: redis.Redis, valkey: ValkeyProcess
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from meshcore.flowrecord import FlowRecord, pack

    total = 60_000
    for start in range(0, total, 500):
        rows = [
            FlowRecord(1_795_000_000_000_000 + i, f"e{i}", "t" * 32, f"{i:016x}", "", "orders.x", "deliver", A, B,
                       "r", 1.0, 2.0, "ok", 100, 1, i)
            for i in range(start, start + 500)
        ]  # fmt: skip
        client.xadd("meshscope:flows", pack(rows))  # type: ignore[arg-type]
    chdb = f"chdb://{tmp_path}/clickhouse"  # type: ignore[operator]
    env = {
        **os.environ,
        "REDIS_URL": valkey.url,
        "CLICKHOUSE_URL": chdb,
        "MESHSCOPE_COLLECTOR_BATCH_ROWS": "500",  # one stream entry per insert: many chances to die mid-way
        "MESHSCOPE_COLLECTOR_READ_ENTRIES": "1",
        "MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S": "0.05",
        "MESHSCOPE_COLLECTOR_METRICS_PORT": "-1",
        "MESHSCOPE_COLLECTOR_CLAIM_IDLE_S": "1",
        "MESHSCOPE_LOG_LEVEL": "WARNING",
    }
    # a restart under the same name, then new names as the default (host-pid) gives
    names = iter(["faulty", "faulty", "faulty-2", "faulty-3"])

    def start() -> subprocess.Popen[bytes]:
        with open(f"{tmp_path}/collector.log", "ab") as log:  # type: ignore[operator]
            return subprocess.Popen(
                [sys.executable, "-m", "meshscope", "collector"],
                env={**env, "MESHSCOPE_COLLECTOR_NAME": next(names)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def acked() -> int:
        groups = client.xinfo_groups("meshscope:flows")
        return sum(int(g["entries-read"] or 0) - int(g["pending"]) for g in groups)

    kills = 0
    started: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(3):
            proc = start()
            started.append(proc)
            before = acked()
            # kill it while it works: some batches acknowledged, more inserted or on their way
            try:
                await eventually(lambda before=before: acked() >= before + 10, 30, 0.01)
            except AssertionError:
                raise AssertionError(f"kill {kills}: acked {acked()} of {total // 500} (before {before})") from None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = start()
        started.append(proc)
        await eventually(lambda: acked() >= total // 500 and not client.hlen(sk.manifests("meshscope:flows")), 60, 0.1)
        proc.terminate()
        proc.wait(20)
    finally:
        for proc in started:  # its own session: nothing else would stop it if the test failed
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out = subprocess.run(
        [sys.executable, "-m", "meshscope", "sql", "SELECT count(), uniqExact(span_id) FROM flows", "--format", "csv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == f"{total},{total}", f"after {kills} kills: {out.stdout}"
