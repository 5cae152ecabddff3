"""Several relay processes serve one region behind one port (``meshscope relay --workers N``).

Which worker accepts a connection is the kernel's choice; a test that must
land on one worker stops the others (SIGSTOP) while it connects, so the one
left takes the connection from the shared queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

from meshcore import storekeys as sk
from meshcore.flowrecord import unpack
from tests.conftest import AUTH, CE_JSON, POLICY, cloud_event, eventually, scaled
from tests.faults.conftest import FaultMesh, Producer, ValkeyProcess, client_of, create_group, group_ids

A, B = "aws:us-east-1", "gcp:europe-west1"
WORKERS = {A: {"MESHSCOPE_RELAY_WORKERS": "2"}}


async def workers_of(mesh: FaultMesh, region: str, count: int = 2) -> dict[str, dict[str, Any]]:
    """The region's workers as its /healthz says, once ``count`` are up."""

    async def members() -> dict[str, dict[str, Any]] | None:
        async with httpx.AsyncClient(timeout=2) as http:
            try:
                health = (await http.get(f"{mesh[region].url}/healthz")).json()
            except (httpx.HTTPError, ValueError):
                return None
        found = health.get("workers", {}).get("members", {})
        up = {name: m for name, m in found.items() if m["state"] == "up"}
        return dict(sorted(up.items())) if len(up) == count else None

    result: dict[str, dict[str, Any]] = await eventually(members, 20)
    return result


@contextlib.contextmanager
def only(workers: dict[str, dict[str, Any]], name: str) -> Iterator[None]:
    """Every worker but ``name`` stopped (SIGSTOP) for the block: new connections land on ``name``."""
    stopped = [int(m["pid"]) for n, m in workers.items() if n != name]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


async def publish(url: str, ids: list[str], topic: str = "orders.created") -> dict[str, Any]:
    """One batch over a new connection (a keep-alive one would stay with the worker that took it)."""
    async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
        reply = await http.post(
            f"{url}/v1/events",
            headers={**CE_JSON, "content-type": "application/cloudevents-batch+json"},
            content=orjson.dumps([cloud_event(topic, i) for i in ids]),
        )
    assert reply.status_code == 202, reply.text
    result: dict[str, Any] = reply.json()
    return result


