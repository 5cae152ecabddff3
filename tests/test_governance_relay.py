"""Governance defined once, enforced at every relay: three real relays on a real Valkey.

Policies and schemas are written through one relay's admin API and must be
enforced by the others within seconds, without restarts; a relay cut off from
its store still learns new versions over the mesh. (Regions with stores of
their own, and a region cut off from the authority: tests/test_regions.py.)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import redis
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent

from tests.conftest import AUTH, CE_JSON, OTHER_AUTH, POLICY, Mesh, cloud_event, eventually, flow_records, scaled
from tests.netfault import TcpProxy

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"

ORDER_V1 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {"total": {"type": "number"}, "currency": {"type": "string", "enum": ["EUR", "USD"]}},
    "required": ["total"],
    "additionalProperties": False,
}


async def put_policies(http: httpx.AsyncClient, relay_url: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await http.put(f"{relay_url}/v1/policies", json=body)
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def publish(http: httpx.AsyncClient, url: str, event: dict[str, Any], **headers: str) -> httpx.Response:
    return await http.post(f"{url}/v1/events", headers={**CE_JSON, **headers}, content=orjson.dumps(event))


async def test_a_policy_written_at_one_relay_is_enforced_at_the_others_within_seconds(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, B, C])
    assert (await publish(http, mesh[B].url, cloud_event("secret.plans", "s-0"))).status_code == 202  # no policy yet
    started = time.monotonic()
    change = await put_policies(http, mesh[A].url, POLICY)
    version = change["version"]
    assert change["author"] == "tester" and change["changed"]
    for region in (B, C):
        await eventually(lambda region=region: mesh[region].relay.gov_version == version, 5)
    assert time.monotonic() - started < scaled(5)
    reply = await publish(http, mesh[C].url, cloud_event("secret.plans", "s-1"))
    assert reply.status_code == 403
    assert reply.json()["rule"] == "no-secrets" and "no-secrets" in reply.json()["error"]
    # the other producer is in no group that may publish: denied by default, no rule named
    other = await publish(http, mesh[B].url, cloud_event("orders.x", "o-1"), **OTHER_AUTH)
    assert other.status_code == 403 and other.json()["rule"] is None
    assert (await publish(http, mesh[B].url, cloud_event("orders.x", "o-2"))).status_code == 202
    records = await eventually(
        lambda: (rs := [r for r in flow_records(redis_sync) if r.event_id in ("s-1", "o-1")]) and len(rs) == 2 and rs, 5
    )
    assert sorted((r.event_id, r.kind, r.status, r.principal, r.dataschema) for r in records) == [
        ("o-1", "drop", "policy_denied", "other", "policy:default-deny"),
        ("s-1", "drop", "policy_denied", "tester", "policy:no-secrets"),
    ]
    health = (await http.get(f"{mesh[B].url}/healthz")).json()
    assert health["governance"]["version"] == version and health["governance"]["policy_enforced"]
    metrics = (await http.get(f"{mesh[C].url}/metrics")).text
    assert f'meshscope_governance_info{{region="{C}",version="{version}"}} 1' in metrics
    history = (await http.get(f"{mesh[C].url}/v1/governance")).json()
    assert history["enforced"] == version and history["history"][0]["author"] == "tester"


async def test_a_subscriber_never_receives_a_topic_it_may_not_read_even_over_the_mesh(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    await mesh.start([A, C])
    await put_policies(
        http,
        mesh[A].url,
        {
            "policies": [
                *POLICY["policies"],
                {"id": "others-no-audit", "effect": "deny", "principals": ["principal:other"],
                 "actions": ["subscribe"], "topics": ["audit.>"]},
            ]
        },
    )  # fmt: skip
    await eventually(lambda: mesh[C].relay.gov_version == mesh[A].relay.gov_version, 5)
    # a subscription that can read nothing is refused up front, with the rule
    async with httpx.AsyncClient():
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{mesh[C].ws_url}/v1/subscribe?topic=secret.>", additional_headers=AUTH):
                pass
        assert refused.value.response.status_code == 403
        assert orjson.loads(refused.value.response.body)["rule"] == "no-secrets"
        # a broad subscription is allowed, and filtered per event at delivery
        async with connect(f"{mesh[C].ws_url}/v1/subscribe?topic=>", additional_headers=OTHER_AUTH) as sub:
            await eventually(lambda: C in mesh[A].relay.routes.interested("audit.login"))
            for i, topic in enumerate(["audit.login", "orders.x", "audit.logout", "orders.y"]):
                assert (await publish(http, mesh[A].url, cloud_event(topic, f"m-{i}"))).status_code == 202
            got = [orjson.loads(await asyncio.wait_for(sub.recv(), scaled(3)))["type"] for _ in range(2)]
            assert got == ["orders.x", "orders.y"]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sub.recv(), scaled(0.5))
    assert mesh[C].relay.metrics.get("policy_filtered_total") >= 2


async def test_a_relay_cut_off_from_its_store_learns_versions_over_the_mesh(
    mesh: Mesh, http: httpx.AsyncClient, redis_url: str
) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = await TcpProxy(host, int(port)).start()
    try:
        await mesh.start([A, B], redis_urls={B: f"redis://{proxy.url_host}/0"})
        version = (await put_policies(http, mesh[A].url, POLICY))["version"]
        await eventually(lambda: mesh[B].relay.gov_version == version, 5)
        proxy.cut()
        # B cannot read its store, but the new version reaches it over the mesh link
        newer = (await put_policies(http, mesh[A].url, {"policies": POLICY["policies"][:1]}))["version"]
        await eventually(lambda: mesh[B].relay.gov_version == newer, 5)
        # enforced: the new version allows secrets (the old one refused them, 403); only the store says 503
        assert (await publish(http, mesh[B].url, cloud_event("secret.plans", "cut-1"))).status_code == 503
        health = await eventually(
            lambda: (
                (h := mesh[B].relay.status.health())
                and any("governance registry unreachable" in r for r in h["reasons"])
                and h
            ),
            10,
        )
        assert newer in " ".join(health["reasons"]) and not health["governance"]["registry_reachable"]
        assert not any(r["governance_mismatch"] for r in mesh[A].relay.status.link_rows())
        proxy.forward()
        await eventually(lambda: mesh[B].relay.watcher.stale_s() is None, 15)
        assert mesh[B].relay.gov_version == newer  # the store's answer never takes it back
    finally:
        await proxy.stop()


async def test_schemas_are_enforced_at_the_origin_and_travel_with_the_event(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis
) -> None:
    await mesh.start([A, C])
    subject = quote("orders.>", safe="")
    reply = await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": ORDER_V1})
    assert reply.status_code == 201, reply.text
    version = reply.json()["version"]
    await eventually(lambda: mesh[C].relay.gov_version == version, 5)
    sub = mesh[C].relay.subscribe(["orders.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.created"))
    bad = await publish(http, mesh[A].url, cloud_event("orders.created", "bad-1", data={"total": "12", "x": 1}))
    assert bad.status_code == 422
    body = bad.json()
    assert body["pointer"] in ("/total", "") and body["dataschema"] == "meshscope:schema/orders.%3E/1"
    assert "total" in body["error"] or "x" in body["error"]
    good = await publish(http, mesh[A].url, cloud_event("orders.created", "good-1", data={"total": 12.5}))
    assert good.status_code == 202
    delivered = orjson.loads(await asyncio.wait_for(sub.queue.get(), scaled(3)))
    assert delivered["id"] == "good-1" and delivered["dataschema"] == "meshscope:schema/orders.%3E/1"
    records = await eventually(
        lambda: (rs := [r for r in flow_records(redis_sync) if r.event_id in ("bad-1", "good-1")]) and len(rs) >= 4
        and rs
    )  # fmt: skip
    by_kind = {(r.event_id, r.kind): r for r in records}
    assert by_kind[("bad-1", "drop")].status == "schema_rejected"
    assert by_kind[("bad-1", "drop")].dataschema == "meshscope:schema/orders.%3E/1"
    assert by_kind[("good-1", "publish")].dataschema == "meshscope:schema/orders.%3E/1"
    assert by_kind[("good-1", "deliver")].dataschema == "meshscope:schema/orders.%3E/1"  # across the mesh


@pytest.mark.parametrize(
    ("mode", "change", "status"),
    [
        ("backward", {"properties": {"note": {"type": "string"}}}, 201),  # optional field on a closed object
        ("backward", {"required": ["total", "currency"]}, 409),  # required added
        ("backward", {"properties": {"total": {"type": "string"}}}, 409),  # type changed
        ("backward", {"properties": {"currency": {"type": "string", "enum": ["EUR"]}}}, 409),  # enum narrowed
        ("forward", {"properties": {"currency": {"type": "string", "enum": ["EUR"]}}}, 201),  # narrowed: old reads new
        ("forward", {"properties": {"note": {"type": "string"}}}, 409),  # old closed schema cannot read a new field
        ("full", {"properties": {"note": {"type": "string"}}}, 409),
        ("none", {"properties": {"total": {"type": "string"}}}, 201),
    ],
)
async def test_schema_versions_are_checked_for_compatibility(
    mesh: Mesh, http: httpx.AsyncClient, mode: str, change: dict[str, Any], status: int
) -> None:
    await mesh.start([A])
    subject = quote("orders.>", safe="")
    first = await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": ORDER_V1, "compatibility": mode})
    assert first.status_code == 201
    v2 = {**ORDER_V1, **{k: v for k, v in change.items() if k != "properties"}}
    v2["properties"] = {**ORDER_V1["properties"], **change.get("properties", {})}
    reply = await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": v2})
    assert reply.status_code == status, reply.text
    if status == 409:
        assert reply.json()["reasons"]
        versions = (await http.get(f"{mesh[A].url}/v1/schemas/{subject}")).json()["versions"]
        assert len(versions) == 1  # the refused version was not registered


async def test_only_admins_change_governance(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A])
    refused = await http.put(f"{mesh[A].url}/v1/policies", json=POLICY, headers=OTHER_AUTH)
    assert refused.status_code == 403
    async with httpx.AsyncClient() as anon:
        assert (await anon.get(f"{mesh[A].url}/v1/governance")).status_code == 401
    bad = await http.put(f"{mesh[A].url}/v1/policies", json={"policies": [{"id": "x", "effect": "maybe"}]})
    assert bad.status_code == 400 and bad.json()["path"].startswith("policies")
    huge = await http.put(f"{mesh[A].url}/v1/policies", content=b"[" + b"1," * (3 << 20) + b"1]")
    assert huge.status_code == 400 and "larger than" in huge.json()["error"]  # refused before it is buffered
    assert (await http.get(f"{mesh[A].url}/v1/governance")).status_code == 200


async def test_replacing_the_whole_document_takes_admin_over_policies_and_schemas(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    """A principal a rule lets administer policies only may not replace the schemas through /v1/governance."""
    await mesh.start([A])
    rule = {"id": "others-edit-policies", "effect": "allow", "principals": ["principal:other"], "actions": ["admin"],
            "topics": ["policies"]}  # fmt: skip
    policies = {"policies": [*POLICY["policies"], rule]}
    assert (await http.put(f"{mesh[A].url}/v1/policies", json=policies)).status_code == 200
    assert (await http.put(f"{mesh[A].url}/v1/policies", json=policies, headers=OTHER_AUTH)).status_code == 200
    whole = await http.put(f"{mesh[A].url}/v1/governance", json={**policies, "subjects": []}, headers=OTHER_AUTH)
    assert whole.status_code == 403, whole.text
    subject = quote("orders.>", safe="")
    schema = await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": ORDER_V1}, headers=OTHER_AUTH)
    assert schema.status_code == 403
    assert (await http.get(f"{mesh[A].url}/v1/schemas")).json()["subjects"] == []


async def test_binary_and_structured_mode_from_the_sdk_are_the_same_event(mesh: Mesh, http: httpx.AsyncClient) -> None:
    await mesh.start([A])
    sub = mesh[A].relay.subscribe(["sdk.>"])
    attrs = {"type": "sdk.order", "source": "/sdk", "specversion": "1.0", "datacontenttype": "application/json"}
    for make in (to_binary_event, to_structured_event):
        message = make(CloudEvent({**attrs, "id": f"sdk-{make.__name__}"}, {"total": 3}))
        reply = await http.post(f"{mesh[A].url}/v1/events", headers=dict(message.headers), content=message.body)
        assert reply.status_code == 202, reply.text
    got = [orjson.loads(await asyncio.wait_for(sub.queue.get(), scaled(3))) for _ in range(2)]
    strip = [{k: v for k, v in e.items() if k not in ("id", "traceparent", "time")} for e in got]
    assert strip[0] == strip[1] and strip[0]["data"] == {"total": 3}
    subject = quote("sdk.>", safe="")
    schema = {"type": "object", "properties": {"total": {"type": "integer", "maximum": 10}}}
    assert (await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": schema})).status_code == 201
    message = to_binary_event(CloudEvent({**attrs, "id": "sdk-bad"}, {"total": 99}))
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=dict(message.headers), content=message.body)
    assert reply.status_code == 422 and reply.json()["pointer"] == "/total"


async def test_binary_mode_without_a_content_type_is_json_data_as_the_python_sdk_sends_it(
    mesh: Mesh, http: httpx.AsyncClient
) -> None:
    """The Python SDK's binary mode sends no Content-Type when the event has no datacontenttype."""
    await mesh.start([A])
    sub = mesh[A].relay.subscribe(["sdk.>"])
    subject = quote("sdk.>", safe="")
    schema = {"type": "object", "properties": {"total": {"type": "integer", "maximum": 10}}}
    assert (await http.post(f"{mesh[A].url}/v1/schemas/{subject}", json={"schema": schema})).status_code == 201
    attrs = {"type": "sdk.order", "source": "/sdk", "specversion": "1.0"}
    message = to_binary_event(CloudEvent({**attrs, "id": "sdk-plain"}, {"total": 3}))
    assert not any(name.lower() == "content-type" for name in message.headers)
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=dict(message.headers), content=message.body)
    assert reply.status_code == 202, reply.text
    got = orjson.loads(await asyncio.wait_for(sub.queue.get(), scaled(3)))
    assert got["data"] == {"total": 3} and "data_base64" not in got and "datacontenttype" not in got
    # the schema applies to it as to any JSON data
    message = to_binary_event(CloudEvent({**attrs, "id": "sdk-plain-bad"}, {"total": 99}))
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=dict(message.headers), content=message.body)
    assert reply.status_code == 422 and reply.json()["pointer"] == "/total"
    # bytes that are not JSON stay bytes, and a governed topic says why it refuses them and which schema
    headers = {"ce-specversion": "1.0", "ce-id": "raw-1", "ce-source": "/sdk", "ce-type": "sdk.order"}
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=headers, content=b"\x00\x01 not json")
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert "data_base64" in error and error.endswith("(schema meshscope:schema/sdk.%3E/1)"), error
    assert "(schema )" not in error


