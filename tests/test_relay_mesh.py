"""Three real relays in a full mesh over a real Valkey."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from meshcore.flowrecord import FlowRecord
from tests.conftest import AUTH, CE_JSON, Mesh, cloud_event, eventually, flow_records, scaled

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"


async def subscribe(mesh: Mesh, region: str, *patterns: str, **params: str) -> ClientConnection:
    query = "&".join([f"topic={p}" for p in patterns] + [f"{k}={v}" for k, v in params.items()])
    return await connect(f"{mesh[region].ws_url}/v1/subscribe?{query}", additional_headers=AUTH)


async def wait_interest(mesh: Mesh, origin: str, peer: str, topic: str) -> None:
    await eventually(lambda: peer in mesh[origin].relay.routes.interested(topic), 2)


async def recv_json(ws: ClientConnection, timeout_s: float = 3) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.recv(), scaled(timeout_s)))


async def no_more(ws: ClientConnection, wait_s: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), scaled(wait_s))


def records_of(client: redis.Redis, event_id: str) -> list[FlowRecord]:
    return [r for r in flow_records(client) if r.event_id == event_id]


async def test_event_reaches_interested_region_once_and_nothing_else(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, B, C])
    sub = await subscribe(mesh, C, "orders.>")
    await wait_interest(mesh, A, C, "orders.created")

    reply = await http.post(
        f"{mesh[A].url}/v1/events", content=orjson.dumps(cloud_event("orders.created", "o-1")), headers=CE_JSON
    )
    assert reply.status_code == 202
    assert reply.json() == {"accepted": ["o-1"], "duplicates": []}

    got = await recv_json(sub)
    assert got["id"] == "o-1" and got["type"] == "orders.created"
    trace_id = got["traceparent"].split("-")[1]
    await no_more(sub)
    await sub.close()

    assert mesh[B].relay.metrics.total("events_in_total") == 0
    assert mesh[A].relay.metrics.get("events_out_total", topic="orders.created", destination=C) == 1
    assert mesh[A].relay.metrics.get("events_out_total", topic="orders.created", destination=B) == 0

    records = await eventually(lambda: (rs := records_of(redis_sync, "o-1")) and len(rs) >= 3 and rs)
    by_kind = {r.kind: r for r in records}
    assert sorted(r.kind for r in records) == ["deliver", "forward", "publish"]
    assert all(r.dst_region != B for r in records)
    assert {r.trace_id for r in records} == {trace_id}
    publish, forward, deliver = by_kind["publish"], by_kind["forward"], by_kind["deliver"]
    assert publish.parent_span_id == got["traceparent"].split("-")[2]  # child of the producer's span
    assert forward.parent_span_id == publish.span_id
    assert deliver.parent_span_id == forward.span_id
    assert (forward.src_region, forward.dst_region, deliver.src_region, deliver.dst_region) == (A, C, A, C)
    assert forward.seq == deliver.seq >= 1
    assert publish.relay == f"relay-{A}" and deliver.relay == f"relay-{C}"
    assert deliver.e2e_ms >= deliver.hop_ms >= 0
    assert all(r.status == "ok" and r.bytes > 0 for r in records)


async def test_producer_traceparent_is_kept_across_hops(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    sub = await subscribe(mesh, C, "orders.*")
    await wait_interest(mesh, A, C, "orders.paid")
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await http.post(
        f"{mesh[A].url}/v1/events",
        headers=CE_JSON,
        content=orjson.dumps(cloud_event("orders.paid", "p-1", traceparent=tp)),
    )
    assert (await recv_json(sub))["traceparent"] == tp
    records = await eventually(lambda: (rs := records_of(redis_sync, "p-1")) and len(rs) >= 3 and rs)
    assert {r.trace_id for r in records} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert next(r for r in records if r.kind == "publish").parent_span_id == "00f067aa0ba902b7"
    await sub.close()


async def test_local_subscriber_gets_local_events(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, B])
    sub = await subscribe(mesh, A, "*.created")
    await eventually(lambda: mesh[A].relay.local.patterns.matches("x.created"))
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("x.created", "l-1")))
    assert (await recv_json(sub))["id"] == "l-1"
    assert mesh[B].relay.metrics.total("events_in_total") == 0
    await sub.close()


async def test_late_subscription_propagates_within_a_second(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, B, C])
    started = time.monotonic()
    sub = await subscribe(mesh, B, "payments.>")
    await eventually(lambda: B in mesh[A].relay.routes.interested("payments.settled"), 1.0)
    assert time.monotonic() - started < scaled(1.0)
    await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("payments.settled", "s-1"))
    )
    assert (await recv_json(sub))["id"] == "s-1"
    await sub.close()
    # interest withdrawn when the last subscriber leaves
    await eventually(lambda: B not in mesh[A].relay.routes.interested("payments.settled"), 1.0)


async def test_no_duplicates_in_a_full_mesh_with_many_subscribers(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, B, C])
    subs = {r: await subscribe(mesh, r, ">") for r in (A, B, C)}
    for r in (B, C):
        await wait_interest(mesh, A, r, "a.b")
    await wait_interest(mesh, B, C, "a.b")
    batch = [cloud_event("a.b", f"m-{i}") for i in range(50)]
    reply = await http.post(
        f"{mesh[A].url}/v1/events",
        headers={"content-type": "application/cloudevents-batch+json"},
        content=orjson.dumps(batch),
    )
    assert reply.status_code == 202 and len(reply.json()["accepted"]) == 50
    for ws in subs.values():
        ids = [(await recv_json(ws))["id"] for _ in range(50)]
        assert ids == [f"m-{i}" for i in range(50)]  # in order, each once
        await no_more(ws)
        await ws.close()
    # the same ids again are duplicates: acknowledged, not routed
    again = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch[0]))
    assert again.json() == {"accepted": [], "duplicates": ["m-0"]}


async def test_stream_publishing_acks_per_frame(mesh: Mesh) -> None:
    await mesh.start([A, C])
    sub = await subscribe(mesh, C, "orders.>")
    await wait_interest(mesh, A, C, "orders.x")
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        frame = [cloud_event("orders.x", f"w-{i}") for i in range(100)]
        frame[7] = {"specversion": "1.0", "id": "bad", "source": "/p"}  # no type
        await ws.send(orjson.dumps(frame))
        ack = await recv_json(ws)
        assert ack["frame"] == 1
        assert len(ack["accepted"]) == 99 and "bad" not in ack["accepted"]
        assert ack["errors"] == [
            {
                "status": 400,
                "error": "required attribute 'type' is missing",
                "attribute": "type",
                "index": 7,
                "id": "bad",
            }
        ]
        await ws.send(orjson.dumps(cloud_event("orders.x", "single")))
        assert (await recv_json(ws))["accepted"] == ["single"]
    ids = [(await recv_json(sub))["id"] for _ in range(100)]
    assert len(set(ids)) == 100 and "bad" not in ids
    await sub.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [(b"not json", 1007), (b"42", 1007)],
)
async def test_stream_protocol_abuse_closes_with_a_clear_code(mesh: Mesh, frame: bytes, code: int) -> None:
    await mesh.start([A])
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        await ws.send(frame)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(3))
        assert ws.close_code == code


async def test_stream_oversized_frame_closes_1009(mesh: Mesh) -> None:
    await mesh.start([A], env={"MESHSCOPE_MAX_BODY_BYTES": "4096"})
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH) as ws:
        await ws.send(orjson.dumps(cloud_event("a.b", "big", data="x" * 5000)))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(3))
        assert ws.close_code == 1009


async def test_killed_link_reconnects_and_resends_what_was_queued(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, C])
    sub = await subscribe(mesh, C, "orders.>")
    await wait_interest(mesh, A, C, "orders.x")
    link = mesh[A].link_to(C)
    reconnects = link.reconnects
    link.kill()
    # while the link is down, events queue on it
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", "k-1")))
    started = time.monotonic()
    await eventually(lambda: link.state == "up" and link.reconnects > reconnects, 2)
    # backoff base 0.05 s doubling: the first retry comes within 0.1 s, plus connect time
    assert time.monotonic() - started < scaled(1.0)
    assert (await recv_json(sub))["id"] == "k-1"
    await no_more(sub)
    await sub.close()


async def test_restarted_peer_gets_queued_events_without_duplicates(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    sub = await subscribe(mesh, C, "orders.>", group="billing", consumer="c1")
    await wait_interest(mesh, A, C, "orders.x")
    port = mesh[C].server.port
    peers = mesh[C].relay.config.peers
    await sub.close()
    await mesh.stop_one(C)
    for i in range(5):
        reply = await http.post(
            f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", f"q-{i}"))
        )
        assert reply.status_code == 202
    await eventually(lambda: mesh[A].link_to(C).state != "up")
    from meshcore.server import bind

    await mesh.start_one(C, sock=bind("127.0.0.1", port), peers=peers)
    await eventually(lambda: mesh[A].link_to(C).state == "up", 3)
    sub = await subscribe(mesh, C, "orders.>", group="billing", consumer="c1")
    got = [(await recv_json(sub))["event"]["id"] for _ in range(5)]
    assert got == [f"q-{i}" for i in range(5)]
    await no_more(sub)
    await sub.close()


async def test_durable_group_member_gets_what_it_missed(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, C])
    member = await subscribe(mesh, C, "orders.>", group="audit", consumer="m1")
    await wait_interest(mesh, A, C, "orders.x")

    async def publish(event_id: str) -> None:
        r = await http.post(
            f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", event_id))
        )
        assert r.status_code == 202

    await publish("d-1")
    msg = await recv_json(member)
    assert msg["event"]["id"] == "d-1"
    await member.send(orjson.dumps({"ack": [msg["ack"]]}))
    await publish("d-2")
    assert (await recv_json(member))["event"]["id"] == "d-2"  # received but never acked
    await member.close()

    # the group keeps its interest while no member is connected
    await publish("d-3")
    await publish("d-4")
    member = await subscribe(mesh, C, "orders.>", group="audit", consumer="m1")
    got = [(await recv_json(member))["event"]["id"] for _ in range(3)]
    assert got == ["d-2", "d-3", "d-4"]  # the un-acked one first, then what it missed
    await no_more(member)
    await member.close()

    r = await http.delete(f"{mesh[C].url}/v1/groups/audit")
    assert r.status_code == 204
    await eventually(lambda: not mesh[A].relay.routes.interested("orders.x"), 1)
    assert (await http.delete(f"{mesh[C].url}/v1/groups/audit")).status_code == 404


async def test_slow_subscriber_is_bounded_and_drops_are_recorded(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A], env={"MESHSCOPE_SUBSCRIBER_BUFFER": "5"})
    relay = mesh[A].relay
    sub = relay.subscribe(["slow.>"])  # a subscriber that never reads
    batch = [cloud_event("slow.x", f"s-{i}") for i in range(20)]
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch))
    assert sub.queue.qsize() == 5 and sub.dropped == 15
    assert relay.metrics.get("drops_total", reason="backpressure") == 15
    drops = await eventually(
        lambda: (rs := [r for r in flow_records(redis_sync) if r.status == "backpressure"]) and len(rs) == 15 and rs
    )
    assert {r.kind for r in drops} == {"drop"}
    relay.unsubscribe(sub)


async def test_publishing_without_interest_records_no_route(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, B])
    r = await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("nobody.x", "n-1"))
    )
    assert r.status_code == 202
    records = await eventually(lambda: records_of(redis_sync, "n-1"))
    assert [(x.kind, x.status) for x in records] == [("drop", "no_route")]
    assert mesh[B].relay.metrics.total("events_in_total") == 0


async def test_health_and_metrics(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A, B])
    health = (await http.get(f"{mesh[A].url}/healthz")).json()
    assert health["region"] == A and health["links"] == {B: "up"}
    await eventually(lambda: mesh[A].relay.links[0].rtt_ms is not None)
    await asyncio.sleep(scaled(1.2))  # one link sample interval
    text = (await http.get(f"{mesh[A].url}/metrics")).text
    assert f'meshscope_link_state{{peer="{B}",region="{A}"}} 2' in text
    assert "meshscope_link_rtt_ms" in text and "meshscope_flow_queue_depth" in text
    # every series says the relay's region, the process's own included (alerts name regions, not ports)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(samples) > 50 and [s for s in samples if f'region="{A}"' not in s] == []
    assert any(s.startswith("process_resident_memory_bytes{") for s in samples)
    # counters exist at 0 before their first increment, so rate() sees the first one
    for series in (
        'meshscope_drops_total{{reason="backpressure",region="{A}"}} 0.0',
        'meshscope_rejected_total{{region="{A}",status="429"}} 0.0',
        'meshscope_transit_total{{region="{A}"}} 0.0',
        'meshscope_link_reconnects_total{{peer="{B}",region="{A}"}} 0.0',
        'meshscope_task_restarts_total{{region="{A}",task="dispatch"}} 0.0',
        'meshscope_flow_write_errors_total{{region="{A}"}} 0.0',
    ):
        assert series.format(A=A, B=B) in text, series


async def test_batched_subscriber_gets_arrays_and_bad_batch_is_refused(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A])
    sub = await subscribe(mesh, A, "batch.>", batch="50")
    await eventually(lambda: mesh[A].relay.local.patterns.matches("batch.x"))
    events = [cloud_event("batch.x", f"b-{i}") for i in range(120)]
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(events))
    assert reply.status_code == 202
    got: list[str] = []
    while len(got) < 120:
        message = await recv_json(sub)
        assert isinstance(message, list) and 1 <= len(message) <= 50
        got.extend(ev["id"] for ev in message)
    assert got == [f"b-{i}" for i in range(120)]
    await sub.close()
    for bad in ("0", "1001", "many", "\u00b2", "\u0663", "0" * 4300 + "1"):  # "²" and "٣" pass str.isdigit
        with pytest.raises(InvalidStatus) as refused:
            await subscribe(mesh, A, "batch.>", batch=bad)
        assert refused.value.response.status_code == 400
        assert b"batch must be a whole number" in refused.value.response.body


async def test_relays_publish_routes_and_interest_for_the_dashboard(mesh: Mesh, redis_sync: redis.Redis) -> None:
    await mesh.start([A, B, C])
    sub = await subscribe(mesh, C, "orders.>")
    member = await subscribe(mesh, C, "payments.*", group="billing", consumer="m1")

    def state_of(region: str) -> Any:
        raw = redis_sync.hget("meshscope:relaystate", region)
        return orjson.loads(raw) if raw else None

    state = await eventually(lambda: (s := state_of(C)) and s["groups"] and s["subscriptions"] and s, 6)
    assert state["subscriptions"] == [{"principal": "tester", "patterns": ["orders.>"], "subscribers": 1}]
    assert state["groups"] == [
        {"group": "billing", "owner": "tester", "patterns": ["payments.*"], "members": 1, "probe": False}
    ]
    routes = {r["dst"]: r for r in (await eventually(lambda: state_of(A), 6))["routes"]}
    assert routes[C]["direct"] and routes[C]["path"] == [C]
    await sub.close()
    await member.close()
