"""Group members and other sessions against a relay process: every Valkey connection comes back, however they end.

A relay (``meshscope relay``) on its own Valkey; group members open and end by
the hundred, every way a client can end: a clean close, an abrupt TCP reset
right after the upgrade, and a reset while the relay is still sending the
member its entries. Valkey's own ``CLIENT LIST`` is the witness: afterwards the
relay holds no more connections than its pools keep, none blocked, and
publishing and governance work. One principal holding all the sessions it may
does not keep another out, and SIGTERM stops a relay with members connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from router.groupsession import SESSION_CLIENT_NAME
from tests.conftest import AUTH, CE_JSON, OTHER_AUTH, cloud_event, scaled
from tests.faults.conftest import FaultMesh, ValkeyProcess

A = "aws:us-east-1"
SESSION_POOL = 4
QUOTA = 60

pytestmark = pytest.mark.faults


def relay_connections(valkey: ValkeyProcess) -> list[dict[str, Any]]:
    """Valkey's clients, but for the one asking."""
    with redis.Redis.from_url(valkey.url) as client:
        me = client.client_id()
        return [c for c in client.client_list() if int(c["id"]) != me]


def reset(ws: ClientConnection) -> None:
    """End the TCP connection abruptly (RST), as a crashed client or a cut network does."""
    if ws.transport.is_closing():
        return  # the relay closed it already
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def member(url: str, how: str, i: int) -> str:
    """One group member that ends ``how``; returns what happened (its HTTP status when it was refused)."""
    try:
        ws = await connect(f"{url}&consumer=c{i % 7}", additional_headers=AUTH, open_timeout=scaled(10))
    except InvalidStatus as exc:
        return str(exc.response.status_code)
    if how == "clean":
        await ws.close()
    elif how == "reset":
        reset(ws)
    else:  # mid-read: the relay is sending entries when the member vanishes (when it got any: others may have)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.recv(), 1.0)
        reset(ws)
    return how


async def received(members: list[ClientConnection], expected: int) -> int:
    """How many entries ``members`` got between them, reading each until ``expected`` or the deadline."""
    got = 0
    deadline = time.monotonic() + scaled(10)

    async def drain(ws: ClientConnection) -> None:
        nonlocal got
        while got < expected and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
                got += 1

    await asyncio.gather(*(drain(ws) for ws in members))
    return got


async def publish(relay_url: str, count: int, prefix: str, headers: dict[str, str] = AUTH) -> int:
    events = [cloud_event("jobs.run", f"{prefix}-{i}", data={"pad": "x" * 200}) for i in range(count)]
    async with httpx.AsyncClient(timeout=scaled(10), headers=headers) as http:
        reply = await http.post(
            f"{relay_url}/v1/events",
            headers={**CE_JSON, "content-type": "application/cloudevents-batch+json"},
            content=orjson.dumps(events),
        )
    return reply.status_code


async def test_sessions_ended_every_way_give_back_every_connection(fault_mesh: FaultMesh) -> None:
    await fault_mesh.start(
        [A],
        MESHSCOPE_GROUP_CONNECTIONS=str(SESSION_POOL),
        MESHSCOPE_MAX_SESSIONS_PER_PRINCIPAL=str(QUOTA),
        MESHSCOPE_GROUP_POLL_INTERVAL_S="0.05",
    )
    relay = fault_mesh[A]
    url = f"{relay.ws_url}/v1/subscribe?topic=jobs.>&group=jobs"
    assert await member(url, "clean", 0) == "clean"  # the group exists
    assert await publish(relay.url, 500, "backlog") == 202  # entries to be read while members vanish
    await asyncio.sleep(0.5)
    others = len([c for c in relay_connections(fault_mesh.valkey) if c["name"] != SESSION_CLIENT_NAME])
    seen: list[str] = []
    for how in ("clean", "reset", "mid-read", "reset", "clean", "mid-read"):
        seen += await asyncio.gather(*(member(url, how, i) for i in range(50)))
    assert set(seen) <= {"clean", "reset", "mid-read", "429"}, sorted(set(seen))
    assert seen.count("429") < len(seen) / 10  # quick ends: a principal rarely has its most open
    await asyncio.sleep(scaled(1.0))
    after = relay_connections(fault_mesh.valkey)
    described = sorted((c["name"], c["cmd"], c["flags"]) for c in after)
    # what the pools keep, no more: the members' pool of SESSION_POOL, and no more than before of the rest
    assert len([c for c in after if c["name"] == SESSION_CLIENT_NAME]) <= SESSION_POOL, described
    assert len([c for c in after if c["name"] != SESSION_CLIENT_NAME]) <= others + 2, described
    assert [c for c in after if "b" in c["flags"]] == []  # nobody blocked in a read
    assert await publish(relay.url, 1, "after") == 202
    async with httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http:
        assert (await http.get(f"{relay.url}/v1/governance")).status_code == 200
        health = (await http.get(f"{relay.url}/healthz")).json()
    assert health["status"] == "ok", health
    # the group still works: a member gets what was published, and acknowledges it
    async with connect(f"{url}&consumer=last", additional_headers=AUTH) as ws:
        first = orjson.loads(await asyncio.wait_for(ws.recv(), scaled(5)))
        await ws.send(orjson.dumps({"ack": [first["ack"]]}).decode())


