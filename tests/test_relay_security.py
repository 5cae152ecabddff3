"""Closed by default: authentication, mutual TLS on mesh links, hostile frames and inputs, limits at the edge.

Real relays on real sockets with real certificates made by ``meshscope certs``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from meshcore import storekeys as sk
from meshcore.certs import write_bundle
from meshcore.tls import Identity
from tests.conftest import AUTH, CE_JSON, OTHER_AUTH, Mesh, cloud_event, eventually, flow_records, relay_token, scaled

A, C = "aws:us-east-1", "azure:westeurope"
CE_BATCH = {"content-type": "application/cloudevents-batch+json"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_bundle(out, [Identity("region", A), Identity("region", C), Identity("client", "ops")])
    return out


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other-ca")
    write_bundle(out, [Identity("region", A)])
    return out


def client_ssl(certs: Path, identity: str | None = None, ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str((ca or certs) / "ca.pem"))
    if identity is not None:
        ctx.load_cert_chain(str(certs / f"{identity}.pem"), str(certs / f"{identity}.key"))
    return ctx


def hello(region: str) -> bytes:
    return orjson.dumps(
        {"v": 2, "t": "HELLO", "region": region, "relay": "x", "provider": "aws", "lat": 0, "lon": 0, "city": "x"}
    )


# ---- mutual TLS -------------------------------------------------------------------------------


async def test_two_relays_over_mtls_route_events_and_report_mtls(mesh: Mesh, certs: Path) -> None:
    mesh.certs = certs
    await mesh.start([A, C])
    assert {link.security for link in mesh[A].relay.links} == {"mtls"}
    ca = client_ssl(certs)
    async with (
        connect(f"{mesh[C].ws_url}/v1/subscribe?topic=orders.>", ssl=ca, additional_headers=AUTH) as sub,
        httpx.AsyncClient(verify=ca, headers=AUTH) as https,
    ):
        await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
        reply = await https.post(
            f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", "t-1"))
        )
        assert reply.status_code == 202 and mesh[A].url.startswith("https://")
        assert orjson.loads(await asyncio.wait_for(sub.recv(), scaled(5)))["id"] == "t-1"
        text = (await https.get(f"{mesh[A].url}/metrics")).text
    assert f'meshscope_link_security{{peer="{C}",region="{A}"}} 2' in text  # 2 = mtls
    assert mesh[C].relay.status.health()["inbound"] == [A]


@pytest.mark.parametrize(
    ("who", "expect"),
    [
        ("no certificate, no token", 401),
        ("a client certificate, not a region", 403),
        ("a certificate from another CA", "handshake"),
        ("a certificate for aws:us-east-1 claiming azure:westeurope... to itself", 1008),
    ],
)
async def test_mesh_refuses_peers_that_are_not_the_region_they_claim(
    mesh: Mesh, certs: Path, other_ca: Path, who: str, expect: int | str
) -> None:
    mesh.certs = certs
    mesh.regions = [A]  # A is a relay of this mesh (it does not run: this test speaks for it)
    await mesh.start_one(C)
    url = f"{mesh[C].ws_url}/v1/mesh"
    if expect == "handshake":
        with pytest.raises((ssl.SSLError, ConnectionError, OSError, ConnectionClosed, InvalidHandshake)):
            async with connect(url, ssl=client_ssl(other_ca, f"region-{A.replace(':', '_')}", ca=certs)) as ws:
                await ws.send(hello(A))
                await asyncio.wait_for(ws.recv(), scaled(3))
        return
    if isinstance(expect, int) and expect >= 1000:
        async with connect(url, ssl=client_ssl(certs, f"region-{A.replace(':', '_')}")) as ws:
            await ws.send(hello("gcp:europe-west1"))  # authenticated as A, says it is another region
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), scaled(3))
            assert ws.close_code == expect
        assert mesh[C].relay.status.health()["inbound"] == []
        return
    identity = "client-ops" if "client" in who else None
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, ssl=client_ssl(certs, identity)):
            pass
    assert refused.value.response.status_code == expect


async def test_a_relay_token_is_bound_to_its_region(mesh: Mesh) -> None:
    await mesh.start([A, C])
    token_of_a = {"Authorization": f"Bearer {relay_token(A)}"}
    async with connect(f"{mesh[C].ws_url}/v1/mesh", additional_headers=token_of_a) as ws:
        await ws.send(hello("gcp:europe-west1"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(3))
        assert ws.close_code == 1008
    # a producer's token is not a relay's
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{mesh[C].ws_url}/v1/mesh", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 403


# ---- hostile mesh frames ----------------------------------------------------------------------

ITEM = st.lists(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.text(max_size=30),
        st.sampled_from([A, C, "0123456789abcdef", "00f067aa0ba902b7"]),
        st.lists(st.sampled_from([A, C, "x"]), max_size=4),
        st.dictionaries(st.sampled_from(["specversion", "id", "source", "type", "data"]), st.text(max_size=8)),
    ),
    min_size=0,
    max_size=14,
)
FRAME = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: orjson.dumps({"v": 2, "t": "EVENTS", "b": b}), st.lists(ITEM, max_size=5)),
    st.builds(lambda a: orjson.dumps({"v": 2, "t": "ACK", "a": a}), st.lists(ITEM, max_size=3)),
    st.builds(
        lambda t, x: orjson.dumps({"v": 2, "t": t, "ts": x, "region": x}),
        st.sampled_from(["PING", "HELLO", "ROUTES", "INTEREST", "PONG", "NOPE"]),
        st.one_of(st.integers(-5, 5), st.text(max_size=5), st.none()),
    ),
)


async def test_hostile_mesh_frames_leave_the_relay_healthy_and_the_link_working(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    sub = mesh[C].relay.subscribe(["orders.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
    token_of_a = {"Authorization": f"Bearer {relay_token(A)}"}
    sessions = 0

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(FRAME, min_size=1, max_size=6))
    def run(frames: list[bytes]) -> None:
        nonlocal sessions
        sessions += 1
        asyncio.run_coroutine_threadsafe(send(frames), loop).result(timeout=scaled(10))

    async def send(frames: list[bytes]) -> None:
        async with connect(f"{mesh[C].ws_url}/v1/mesh", additional_headers=token_of_a) as ws:
            await ws.send(hello(A))
            try:
                for data in frames:
                    await ws.send(data)
                await asyncio.sleep(0.01)
            except ConnectionClosed:
                pass

    loop = asyncio.get_running_loop()
    await asyncio.to_thread(run)
    assert sessions >= 40
    health = mesh[C].relay.status.health()
    assert health["status"] == "ok", health
    reply = await http.post(
        f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("orders.x", "after-abuse"))
    )
    assert reply.status_code == 202
    got = await eventually(lambda: [orjson.loads(sub.queue.get_nowait()) for _ in range(sub.queue.qsize())], 5)
    assert [e["id"] for e in got] == ["after-abuse"]


async def test_a_malformed_item_is_refused_and_acknowledged_not_resent_forever(
    mesh: Mesh, redis_sync: redis.Redis
) -> None:
    """Refused for good, and the loss is on the record: a drop/malformed naming the origin and number, and
    what can still be read of the event (id, topic, trace), though the item failed its own checks (its
    clock is far off), so search and the trace view show where it ended."""
    mesh.regions = [A]  # A's relay token is known to C, but A does not run: this test speaks for it
    await mesh.start_one(C)
    token_of_a = {"Authorization": f"Bearer {relay_token(A)}"}
    async with connect(f"{mesh[C].ws_url}/v1/mesh", additional_headers=token_of_a) as ws:
        await ws.send(hello(A))
        event = {"id": "lost-1", "type": "orders.x", "traceparent": f"00-{'4b' * 16}-00f067aa0ba902b7-01"}
        bad = [A, "0123456789abcdef", 1, 1, 1, C, [A], "00f067aa0ba902b7", 0, 0, 1, "", event]
        await ws.send(orjson.dumps({"v": 2, "t": "EVENTS", "b": [bad]}))
        while True:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), scaled(3)))
            if frame["t"] == "ACK":
                break
    assert frame["a"] == [[A, "0123456789abcdef", 1, 1]]
    assert mesh[C].relay.metrics.get("mesh_refused_items_total", peer=A) == 1
    (drop,) = await eventually(lambda: [r for r in flow_records(redis_sync) if r.status == "malformed"], 5)
    assert (drop.kind, drop.src_region, drop.dst_region, drop.seq) == ("drop", A, C, 1)
    assert (drop.event_id, drop.topic, drop.trace_id) == ("lost-1", "orders.x", "4b" * 16)
    assert drop.parent_span_id == "00f067aa0ba902b7"  # under the sender's forward, in the trace view


# ---- principals -------------------------------------------------------------------------------


async def test_without_credentials_everything_is_401(mesh: Mesh) -> None:
    await mesh.start([A])
    async with httpx.AsyncClient() as anon:
        url = mesh[A].url
        for method, path in [("POST", "/v1/events"), ("DELETE", "/v1/groups/g"), ("GET", "/metrics")]:
            reply = await anon.request(method, url + path, headers=CE_JSON, content=b"{}")
            assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        assert (await anon.get(f"{url}/healthz")).status_code == 200  # health stays public
        bad = await anon.post(
            f"{url}/v1/events", headers={**CE_JSON, "Authorization": "Bearer ms_wrong"}, content=b"{}"
        )
        assert bad.status_code == 401
    for path in ("/v1/stream", "/v1/subscribe?topic=a.>"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{mesh[A].ws_url}{path}"):
                pass
        assert refused.value.response.status_code == 401


async def test_anonymous_access_only_when_configured_and_then_visible(mesh: Mesh) -> None:
    await mesh.start([A], env={"MESHSCOPE_ALLOW_ANONYMOUS": "true"})
    async with httpx.AsyncClient() as anon:
        reply = await anon.post(
            f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("a.b", "anon-1"))
        )
        assert reply.status_code == 202
        health = (await anon.get(f"{mesh[A].url}/healthz")).json()
    assert health["anonymous_allowed"] is True


async def test_the_principal_is_on_the_flow_records(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    mesh[C].relay.subscribe(["p.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("p.x"))
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("p.x", "who-1")))
    records = await eventually(
        lambda: (rs := [r for r in flow_records(redis_sync) if r.event_id == "who-1"]) and len(rs) >= 3 and rs
    )
    assert {r.principal for r in records} == {"tester"}
    assert {r.kind for r in records} >= {"publish", "forward", "deliver"}


async def test_duplicate_suppression_is_per_principal(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A])
    sub = mesh[A].relay.subscribe(["d.>"])
    event = orjson.dumps(cloud_event("d.x", "same-id"))
    first = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=event)
    other = await http.post(f"{mesh[A].url}/v1/events", headers={**CE_JSON, **OTHER_AUTH}, content=event)
    again = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=event)
    assert first.json()["accepted"] == ["same-id"]
    assert other.json()["accepted"] == ["same-id"]  # another principal cannot suppress it, nor be suppressed
    assert again.json()["duplicates"] == ["same-id"]
    await eventually(lambda: sub.queue.qsize() == 2)


# ---- limits at the edge -----------------------------------------------------------------------

DEEP_BODY = b'{"specversion":"1.0","id":"deep","source":"/s","type":"a.b","data":' + b'{"x":' * 300 + b"1" + b"}" * 301


@pytest.mark.parametrize(
    ("event", "status", "attribute"),
    [
        (cloud_event("a.b", "x" * 257), 400, "id"),
        (cloud_event("a.b", "ok", source="/" + "s" * 1100), 400, "source"),
        (cloud_event("a.b", "ok", subject="s" * 1100), 400, "subject"),
        (cloud_event("a.b\x07", "ok"), 400, "type"),
        (cloud_event("a b", "ok"), 400, "type"),
        (cloud_event("ä.b", "ok"), 400, "type"),
        (DEEP_BODY, 400, None),
        (cloud_event("a.b", "ok", myext={"no": "objects"}), 400, "myext"),
        (cloud_event("a.b", "ok", myext="v" * 2000), 400, "myext"),
    ],
)
async def test_limits_on_attributes_nesting_and_topics(
    mesh: Mesh, http: httpx.AsyncClient, event: dict[str, Any] | bytes, status: int, attribute: str | None
) -> None:
    await mesh.start([A])
    sub = mesh[A].relay.subscribe([">"])
    body = event if isinstance(event, bytes) else orjson.dumps(event)
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=body)
    assert reply.status_code == status, reply.text
    if attribute:
        assert reply.json()["attribute"] == attribute
    await asyncio.sleep(scaled(0.1))
    assert sub.queue.qsize() == 0
    assert mesh[A].relay.status.health()["status"] == "ok"


async def test_a_body_that_does_not_arrive_gets_408(mesh: Mesh) -> None:
    await mesh.start([A], env={"MESHSCOPE_BODY_TIMEOUT_S": "0.3"})
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh[A].server.port)
    writer.write(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\ncontent-type: application/cloudevents+json\r\n"
        + f"authorization: {AUTH['Authorization']}\r\ncontent-length: 1000\r\n\r\n".encode()
        + b'{"specversion": "1.0"'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), scaled(5))
    assert b" 408 " in status_line
    writer.close()


@pytest.mark.parametrize(
    ("what", "line", "status"),
    [
        ("a request line over 8 KiB", f"GET /v1/stream?token={'a' * 9000} HTTP/1.1", b" 414 "),
        ("a header over 8 KiB", "GET /v1/stream HTTP/1.1\r\nx-big: " + "b" * 9000, b" 431 "),
    ],
)
async def test_an_oversized_upgrade_request_is_answered_and_closed(
    mesh: Mesh, what: str, line: str, status: bytes
) -> None:
    """Refused by the WebSocket parser before any route runs: answered at once, never left hanging."""
    await mesh.start([A])
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh[A].server.port)
    writer.write(
        f"{line}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), scaled(5))
    assert status in status_line, what
    assert await asyncio.wait_for(reader.read(), scaled(5)) is not None  # then closed (EOF), not held open
    writer.close()
    assert mesh[A].relay.status.health()["status"] == "ok"


async def test_a_huge_websocket_frame_is_refused_from_its_header(mesh: Mesh) -> None:
    await mesh.start([A])
    async with connect(f"{mesh[A].ws_url}/v1/stream", additional_headers=AUTH, max_size=None) as ws:
        # announce a 60 MB frame and send only its header: the relay must refuse it without waiting for it
        header = bytes([0x82, 0xFF]) + (60 << 20).to_bytes(8, "big") + b"\x00\x00\x00\x00"
        ws.transport.write(header + b"x" * 1024)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), scaled(3))
    assert ws.close_code == 1009


async def test_topic_labels_in_metrics_are_bounded(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A], env={"MESHSCOPE_TOPIC_LABEL_MAX": "20"})
    batch = [cloud_event(f"t{i}.x", f"m-{i}") for i in range(300)]
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch))
    assert reply.status_code == 202
    text = (await http.get(f"{mesh[A].url}/metrics")).text
    topics = {line.split('topic="')[1].split('"')[0] for line in text.splitlines() if 'topic="' in line}
    assert len(topics) <= 21 and "_other" in topics


# ---- durable groups ---------------------------------------------------------------------------


async def test_group_names_owners_patterns_and_deletes(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A])
    base = f"{mesh[A].ws_url}/v1/subscribe"
    for bad in ("a b", "x" * 65, "../x", "%00"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}?topic=o.>&group={bad}&consumer=c", additional_headers=AUTH):
                pass
        assert refused.value.response.status_code == 400
    member = await connect(f"{base}?topic=o.>&group=billing&consumer=c1", additional_headers=AUTH)
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("o.x", "g-1")))
    assert orjson.loads(await asyncio.wait_for(member.recv(), scaled(3)))["event"]["id"] == "g-1"  # not acked
    await member.close()
    # another principal with the same consumer name does not get the tester's un-acked entry
    async with connect(f"{base}?topic=o.>&group=billing&consumer=c1", additional_headers=OTHER_AUTH) as thief:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(thief.recv(), scaled(0.5))
    # other patterns: 409 unless asked, and then only the owner or an admin may change them
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{base}?topic=x.>&group=billing&consumer=c2", additional_headers=AUTH):
            pass
    assert refused.value.response.status_code == 409
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{base}?topic=x.>&group=billing&consumer=c2&update=true", additional_headers=OTHER_AUTH):
            pass
    assert refused.value.response.status_code == 403
    # only the owner deletes; an unknown group deletes nothing
    assert (await http.delete(f"{mesh[A].url}/v1/groups/billing", headers=OTHER_AUTH)).status_code == 403
    redis_sync.set(sk.group_stream("aws:us-east-1", "ghost"), "keep")
    assert (await http.delete(f"{mesh[A].url}/v1/groups/ghost")).status_code == 404
    assert redis_sync.get(sk.group_stream("aws:us-east-1", "ghost")) == b"keep"
    assert (await http.delete(f"{mesh[A].url}/v1/groups/billing")).status_code == 204


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_entries_of_a_member_that_went_away_go_to_another_member_of_its_principal(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    await mesh.start([A], env={"MESHSCOPE_GROUP_CLAIM_IDLE_S": "0.3"})
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&group=jobs"
    gone = await connect(f"{base}&consumer=old", additional_headers=AUTH)
    await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("o.x", "j-1")))
    assert orjson.loads(await asyncio.wait_for(gone.recv(), scaled(3)))["event"]["id"] == "j-1"
    await gone.close()  # never acknowledged
    # another principal never gets it; a new member of the same principal does, once it sat idle
    async with connect(f"{base}&consumer=other", additional_headers=OTHER_AUTH) as stranger:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(stranger.recv(), scaled(0.8))
    async with connect(f"{base}&consumer=new", additional_headers=AUTH) as heir:
        assert orjson.loads(await asyncio.wait_for(heir.recv(), scaled(3)))["event"]["id"] == "j-1"


async def test_a_full_group_gives_up_its_oldest_unacknowledged_entries_each_with_a_drop_record(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    """Acknowledged entries go quietly; past the bound, unacknowledged ones go with a drop/expired each."""
    await mesh.start([A], env={"MESHSCOPE_GROUP_MAX_ENTRIES": "5"})
    base = f"{mesh[A].ws_url}/v1/subscribe?topic=o.>&group=full&consumer=c1"
    stream = sk.group_stream(A, "full")

    async def publish(*ids: str) -> None:
        batch = [cloud_event("o.x", i) for i in ids]
        reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_BATCH, content=orjson.dumps(batch))
        assert reply.status_code == 202, reply.text

    async with connect(base, additional_headers=AUTH) as member:
        await publish("g-0", "g-1")
        got = [orjson.loads(await asyncio.wait_for(member.recv(), scaled(3))) for _ in range(2)]
        assert [m["event"]["id"] for m in got] == ["g-0", "g-1"]
        await member.send(orjson.dumps({"ack": [got[0]["ack"]]}))  # g-1 stays pending
        await asyncio.sleep(0.2)
    await publish(*(f"g-{i}" for i in range(2, 8)))  # undelivered: 8 entries in all, one acknowledged
    dropped = await eventually(
        lambda: sorted(r.event_id for r in flow_records(redis_sync) if r.status == "expired") or None, scaled(5)
    )
    assert dropped == ["g-1", "g-2"]
    assert redis_sync.xlen(stream) == 5
    async with connect(base, additional_headers=AUTH) as member:
        got = [orjson.loads(await asyncio.wait_for(member.recv(), scaled(3))) for _ in range(5)]
        assert [m["event"]["id"] for m in got] == [f"g-{i}" for i in range(3, 8)]
        await member.send(orjson.dumps({"ack": [m["ack"] for m in got]}))
        await eventually(lambda: redis_sync.xlen(stream) == 0, scaled(5))
    assert sorted(r.event_id for r in flow_records(redis_sync) if r.status == "expired") == ["g-1", "g-2"]


async def test_a_region_certificate_alone_is_not_enough_when_the_mesh_lists_its_relays(
    mesh: Mesh, certs: Path, tmp_path: Path
) -> None:
    # a certificate of the mesh CA for a region the principals file does not name (say, the dashboard's key)
    write_bundle(certs, [Identity("region", "meshscope:dashboard")])
    mesh.certs = certs
    await mesh.start_one(C)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{mesh[C].ws_url}/v1/mesh", ssl=client_ssl(certs, "region-meshscope_dashboard")):
            pass
    assert refused.value.response.status_code == 403


async def test_fault_injection_takes_only_small_well_formed_requests_from_admins(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    await mesh.start([A, C], env={"MESHSCOPE_FAULT_INJECTION": "true"})
    url = f"{mesh[A].url}/v1/faults"
    cases: list[tuple[dict[str, str], bytes, int]] = [
        (OTHER_AUTH, orjson.dumps({"peer": C, "fault": "cut"}), 403),  # not an admin
        (AUTH, b"not json", 400),
        (AUTH, b"[1, 2]", 400),
        (AUTH, orjson.dumps({"peer": C, "fault": "melt"}), 400),
        (AUTH, orjson.dumps({"peer": C, "fault": "blackhole", "seconds": 1e9}), 400),
        (AUTH, orjson.dumps({"peer": C, "fault": "blackhole", "seconds": "a while"}), 400),
        (AUTH, orjson.dumps({"peer": "aws:nowhere", "fault": "cut"}), 404),
        (AUTH, orjson.dumps({"peer": C, "fault": "cut", "pad": "x" * 5000}), 413),
        (AUTH, orjson.dumps({"fault": "isolate", "seconds": -1}), 400),
        (AUTH, orjson.dumps({"fault": "isolate", "seconds": [1]}), 400),
        (OTHER_AUTH, orjson.dumps({"fault": "isolate", "seconds": 1}), 403),
    ]
    for headers, body, status in cases:
        reply = await http.post(url, headers={**headers, "content-type": "application/json"}, content=body)
        assert reply.status_code == status, (body[:60], reply.text)
        assert reply.json()["error"]
    assert mesh[A].relay.status.health()["status"] == "ok"