async def test_governance_apply_from_a_directory_is_versioned_and_idempotent(
    mesh: Mesh, tmp_path: Any, http: httpx.AsyncClient
) -> None:
    import json as jsonlib

    from meshscope.governance import GovernanceCommandError, apply

    await mesh.start([A, B])
    root = tmp_path / "governance"
    (root / "schemas" / "orders").mkdir(parents=True)
    (root / "policies.toml").write_text(
        '[[rule]]\nid = "testers"\neffect = "allow"\nprincipals = ["group:testers"]\nactions = ["publish"]\n'
        'topics = [">"]\n\n[[rule]]\nid = "reads"\neffect = "allow"\nprincipals = ["*"]\n'
        'actions = ["subscribe", "join"]\ntopics = [">"]\n'
    )
    (root / "schemas" / "index.toml").write_text('[subjects."orders.>"]\nversions = ["orders/1.json"]\n')
    (root / "schemas" / "orders" / "1.json").write_text(jsonlib.dumps(ORDER_V1))
    from tests.conftest import TEST_TOKEN

    lines = await asyncio.to_thread(apply, str(root), mesh[A].url, TEST_TOKEN, None)
    assert lines[-1].startswith("applied: version 1-") and lines[-1].endswith("by tester")
    await eventually(lambda: mesh[B].relay.gov_version.startswith("1-"), 5)
    again = await asyncio.to_thread(apply, str(root), mesh[A].url, TEST_TOKEN, None)
    assert again[1:] == ["  no change"]
    # an incompatible new version is refused with the reasons, and nothing changes
    (root / "schemas" / "orders" / "2.json").write_text(jsonlib.dumps({**ORDER_V1, "required": ["total", "currency"]}))
    (root / "schemas" / "index.toml").write_text(
        '[subjects."orders.>"]\nversions = ["orders/1.json", "orders/2.json"]\n'
    )
    with pytest.raises(GovernanceCommandError, match="409"):
        await asyncio.to_thread(apply, str(root), mesh[A].url, TEST_TOKEN, None)
    assert mesh[A].relay.gov_version.startswith("1-")