class Listener:
    """A live subscriber that counts what it got."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.got: Counter[str] = Counter()
        self.ws: ClientConnection | None = None
        self.task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.ws = await connect(f"{self.url}/v1/subscribe?topic=orders.>", additional_headers=AUTH)
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:
            self.got[orjson.loads(raw)["id"]] += 1

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.ws is not None:
            await self.ws.close()


@contextlib.asynccontextmanager
async def listening(url: str) -> AsyncIterator[Listener]:
    listener = Listener(url)
    await listener.open()
    try:
        yield listener
    finally:
        await listener.close()


async def test_events_published_on_either_worker_reach_every_subscriber_and_a_group_once(
    fault_mesh: FaultMesh,
) -> None:
    await fault_mesh.start([A, B], env_for=WORKERS)
    workers = await workers_of(fault_mesh, A)
    w0, w1 = workers
    await create_group(fault_mesh[A], "audit", "orders.>")
    url = fault_mesh[A].ws_url
    with only(workers, w0):
        on_w0 = Listener(url)
        await on_w0.open()
    with only(workers, w1):
        on_w1 = Listener(url)
        await on_w1.open()
    in_b = Listener(fault_mesh[B].ws_url)
    await in_b.open()
    try:
        store = client_of(fault_mesh.valkey)
        await eventually(lambda: store.hget(sk.workers(A), w1) is not None, 10)
        await asyncio.sleep(scaled(0.5))  # the interest of each reaches the other worker and B's relay
        sent = {w0: [f"w0-{i}" for i in range(20)], w1: [f"w1-{i}" for i in range(20)]}
        for name, ids in sent.items():
            with only(workers, name):
                assert (await publish(fault_mesh[A].url, ids))["accepted"] == ids
        everything = sent[w0] + sent[w1]
        for listener in (on_w0, on_w1, in_b):
            await eventually(lambda listener=listener: set(listener.got) == set(everything), 15)  # type: ignore[misc]
        await asyncio.sleep(scaled(0.3))
        for listener in (on_w0, on_w1, in_b):
            assert set(listener.got.values()) == {1}, listener.got  # once each, none twice
        assert sorted(group_ids(store, A, "audit")) == sorted(everything)
        # events arriving over the mesh, at whichever worker B's link landed on, reach both workers' subscribers
        from_b = [f"b-{i}" for i in range(10)]
        assert (await publish(fault_mesh[B].url, from_b))["accepted"] == from_b
        for listener in (on_w0, on_w1):
            await eventually(lambda listener=listener: set(from_b) <= set(listener.got), 15)  # type: ignore[misc]
        everything += from_b
        await eventually(lambda: sorted(group_ids(store, A, "audit")) == sorted(everything), 15)
        # a retry sent to the other worker, after its answer, is a duplicate there
        with only(workers, w1):
            retry = await publish(fault_mesh[A].url, sent[w0][:5])
        assert retry["accepted"] == [] and retry["duplicates"] == sent[w0][:5]
        assert sorted(group_ids(store, A, "audit")) == sorted(everything)
        for listener in (on_w0, on_w1):
            assert set(listener.got.values()) == {1}, listener.got
        # the flow records name both workers: each published its own events
        publishers = {w0: 0, w1: 0}
        for _, fields in store.xrange("meshscope:flows"):
            for rec in unpack(fields):
                if rec.kind == "publish" and rec.relay in publishers:
                    publishers[rec.relay] += 1
        assert publishers == {w0: 20, w1: 20}
    finally:
        for listener in (on_w0, on_w1, in_b):
            await listener.close()


async def test_a_killed_worker_is_restarted_and_nothing_answered_is_lost(fault_mesh: FaultMesh) -> None:
    await fault_mesh.start([A, B], env_for=WORKERS)
    workers = await workers_of(fault_mesh, A)
    w0, w1 = workers
    async with listening(fault_mesh[B].ws_url) as in_b:
        await fault_mesh.wait_healthy(A)
        await asyncio.sleep(scaled(0.5))
        producer = Producer(fault_mesh[A], "orders.created", "k")
        publishing = asyncio.create_task(producer.publish(600, batch=10, pause_s=0.01))
        await eventually(lambda: len(producer.accepted) >= 100, 20)
        os.kill(int(workers[w0]["pid"]), signal.SIGKILL)  # worker 0: the one holding the links
        await publishing

        after = await eventually(lambda: _restarted(fault_mesh, w0, workers[w0]["pid"]), 20)
        assert after[w0]["pid"] != workers[w0]["pid"] and after[w0]["restarts"] == 1
        assert after[w1]["pid"] == workers[w1]["pid"] and after[w1]["restarts"] == 0
        # then the other worker: restarted, it finds B's link state in the (shared) store, and still leaves
        # the region's link store and sequences to worker 0
        store = client_of(fault_mesh.valkey)
        epoch = orjson.loads(store.hget(sk.outmeta(A), B))["epoch"]
        more = Producer(fault_mesh[A], "orders.created", "m")
        publishing = asyncio.create_task(more.publish(300, batch=10, pause_s=0.01))
        await eventually(lambda: len(more.accepted) >= 50, 20)
        os.kill(int(workers[w1]["pid"]), signal.SIGKILL)
        await publishing
        after = await eventually(lambda: _restarted(fault_mesh, w1, workers[w1]["pid"]), 20)
        with only(after, w1):
            extra = [f"x-{i}" for i in range(20)]
            assert (await publish(fault_mesh[A].url, extra))["accepted"] == extra
        accepted = set(producer.accepted) | set(producer.duplicates) | set(more.accepted) | set(more.duplicates)
        assert len(accepted) == 900
        accepted |= set(extra)
        assert orjson.loads(store.hget(sk.outmeta(A), B))["epoch"] == epoch  # worker 0's sequence
        await eventually(lambda: set(in_b.got) >= accepted, 30)
        await asyncio.sleep(scaled(0.3))
        assert set(in_b.got.values()) == {1}  # B applied each once, whichever worker published it
    log = fault_mesh[A].log.read_text()
    assert "relay worker exited; starting it again" in log
    # SIGTERM to the parent alone: every worker drains and exits, then the parent
    parent = fault_mesh[A].proc
    assert parent is not None
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(scaled(15)) == 0
    log = fault_mesh[A].log.read_text()
    assert log.count("relay drained") >= 2 and log.count("relay worker stopped") == 2
    for member in after.values():  # gone (a worker is its parent's child, reaped when the parent exited)
        status = Path(f"/proc/{member['pid']}/status")
        assert not status.exists() or "zombie" in status.read_text()


async def _restarted(mesh: FaultMesh, name: str, old_pid: int) -> dict[str, dict[str, Any]] | None:
    """The region's workers once ``name`` runs again under a new pid."""
    now = await workers_of(mesh, A)
    return now if now[name]["pid"] != old_pid else None


