"""An origin's sequence state under faults: a store that went back, and a transit relay that lies.

Relays are processes; every event is counted in the destination's durable
group. A store "going back" is real: Valkey killed with SIGKILL and its
append-only file cut back to an earlier size, as when a host crashes with the
last second of writes not yet on disk.
"""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from meshcore import storekeys as sk
from meshcore.flowrecord import FlowRecord
from tests.conftest import eventually, relay_token
from tests.faults.conftest import (
    FaultMesh,
    Producer,
    ValkeyProcess,
    create_group,
    flow_records,
    group_ids,
)

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
MAX_SEQ = (1 << 63) - 1

pytestmark = pytest.mark.faults


def exactly_once(ids: list[str], want: list[str]) -> None:
    counts = collections.Counter(ids)
    twice = [i for i, n in counts.items() if n > 1]
    missing = sorted(set(want) - set(counts), key=lambda i: int(i.rsplit("-", 1)[1]))
    assert not twice, f"{len(twice)} events twice, e.g. {twice[:5]}"
    assert not missing, f"{len(missing)} events never arrived, e.g. {missing[:5]}"


async def arrive(client: redis.Redis, group: str, want: list[str]) -> None:
    await eventually(lambda: set(want) <= set(group_ids(client, B, group)), 30, 0.2)


def aof_tail(data: Path) -> Path:
    """The append-only file Valkey writes to now (the newest incremental part)."""
    parts = sorted((data / "appendonlydir").glob("*.incr.aof"), key=lambda p: int(p.name.split(".")[-3]))
    return parts[-1]


@pytest.mark.parametrize(
    "store_wait",
    [
        "none",  # the origin finds its store restarted since it last wrote its sequence
        "fsync",  # commits wait for the disk, so the origin trusts its store: the destination finds it behind
    ],
)
async def test_a_store_that_went_back_reuses_no_number_the_destination_applied(
    tmp_path: Path, fault_mesh: FaultMesh, valkey: ValkeyProcess, store_wait: str
) -> None:
    """A's own store loses its last writes; B, in another region, keeps what it applied.

    Before: A numbered its new events from where its store went back, B took them for resends of
    numbers it had applied, and they vanished with no record anywhere.
    """
    a_store = ValkeyProcess(tmp_path / "valkey-a")
    a_store.start()
    a_env = {"REDIS_URL": a_store.url, "MESHSCOPE_STORE_WAIT": store_wait}
    try:
        await fault_mesh.start([A, B], env_for={A: a_env})
        b_client = redis.Redis.from_url(valkey.url)
        a_client = redis.Redis.from_url(a_store.url)
        await create_group(fault_mesh[B], "audit", "orders.>")
        await fault_mesh.wait_healthy(A)
        before = Producer(fault_mesh[A], "orders.created", "before")
        await before.publish(200, batch=20)
        await arrive(b_client, "audit", before.accepted)
        await asyncio.sleep(1.5)  # A has written down what B acknowledged
        tail = aof_tail(a_store.data)
        written = tail.stat().st_size
        lost = Producer(fault_mesh[A], "orders.created", "lost")  # A's store will forget these were ever sent
        await lost.publish(200, batch=20)
        await arrive(b_client, "audit", lost.accepted)
        fault_mesh[A].kill9()  # the host goes down: relay and store
        a_store.kill9()
        with open(tail, "r+b") as aof:
            aof.truncate(written)
        a_store.start()
        fault_mesh[A].start()
        await fault_mesh.wait_healthy(A)
        after = Producer(fault_mesh[A], "orders.created", "after")
        await after.publish(200, batch=20)
        await arrive(b_client, "audit", after.accepted)
        await asyncio.sleep(0.5)  # nothing more arrives afterwards
        exactly_once(group_ids(b_client, B, "audit"), before.accepted + lost.accepted + after.accepted)
        # the origin names where its sequence went back; B names nothing lost (it had everything)
        rolled = [r for r in flow_records(a_client) if r.status == "rolled_back"]
        assert [(r.src_region, r.dst_region, r.seq) for r in rolled] == [(A, B, 201)]
        assert not [r for r in flow_records(b_client) if r.kind == "drop"]
    finally:
        fault_mesh.stop()
        a_store.stop()


# ---- a transit relay that forges an origin's sequence state -----------------------------------------------


