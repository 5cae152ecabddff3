"""What each bad input gets from a real relay, and that nothing of it is routed."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import redis
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshcore.flowrecord import FlowRecord
from router.spans import HopTracer
from router.subscription import Subscriber
from tests.conftest import CE_JSON, Mesh, cloud_event, eventually, flow_records, scaled

A, C = "aws:us-east-1", "azure:westeurope"
ARABIC_INDIC = str.maketrans("0123456789", "".join(map(chr, range(0x660, 0x66A))))


async def setup_watch(mesh: Mesh) -> tuple[Subscriber, Subscriber]:
    """A subscriber for everything in A (local) and in C (remote), read directly."""
    await mesh.start([A, C])
    local = mesh[A].relay.subscribe([">"])
    remote = mesh[C].relay.subscribe([">"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("a.b"))
    return local, remote


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"{not json", CE_JSON, 400, {"attribute": None}),
        (orjson.dumps({"specversion": "1.0", "id": "x", "type": "a.b"}), CE_JSON, 400, {"attribute": "source"}),
        (
            orjson.dumps([cloud_event("a.b", "ok-1"), cloud_event("a..b", "bad")]),
            CE_JSON,
            400,
            {"attribute": "type", "index": 1},
        ),
        (orjson.dumps([]), CE_JSON, 400, {"attribute": None}),
        (orjson.dumps(cloud_event("a.b", "big", data="x" * 5000)), CE_JSON, 413, {"limit": 4096}),
        (
            orjson.dumps([cloud_event("a.b", "small"), cloud_event("a.b", "big", data="x" * 3000)]),
            CE_JSON,
            413,
            {"index": 1},
        ),
        (orjson.dumps(cloud_event("a.b", "t-3", time="2024-13-45T99:99:99Z")), CE_JSON, 400, {"attribute": "time"}),
        (
            orjson.dumps(cloud_event("a.b", "t-4", time="2024-01-01T00:00:00Z".translate(ARABIC_INDIC))),
            CE_JSON,
            400,
            {"attribute": "time"},
        ),
        (orjson.dumps(cloud_event("a.b", "t-5", source="/shop floor")), CE_JSON, 400, {"attribute": "source"}),
        (orjson.dumps(cloud_event("a.b", "t-6", dataschema="order.json")), CE_JSON, 400, {"attribute": "dataschema"}),
        (
            orjson.dumps(cloud_event("a.b", "t-7", datacontenttype="json")),
            CE_JSON,
            400,
            {"attribute": "datacontenttype"},
        ),
        (orjson.dumps(cloud_event("a.b", "t-1")), {"content-type": "text/plain"}, 415, {}),
        (orjson.dumps(cloud_event("a.b", "t-2")), {"content-type": "application/cloudevents"}, 415, {}),
    ],
)
async def test_bad_posts_get_their_status_and_route_nothing(
    mesh: Mesh, http: httpx.AsyncClient, body: bytes, headers: dict[str, str], status: int, says: dict[str, object]
) -> None:
    mesh_env = {"MESHSCOPE_MAX_BODY_BYTES": "4096", "MESHSCOPE_MAX_EVENT_BYTES": "2048"}
    await mesh.start([A, C], env=mesh_env)
    local = mesh[A].relay.subscribe([">"])
    remote = mesh[C].relay.subscribe([">"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("a.b"))
    reply = await http.post(f"{mesh[A].url}/v1/events", content=body, headers=headers)
    assert reply.status_code == status
    payload = reply.json()
    assert payload["error"]
    for key, value in says.items():
        assert payload[key] == value
    await asyncio.sleep(scaled(0.2))
    assert local.queue.qsize() == 0 and remote.queue.qsize() == 0
    assert mesh[A].relay.metrics.total("events_in_total") == 0
    assert mesh[A].relay.metrics.get("rejected_total", status=str(status)) == 1


async def test_malformed_event_leaves_a_malformed_drop_record(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A])
    reply = await http.post(
        f"{mesh[A].url}/v1/events",
        headers=CE_JSON,
        content=orjson.dumps({"specversion": "1.0", "id": "r-1", "source": "/p", "type": "a.*"}),
    )
    assert reply.status_code == 400
    records = await eventually(lambda: [r for r in flow_records(redis_sync) if r.event_id == "r-1"])
    assert [(r.kind, r.status, r.principal) for r in records] == [("drop", "malformed", "tester")]


async def test_unreachable_redis_answers_503_and_says_why(mesh: Mesh, http: httpx.AsyncClient) -> None:
    # a relay whose Redis is unreachable cannot make events durable: 503 with Retry-After, nothing routed
    real = mesh.redis_url
    mesh.redis_url = "redis://127.0.0.1:1/0"
    try:
        running = await mesh.start_one(A, wait_ready=False)
    finally:
        mesh.redis_url = real
    sub = running.relay.subscribe(["a.>"])
    for i in range(3):
        reply = await http.post(
            f"{running.url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", f"u-{i}"))
        )
        assert reply.status_code == 503
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.json()["error"]
    assert sub.queue.qsize() == 0
    health = (await http.get(f"{running.url}/healthz")).json()
    assert health["status"] == "degraded"
    assert any("not loaded" in r or "redis" in r for r in health["reasons"])


async def test_full_flow_queue_answers_429_with_retry_after(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A], env={"MESHSCOPE_FLOW_QUEUE_MAX": "3"})
    relay = mesh[A].relay
    sub = relay.subscribe(["a.>"])
    url = f"{mesh[A].url}/v1/events"
    ok = await http.post(url, headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", "q-0")))
    assert ok.status_code == 202
    # a backlog of records the sink has not written yet (as when Redis is slow): the queue is full
    relay.sink.pending.extend(relay.sink.pending[:1] * 3 or [_record()] * 3)
    reply = await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", "q-1"))
    )
    assert reply.status_code == 429
    assert reply.headers["retry-after"] == "1" and "full" in reply.json()["error"]
    await eventually(lambda: sub.queue.qsize() == 1)
    await eventually(lambda: not relay.sink.full)
    again = await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", "q-1"))
    )
    assert again.status_code == 202 and again.json()["accepted"] == ["q-1"]  # the refused event was not kept


def _record() -> FlowRecord:
    return FlowRecord(1, "x", "", "0123456789abcdef", "", "a.b", "drop", A, A, "r", 0.0, 0.0, "no_route", 1, 1, 0)


async def test_sampled_hop_spans_share_ids_with_flow_records(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    exporters = {r: InMemorySpanExporter() for r in (A, C)}
    for region, exporter in exporters.items():
        mesh.tracers[region] = HopTracer(region, f"relay-{region}", 1.0, processor=SimpleSpanProcessor(exporter))
    await mesh.start([A, C])
    sub = mesh[C].relay.subscribe(["a.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("a.b"))
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", "o-1", traceparent=tp))
    )
    await eventually(lambda: sub.queue.qsize() == 1)
    records = await eventually(
        lambda: (rs := [r for r in flow_records(redis_sync) if r.event_id == "o-1"]) and len(rs) == 3 and rs
    )
    spans = [s for e in exporters.values() for s in e.get_finished_spans()]
    assert len(spans) == 3
    assert {format(s.context.span_id, "016x") for s in spans} == {r.span_id for r in records}
    assert {format(s.context.trace_id, "032x") for s in spans} == {"4bf92f3577b34da6a3ce929d0e0e4736"}
    assert {format(s.parent.span_id, "016x") for s in spans if s.parent} == {r.parent_span_id for r in records}