async def test_group_members_on_different_workers_share_the_group_and_healthz_names_a_stopped_worker(
    fault_mesh: FaultMesh,
) -> None:
    await fault_mesh.start([A], env_for=WORKERS)
    workers = await workers_of(fault_mesh, A)
    w0, w1 = workers
    got: Counter[str] = Counter()
    by_member: Counter[str] = Counter()

    async def member(ws: ClientConnection, name: str) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            got[msg["event"]["id"]] += 1
            by_member[name] += 1
            await ws.send(orjson.dumps({"ack": [msg["ack"]]}))

    url = f"{fault_mesh[A].ws_url}/v1/subscribe?topic=orders.>&group=billing&consumer="
    with only(workers, w0):
        ws0 = await connect(url + "m0", additional_headers=AUTH)
    with only(workers, w1):
        ws1 = await connect(url + "m1", additional_headers=AUTH)
    readers = [asyncio.create_task(member(ws0, w0)), asyncio.create_task(member(ws1, w1))]
    try:
        ids = [f"g-{i}" for i in range(60)]
        for start in range(0, 60, 10):
            await publish(fault_mesh[A].url, ids[start : start + 10])
        await eventually(lambda: set(got) == set(ids), 15)
        await asyncio.sleep(scaled(0.5))
        assert set(got.values()) == {1}, got  # each entry to one member of the group, once
    finally:
        for task in readers:
            task.cancel()
        await ws0.close()
        await ws1.close()
    # a worker that stops answering: the other's /healthz says so, then recovers
    os.kill(int(workers[w1]["pid"]), signal.SIGSTOP)
    try:

        async def degraded() -> dict[str, Any] | None:
            async with httpx.AsyncClient(timeout=2) as http:
                health = (await http.get(f"{fault_mesh[A].url}/healthz")).json()
            return health if health["status"] == "degraded" else None

        health = await eventually(degraded, 15)
        assert health["relay"] == w0 and health["workers"]["members"][w1]["state"] == "down"
        assert any(reason.startswith(f"worker {w1} of this region is down") for reason in health["reasons"])
    finally:
        os.kill(int(workers[w1]["pid"]), signal.SIGCONT)
    await fault_mesh.wait_healthy(A)


async def test_the_worker_holding_a_peers_link_killed_mid_stream_applies_each_event_once(
    fault_mesh: FaultMesh,
) -> None:
    """B's link to A lands on one worker of A; killed, B dials again and lands on another, which must
    read what the region applied from B before it applies B's resends."""
    await fault_mesh.start([A, B], env_for=WORKERS)
    await create_group(fault_mesh[A], "audit", "orders.>")
    await asyncio.sleep(scaled(0.5))  # B learns A's interest

    async def holder() -> str | None:
        found = await workers_of(fault_mesh, A)
        names = [name for name, m in found.items() if B in m.get("inbound", [])]
        return names[0] if names else None

    name = await eventually(holder, 15)
    workers = await workers_of(fault_mesh, A)
    producer = Producer(fault_mesh[B], "orders.created", "via-b")
    publishing = asyncio.create_task(producer.publish(800, batch=10, pause_s=0.005))
    await eventually(lambda: len(producer.accepted) >= 150, 20)
    os.kill(int(workers[name]["pid"]), signal.SIGKILL)
    await publishing
    store = client_of(fault_mesh.valkey)
    accepted = set(producer.accepted)
    assert len(accepted) == 800
    await eventually(lambda: set(group_ids(store, A, "audit")) >= accepted, 30)
    await asyncio.sleep(scaled(0.5))
    applied = Counter(group_ids(store, A, "audit"))
    assert set(applied.values()) == {1}, [k for k, n in applied.items() if n > 1][:10]


