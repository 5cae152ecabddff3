"""A durable group's entries belong to what each member was given and may read, against a real relay and Valkey.

Two attacks a member of another principal could make on a group it may join:
acknowledge the owner's pending entries by their ids (they would be gone for
the owner), or join while forbidden to read some of the group's topics and so
drain those entries (acknowledged for the group as refused). Neither may cost
the owner an entry.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from meshcore import storekeys as sk
from meshcore.flowrecord import FlowRecord
from router.subscription import PARKED, is_entry_id
from tests.conftest import AUTH, OTHER_AUTH, Mesh, cloud_event, eventually, flow_records, scaled

A = "aws:us-east-1"
CE_BATCH = {"content-type": "application/cloudevents-batch+json"}
# testers publish and read everything; the others may join any group, but read only o.public.>
SPLIT_POLICY = {
    "policies": [
        {"id": "testers", "effect": "allow", "principals": ["group:testers"],
         "actions": ["publish", "subscribe", "join"], "topics": [">"]},
        {"id": "others-join", "effect": "allow", "principals": ["group:others"], "actions": ["join"], "topics": [">"]},
        {"id": "others-read-public", "effect": "allow", "principals": ["group:others"], "actions": ["subscribe"],
         "topics": ["o.public.>"]},
    ]
}  # fmt: skip


async def publish(http: httpx.AsyncClient, url: str, events: list[dict[str, Any]]) -> None:
    reply = await http.post(f"{url}/v1/events", headers=CE_BATCH, content=orjson.dumps(events))
    assert reply.status_code == 202, reply.text


async def drain(ws: ClientConnection, quiet_s: float = 0.6) -> list[dict[str, Any]]:
    """Every message until the member is sent nothing for ``quiet_s``."""
    out = []
    while True:
        try:
            out.append(orjson.loads(await asyncio.wait_for(ws.recv(), scaled(quiet_s))))
        except TimeoutError:
            return out


def pending_of(client: redis.Redis, group: str) -> dict[str, int]:
    summary: Any = client.xpending(sk.group_stream(A, group), group)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"]}


async def test_a_member_acknowledges_only_what_it_was_given(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A])
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&group=owned"
    owner = await connect(f"{base}&consumer=a", additional_headers=AUTH)
    await publish(http, mesh[A].url, [cloud_event("o.x", f"e-{i}") for i in range(5)])
    given = await drain(owner)
    assert [m["event"]["id"] for m in given] == [f"e-{i}" for i in range(5)]
    await owner.close()  # gone without acknowledging
    # a member of another principal names the owner's entries in its acknowledgement
    async with connect(f"{base}&consumer=b", additional_headers=OTHER_AUTH) as stranger:
        await stranger.send(orjson.dumps({"ack": [m["ack"] for m in given]}).decode())
        await asyncio.sleep(scaled(0.5))
    assert pending_of(redis_sync, "owned") == {"tester/a": 5}
    assert mesh[A].relay.metrics.get("group_acks_refused_total", group="owned") == 5
    async with connect(f"{base}&consumer=a", additional_headers=AUTH) as back:
        again = await drain(back)
        assert [m["event"]["id"] for m in again] == [f"e-{i}" for i in range(5)]  # the owner got 5 of 5
        await back.send(orjson.dumps({"ack": [m["ack"] for m in again]}).decode())
        await eventually(lambda: sum(pending_of(redis_sync, "owned").values()) == 0)


@pytest.mark.parametrize("member_stays", [False, True])
async def test_entries_a_member_may_not_read_stay_for_members_who_may(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis, member_stays: bool
) -> None:
    await mesh.start([A], env={"MESHSCOPE_GROUP_POLL_INTERVAL_S": "0.05"})
    assert (await http.put(f"{mesh[A].url}/v1/policies", json=SPLIT_POLICY)).status_code == 200
    await eventually(lambda: mesh[A].relay.governance.policy.enforcing)
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&group=mixed"
    owner = await connect(f"{base}&consumer=owner", additional_headers=AUTH)
    await owner.close()  # the group is the tester's; the other principal's member reads first
    member = await connect(f"{base}&consumer=m", additional_headers=OTHER_AUTH)
    events = [cloud_event(f"o.{kind}.x", f"{kind}-{i}") for i in range(10) for kind in ("public", "secret")]
    await publish(http, mesh[A].url, events)
    to_member = await drain(member)
    await member.send(orjson.dumps({"ack": [m["ack"] for m in to_member]}).decode())
    assert [m["event"]["id"] for m in to_member] == [f"public-{i}" for i in range(10)]
    await eventually(lambda: pending_of(redis_sync, "mixed").get(PARKED) == 10)
    if not member_stays:
        await member.close()
    owner = await connect(f"{base}&consumer=owner", additional_headers=AUTH)
    to_owner = await drain(owner, 1.0)
    await owner.send(orjson.dumps({"ack": [m["ack"] for m in to_owner]}).decode())
    ids = sorted(m["event"]["id"] for m in [*to_member, *to_owner])
    assert ids == sorted(e["id"] for e in events)  # every entry, each once: nothing drained by the member
    assert sorted(m["event"]["id"] for m in to_owner) == sorted(f"secret-{i}" for i in range(10))
    await eventually(lambda: sum(pending_of(redis_sync, "mixed").values()) == 0)
    assert mesh[A].relay.metrics.get("group_entries_withheld_total", group="mixed") >= 1
    records: list[FlowRecord] = flow_records(redis_sync)
    assert [r for r in records if r.kind == "drop" and r.event_id.startswith("secret")] == []
    await owner.close()
    await member.close()


@pytest.mark.parametrize(
    "ids",
    [
        ["1-1".translate(str.maketrans("1", chr(0x661)))],  # Arabic-Indic digits: \d took them
        ["18446744073709551616-0"],  # past 64 bits
        ["1-1", "x"],
        [1],
    ],
)
async def test_an_acknowledgement_with_an_id_redis_cannot_take_closes_the_member(
    mesh: Mesh, http: httpx.AsyncClient, ids: list[Any]
) -> None:
    await mesh.start([A])
    async with connect(f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&group=g&consumer=c", additional_headers=AUTH) as ws:
        await ws.send(orjson.dumps({"ack": ids}).decode())
        await asyncio.wait_for(ws.wait_closed(), scaled(3))
        assert ws.close_code == 1007


def test_entry_ids_are_ascii_numbers_within_64_bits() -> None:
    assert is_entry_id("1700000000000-0") and is_entry_id("18446744073709551615-18446744073709551615")
    assert not is_entry_id("18446744073709551616-0") and not is_entry_id(chr(0x661) + "-1")
    assert not is_entry_id("1-") and not is_entry_id(" 1-1") and not is_entry_id(12)


async def test_a_principal_owns_a_bounded_number_of_groups(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A], env={"MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL": "2"})
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&consumer=c"
    for group in ("g1", "g2"):
        async with connect(f"{base}&group={group}", additional_headers=AUTH):
            pass
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{base}&group=g3", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 403
    assert b"MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL" in refused.value.response.body
    async with connect(f"{base}&group=g1", additional_headers=AUTH):
        pass  # joining a group it owns is no new group
    async with connect(f"{base}&group=theirs", additional_headers=OTHER_AUTH):
        pass  # another principal counts its own
    assert (await http.delete(f"{mesh[A].url}/v1/groups/g2")).status_code == 204
    async with connect(f"{base}&group=g3", additional_headers=AUTH):
        pass
