"""Large valid batches against relay processes: liveness (health, mesh pings) never waits behind bulk work.

Five batches of 10,000 small events (about 650 KB each, under the 1 MiB body
limit) arrive at one relay over POST and five more over ``/v1/stream`` at the
same time, all routed across a mesh link to a durable group in another region.
Meanwhile ``/healthz`` is asked 20 times a second, and the links ping every
0.2 s (declared dead after 0.6 s of silence). A relay that validated, routed
or sent a whole batch in one go held its loop for most of a second: health
checks waited and the links reconnected. (On a slow machine the test's one
timeout scale stretches the bound and the ping interval alike.)
"""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import connect

from tests.conftest import AUTH, scaled
from tests.faults.conftest import FaultMesh, group_ids

A, B = "aws:us-east-1", "gcp:europe-west1"
BATCH = 10_000

pytestmark = pytest.mark.faults


def batch(tag: str) -> bytes:
    events = [
        {"specversion": "1.0", "id": f"{tag}-{i}", "source": "/bulk", "type": "bulk.load", "data": {"i": i}}
        for i in range(BATCH)
    ]
    return orjson.dumps(events)


async def reconnects(http: httpx.AsyncClient, url: str) -> float:
    text = (await http.get(f"{url}/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("meshscope_link_reconnects"))


async def test_large_batches_leave_health_and_mesh_links_alive(fault_mesh: FaultMesh) -> None:
    ping_s = scaled(0.2)
    await fault_mesh.start([A, B], MESHSCOPE_PING_INTERVAL_S=str(ping_s), MESHSCOPE_LOG_LEVEL="WARNING")
    async with connect(f"{fault_mesh[B].ws_url}/v1/subscribe?topic=bulk.>&group=bulk", additional_headers=AUTH):
        pass  # B keeps the events for its group: they cross the link
    relay = fault_mesh[A]
    async with httpx.AsyncClient(timeout=scaled(60), headers=AUTH) as http:
        await asyncio.sleep(1.0)
        before = {r: await reconnects(http, fault_mesh[r].url) for r in (A, B)}
        latencies: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            # never reusing a connection the server may be closing as idle
            async with httpx.AsyncClient(timeout=scaled(30), limits=httpx.Limits(keepalive_expiry=1.0)) as client:
                while not done.is_set():
                    started = time.monotonic()
                    assert (await client.get(f"{relay.url}/healthz")).status_code == 200
                    latencies.append(time.monotonic() - started)
                    await asyncio.sleep(0.05)

        async def post() -> None:
            for n in range(5):
                reply = await http.post(
                    f"{relay.url}/v1/events",
                    content=batch(f"post{n}"),
                    headers={"content-type": "application/cloudevents-batch+json"},
                )
                assert reply.status_code == 202 and len(reply.json()["accepted"]) == BATCH, reply.text[:200]

        async def stream() -> None:
            async with connect(f"{relay.ws_url}/v1/stream", additional_headers=AUTH, max_size=None) as ws:
                for n in range(5):
                    await ws.send(batch(f"stream{n}"))
                    ack = orjson.loads(await ws.recv())
                    assert len(ack["accepted"]) == BATCH and ack["errors"] == [], str(ack)[:200]

        prober = asyncio.create_task(probe())
        await asyncio.gather(post(), stream())
        await asyncio.sleep(2.0)  # the mesh sends the last of it meanwhile
        done.set()
        await prober
        after = {r: await reconnects(http, fault_mesh[r].url) for r in (A, B)}
    latencies.sort()
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
    print(f"/healthz under load: {len(latencies)} asked, p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
    assert p99 < scaled(0.5), f"/healthz p99 {p99:.2f} s while batches arrived"
    assert after == before, f"mesh links reconnected: {before} -> {after}"
    # and nothing was lost on the way: every event is in B's group, once
    with redis.Redis.from_url(fault_mesh.valkey.url) as client:
        deadline = time.monotonic() + scaled(30)
        while len(group_ids(client, B, "bulk")) < 10 * BATCH and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        ids = group_ids(client, B, "bulk")
    assert len(ids) == len(set(ids)) == 10 * BATCH