async def test_every_worker_enforces_the_policy_put_through_any_of_them(fault_mesh: FaultMesh) -> None:
    await fault_mesh.start([A], env_for=WORKERS)
    workers = await workers_of(fault_mesh, A)
    async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
        reply = await http.put(f"{fault_mesh[A].url}/v1/policies", json=POLICY)
        assert reply.status_code in (200, 201), reply.text
    for name in workers:
        with only(workers, name):
            async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:

                async def refused(http: httpx.AsyncClient = http, name: str = name) -> httpx.Response | None:
                    reply = await http.post(
                        f"{fault_mesh[A].url}/v1/events", headers=CE_JSON, json=cloud_event("secret.x", f"s-{name}")
                    )
                    return reply if reply.status_code == 403 else None

                denied = await eventually(refused, 10)
                assert denied.json()["rule"] == "no-secrets"
                health = (await http.get(f"{fault_mesh[A].url}/healthz")).json()
                assert health["relay"] == name and health["governance"]["policy_enforced"]
    # worker 0 speaks for the region on the map; the other's state is written apart
    store = client_of(fault_mesh.valkey)
    w0, w1 = workers

    def states() -> bool:
        region = store.hget("meshscope:relaystate", A)
        return (
            region is not None
            and orjson.loads(region)["relay"] == w0
            and store.hexists("meshscope:relaystate:workers", w1)
        )

    await eventually(states, 10)
    await asyncio.sleep(2.5)  # another round of every worker's state (every 2 s)
    assert states()


async def test_worker_0_says_when_the_region_stream_was_trimmed_past_what_it_had_routed(
    fault_mesh: FaultMesh,
) -> None:
    store = client_of(fault_mesh.valkey)
    store.xadd(sk.siblings(A), {"w": "gone-w1", "k": "i", "d": "[]"}, id="5-0")
    store.hset(f"{sk.siblings(A)}:routed", "routed", "3-0")  # 3-0 and what followed it were trimmed
    await fault_mesh.start([A], env_for=WORKERS)
    await workers_of(fault_mesh, A)
    await eventually(lambda: "trimmed past what worker 0 had routed" in fault_mesh[A].log.read_text(), 10)


async def test_every_worker_is_in_contact_with_a_governance_home_elsewhere_through_worker_0(
    fault_mesh: FaultMesh, region_valkeys: Callable[[list[str]], dict[str, ValkeyProcess]]
) -> None:
    """Each region on its own store, the governance home in B: only worker 0 of A has a link to B."""
    await fault_mesh.start([A, B], stores=region_valkeys([A, B]), env_for=WORKERS, MESHSCOPE_GOVERNANCE_HOME=B)
    workers = await workers_of(fault_mesh, A)
    await asyncio.sleep(scaled(1.5))  # worker 0's heartbeat after its link to the home came up
    for name in workers:
        with only(workers, name):
            async with httpx.AsyncClient(timeout=scaled(5)) as http:
                health = (await http.get(f"{fault_mesh[A].url}/healthz")).json()
        assert health["relay"] == name
        assert health["status"] == "ok" and health["governance"]["cut_off_s"] is None, health["reasons"]
    # a change sent to worker 1 cannot reach the authority and says why; worker 0 forwards it
    w0, w1 = workers
    with only(workers, w1):
        async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
            refused = await http.put(f"{fault_mesh[A].url}/v1/policies", json=POLICY)
    assert refused.status_code == 503 and "only worker 0" in refused.text, refused.text
    with only(workers, w0):
        async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
            taken = await http.put(f"{fault_mesh[A].url}/v1/policies", json=POLICY)
    assert taken.status_code in (200, 201), taken.text