async def test_one_principal_at_its_most_sessions_does_not_keep_others_out(fault_mesh: FaultMesh) -> None:
    await fault_mesh.start(
        [A], MESHSCOPE_GROUP_CONNECTIONS=str(SESSION_POOL), MESHSCOPE_MAX_SESSIONS_PER_PRINCIPAL="40"
    )
    relay = fault_mesh[A]
    url = f"{relay.ws_url}/v1/subscribe?topic=jobs.>&group=jobs"
    held = []
    try:
        for i in range(40):
            held.append(await connect(f"{url}&consumer=h{i}", additional_headers=AUTH))
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}&consumer=one-more", additional_headers=AUTH)
        assert refused.value.response.status_code == 429
        assert refused.value.response.headers["retry-after"] == "5"
        for path in ("/v1/stream", "/v1/subscribe?topic=jobs.>"):  # every kind of session counts
            with pytest.raises(InvalidStatus) as refused:
                await connect(f"{relay.ws_url}{path}", additional_headers=AUTH)
            assert refused.value.response.status_code == 429
        # another principal: a session, a group of its own, publishing and governance
        async with connect(f"{relay.ws_url}/v1/subscribe?topic=jobs.>&group=theirs", additional_headers=OTHER_AUTH):
            pass
        assert await publish(relay.url, 20, "other", OTHER_AUTH) == 202
        async with httpx.AsyncClient(timeout=scaled(10), headers=OTHER_AUTH) as http:
            assert (await http.get(f"{relay.url}/v1/governance")).status_code == 200
        # the held members read what was published (the group shares it out), on the members' pool alone
        assert await received(held, 20) == 20
        assert len([c for c in relay_connections(fault_mesh.valkey) if c["name"] == SESSION_CLIENT_NAME]) <= 4
    finally:
        for ws in held:
            reset(ws)
    # once they are gone, the principal opens sessions again
    await asyncio.sleep(scaled(0.5))
    async with connect(f"{url}&consumer=again", additional_headers=AUTH):
        pass


async def test_sigterm_stops_a_relay_with_members_connected(fault_mesh: FaultMesh) -> None:
    await fault_mesh.start([A], MESHSCOPE_GROUP_CONNECTIONS=str(SESSION_POOL))
    relay = fault_mesh[A]
    url = f"{relay.ws_url}/v1/subscribe?topic=jobs.>&group=jobs"
    assert await member(url, "clean", 0) == "clean"
    assert await publish(relay.url, 300, "held") == 202
    for how in ("reset", "mid-read", "reset"):  # members that vanished, as in the attack
        await asyncio.gather(*(member(url, how, i) for i in range(50)))
    members = [await connect(f"{url}&consumer=m{i}", additional_headers=AUTH) for i in range(30)]
    try:
        # members mid-read, with acknowledgements on the way
        reads = {asyncio.create_task(ws.recv()): ws for ws in members}
        done, pending = await asyncio.wait(reads, timeout=scaled(2))
        for task in pending:
            task.cancel()
        for task in done:
            await reads[task].send(orjson.dumps({"ack": [orjson.loads(task.result())["ack"]]}).decode())
        for ws in members:  # and acknowledgements of entries they were never given
            await ws.send(orjson.dumps({"ack": ["1-1"]}).decode())
        assert relay.proc is not None
        started = time.monotonic()
        os.killpg(relay.proc.pid, signal.SIGTERM)
        await asyncio.to_thread(relay.proc.wait, scaled(15))
        took = time.monotonic() - started
    finally:
        for ws in members:
            reset(ws)
    print(f"the relay stopped {took:.2f} s after SIGTERM")
    assert took < scaled(8), f"the relay took {took:.1f} s to stop"
    assert relay_connections(fault_mesh.valkey) == []