def forged_item(origin: str, epoch: str, seq: int, floor: int, high: int, via: str, event_id: str) -> list[Any]:
    now = time.time_ns() // 1000
    event = {
        "specversion": "1.0",
        "id": event_id,
        "source": "/forged",
        "type": "orders.created",
        "traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01",
        "data": {"n": 1},
    }
    return [origin, epoch, seq, floor, high, B, [origin, via], "cd" * 8, now, now - 1000, 1, "", event]


async def test_a_transit_relay_that_forges_an_origins_sequence_suppresses_none_of_its_events(
    fault_mesh: FaultMesh, valkey: ValkeyProcess
) -> None:
    """C holds a valid relay identity and sends B items "from A" with a huge floor, high and a new epoch."""
    await fault_mesh.start([A, B, C])
    client = redis.Redis.from_url(valkey.url)
    await create_group(fault_mesh[B], "audit", "orders.>")
    first = Producer(fault_mesh[A], "orders.created", "first")
    await first.publish(50, batch=10)
    await arrive(client, "audit", first.accepted)
    epoch = orjson.loads(client.hget(sk.outmeta(A), B) or b"{}")["epoch"]
    forged = [
        forged_item(A, epoch, 150_000, 150_000, 150_000, C, "forged-floor"),  # "A acknowledged up to here"
        forged_item(A, epoch, 2**62, 2**62, MAX_SEQ, C, "forged-far"),  # far beyond what A established
        forged_item(A, "f" * 16, 1, 1, MAX_SEQ, C, "forged-epoch"),  # "A started over, 2^63 numbers ago"
    ]
    url = f"{fault_mesh[B].ws_url}/v1/mesh"
    async with connect(url, additional_headers={"Authorization": f"Bearer {relay_token(C)}"}) as ws:
        hello = {"region": C, "relay": "forger", "provider": "azure", "lat": 52.4, "lon": 4.9, "city": "x"}
        await ws.send(orjson.dumps({"v": 2, "t": "HELLO", **hello}))
        await ws.send(orjson.dumps({"v": 2, "t": "EVENTS", "b": forged}))
        acked: list[list[Any]] = []
        while sum(last - first_ + 1 for _, _, first_, last in acked) < len(forged):
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            if frame.get("t") == "ACK":
                acked += frame["a"]
    later = Producer(fault_mesh[A], "orders.created", "later")
    await later.publish(200, batch=20)
    await arrive(client, "audit", later.accepted)
    await asyncio.sleep(0.5)
    genuine = [i for i in group_ids(client, B, "audit") if not i.startswith("forged-")]
    exactly_once(genuine, first.accepted + later.accepted)
    records: list[FlowRecord] = flow_records(client)
    gaps = [r for r in records if r.status == "gap"]
    assert not gaps, [(r.src_region, r.seq, r.seq_end) for r in gaps]  # nothing of A was lost
    refused = [r for r in records if r.kind == "drop" and r.dst_region == B and r.src_region == A]
    assert [(r.status, r.seq, r.via, r.event_id) for r in refused] == [("malformed", 2**62, C, "forged-far")]


async def test_a_store_restarted_cleanly_is_not_taken_for_one_that_went_back(
    fault_mesh: FaultMesh, valkey: ValkeyProcess
) -> None:
    """Valkey stopped and started (nothing lost) under a running relay, the relay restarted later."""
    await fault_mesh.start([A, B])
    client = redis.Redis.from_url(valkey.url)
    await create_group(fault_mesh[B], "audit", "orders.>")
    first = Producer(fault_mesh[A], "orders.created", "first")
    await first.publish(100, batch=20)
    epoch = orjson.loads(client.hget(sk.outmeta(A), B) or b"{}")["epoch"]
    valkey.stop()
    valkey.start()
    second = Producer(fault_mesh[A], "orders.created", "second")
    await second.publish(100, batch=20)  # commits land on the restarted store: none of them went missing
    await asyncio.sleep(6)  # the relay looks at its store every 5 s
    fault_mesh[A].stop()
    fault_mesh[A].start()
    await fault_mesh.wait_healthy(A)
    third = Producer(fault_mesh[A], "orders.created", "third")
    await third.publish(100, batch=20)
    await arrive(client, "audit", first.accepted + second.accepted + third.accepted)
    assert orjson.loads(client.hget(sk.outmeta(A), B) or b"{}")["epoch"] == epoch
    assert not [r for r in flow_records(client) if r.kind == "drop"]
