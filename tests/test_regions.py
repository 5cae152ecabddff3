"""Regions that stand alone: every relay on its own region's Valkey, governance ordered by one home region.

Real relays on port 0, one real Valkey per region, links through real TCP proxies where a test
cuts a region off. A change made at any relay is ordered by the home region, reaches every
region's own store and is enforced there; two changes made at once never both win; a region cut
off keeps enforcing the last version it had (after a restart too), says so, refuses changes it
cannot get ordered, and catches up once the links heal.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import redis

from meshcore import storekeys as sk
from meshcore.server import bind
from tests.conftest import CE_JSON, POLICY, Mesh, RegionValkeys, cloud_event, eventually, scaled

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
HOME = {"MESHSCOPE_GOVERNANCE_HOME": A}
ONLY_TESTERS = {"policies": POLICY["policies"][:1]}  # secret.> allowed again


async def publish(http: httpx.AsyncClient, url: str, topic: str, event_id: str) -> int:
    reply = await http.post(f"{url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event(topic, event_id)))
    return reply.status_code


def stored_version(url: str) -> str:
    client = redis.Redis.from_url(url)
    try:
        raw = client.get(sk.GOVERNANCE_VERSION)
        return raw.decode() if raw else "none"
    finally:
        client.close()


async def test_a_change_made_in_any_region_is_ordered_by_the_home_and_kept_in_every_regions_store(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys
) -> None:
    stores = region_stores([A, B, C])
    await mesh.start([A, B, C], env=HOME, redis_urls=stores)
    started = time.monotonic()
    reply = await http.put(f"{mesh[C].url}/v1/policies", json=POLICY)  # made in C, ordered by A
    assert reply.status_code == 200, reply.text
    version = reply.json()["version"]
    assert version.startswith("1-") and reply.json()["author"] == "tester"
    for region in (A, B, C):
        await eventually(lambda region=region: mesh[region].relay.gov_version == version, 5)
        await eventually(lambda region=region: stored_version(stores[region]) == version, 5)
    assert time.monotonic() - started < scaled(5)
    assert await publish(http, mesh[B].url, "secret.plans", "r-1") == 403
    # every region's history names the author, as the home's does
    history = (await http.get(f"{mesh[B].url}/v1/governance")).json()
    assert history["enforced"] == version and history["history"][0]["author"] == "tester"
    assert history["authority"]["home"] == A and history["authority"]["authority_reachable"]
    # the change is not forwarded when nothing changes
    same = await http.put(f"{mesh[B].url}/v1/policies", json=POLICY)
    assert same.status_code == 200 and same.json() == {"version": version, "changed": False, "author": "tester"}


async def test_two_changes_made_at_once_in_two_regions_never_both_win(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys
) -> None:
    await mesh.start([A, B, C], env=HOME, redis_urls=region_stores([A, B, C]))
    base = (await http.put(f"{mesh[A].url}/v1/policies", json=POLICY)).json()["version"]
    for region in (B, C):
        await eventually(lambda region=region: mesh[region].relay.gov_version == base, 5)
    # both made on the same version, as two admins who read it at the same time
    replies = await asyncio.gather(
        http.put(f"{mesh[B].url}/v1/policies", json=ONLY_TESTERS, headers={"if-match": f'"{base}"'}),
        http.put(f"{mesh[C].url}/v1/policies", json={"policies": []}, headers={"if-match": base}),
    )
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 409], [r.text for r in replies]
    won = next(r for r in replies if r.status_code == 200).json()["version"]
    lost = next(r for r in replies if r.status_code == 409).json()
    assert lost["current"] == won and base in lost["error"]
    for region in (A, B, C):
        await eventually(lambda region=region: mesh[region].relay.gov_version == won, 5)
    # without If-Match a change is made on the version the relay enforces: the next one goes through
    again = await http.put(f"{mesh[B].url}/v1/policies", json=POLICY)
    assert again.status_code == 200 and again.json()["version"].startswith("3-")
    bad = await http.put(f"{mesh[B].url}/v1/policies", json=POLICY, headers={"if-match": "seven"})
    assert bad.status_code == 400 and "If-Match" in bad.json()["error"]


async def test_a_region_cut_off_keeps_enforcing_its_last_version_and_catches_up_after_healing(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys
) -> None:
    stores = region_stores([A, B, C])
    links = [(x, y) for x in (A, B, C) for y in (A, B, C) if x != y and B in (x, y)]
    await mesh.start([A, B, C], env=HOME, redis_urls=stores, proxied=links)
    version = (await http.put(f"{mesh[A].url}/v1/policies", json=POLICY)).json()["version"]
    await eventually(lambda: mesh[B].relay.gov_version == version, 5)
    mesh.isolate(B)
    health = await eventually(
        lambda: (h := mesh[B].relay.status.health())["governance"]["cut_off_s"] is not None and h, 10
    )
    assert not health["governance"]["authority_reachable"] and health["status"] == "degraded"
    assert any(f"cut off from the governance authority ({A})" in r and version in r for r in health["reasons"])
    assert mesh[B].relay.hello["gov_cut_off"] is True
    newer = (await http.put(f"{mesh[A].url}/v1/policies", json=ONLY_TESTERS)).json()["version"]
    await eventually(lambda: mesh[C].relay.gov_version == newer, 5)
    # B cannot get a change ordered, and says why; it still refuses what its version refuses
    refused = await http.put(f"{mesh[B].url}/v1/policies", json={"policies": []})
    assert refused.status_code == 503 and A in refused.json()["error"] and refused.headers["retry-after"]
    assert await publish(http, mesh[B].url, "secret.plans", "iso-1") == 403
    assert await publish(http, mesh[B].url, "orders.created", "iso-2") == 202  # its own traffic goes on
    # a relay of B restarted while B is cut off enforces the version in B's own store
    port = mesh[B].server.port
    await mesh.stop_one(B)
    await mesh.start_one(B, sock=bind(port=port), env=HOME, redis_url=stores[B], peers=mesh_peers(mesh, B))
    assert mesh[B].relay.gov_version == version
    assert await publish(http, mesh[B].url, "secret.plans", "iso-3") == 403
    healed = time.monotonic()
    mesh.heal(B)
    await eventually(lambda: mesh[B].relay.gov_version == newer, 5)
    assert time.monotonic() - healed < scaled(5)
    await eventually(lambda: stored_version(stores[B]) == newer, 5)
    await eventually(lambda: mesh[B].relay.status.health()["governance"]["authority_reachable"], 5)
    assert await publish(http, mesh[B].url, "secret.plans", "iso-4") == 202


def mesh_peers(mesh: Mesh, region: str) -> tuple[str, ...]:
    """The peers ``region``'s relay had: through the proxies of its links."""
    return tuple(mesh.peer_url(peer, proxy.port) for (dialer, peer), proxy in mesh.proxies.items() if dialer == region)


async def test_a_copy_that_does_not_check_is_refused_and_a_fork_is_reported(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys
) -> None:
    from meshcore.governance import next_document, parse_content, to_json
    from router import frame as fr
    from router.authority import document_frame

    await mesh.start([A, B], env=HOME, redis_urls=region_stores([A, B]))
    version = (await http.put(f"{mesh[A].url}/v1/policies", json=POLICY)).json()["version"]
    await eventually(lambda: mesh[B].relay.gov_version == version, 5)
    authority = mesh[B].relay.authority
    sent: list[bytes] = []
    held = mesh[B].relay.governance.document
    assert held is not None
    # altered content under the old digest: refused, counted, nothing taken
    tampered = orjson.loads(to_json(held))
    tampered["version"] = held.version + 1
    tampered["policies"] = []
    frame = {"t": "GOV", "version": held.version + 1, "digest": held.digest, "doc": orjson.dumps(tampered).decode()}
    authority.on_document(A, frame, sent.append)
    assert mesh[B].relay.gov_version == version and not sent
    assert mesh[B].relay.metrics.get("mesh_refused_items_total", peer=A) >= 1
    # another document under the same version number: a fork, reported, not taken
    other = next_document(None, parse_content({"policies": []}), "mallory", held.changed_at)
    forked = next_document(other, parse_content(ONLY_TESTERS), "mallory", held.changed_at)
    forked = type(forked)(held.version, forked.digest, forked.author, forked.changed_at, forked.content)
    authority.on_document(A, fr.decode(document_frame(forked)), sent.append)
    assert mesh[B].relay.gov_version == version
    reasons: Any = mesh[B].relay.status.health()["reasons"]
    assert any("two relays order changes" in r for r in reasons)


async def test_a_region_whose_store_lost_its_copy_waits_for_the_authority_instead_of_falling_open(
    mesh: Mesh, http: httpx.AsyncClient, region_stores: RegionValkeys
) -> None:
    stores = region_stores([A, B])
    await mesh.start([A, B], env=HOME, redis_urls=stores, proxied=[(A, B), (B, A)])
    version = (await http.put(f"{mesh[A].url}/v1/policies", json=POLICY)).json()["version"]
    await eventually(lambda: stored_version(stores[B]) == version, 5)
    # B's store loses everything (no append-only file) and B's relay restarts while B is cut off
    mesh.isolate(B)
    port = mesh[B].server.port
    await mesh.stop_one(B)
    redis.Redis.from_url(stores[B]).flushall()
    await mesh.start_one(B, sock=bind(port=port), env=HOME, redis_url=stores[B], peers=mesh_peers(mesh, B))
    assert mesh[B].relay.gov_version == "none"
    # no document and no word from the authority: not "no policy", but "not yet"
    refused = await http.post(
        f"{mesh[B].url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event("secret.plans", "w-1"))
    )
    assert refused.status_code == 503 and "not known yet" in refused.json()["error"], refused.text
    health = mesh[B].relay.status.health()
    assert health["status"] == "degraded" and any("not known yet" in r for r in health["reasons"])
    mesh.heal(B)
    await eventually(lambda: mesh[B].relay.gov_version == version, 5)
    assert await publish(http, mesh[B].url, "secret.plans", "w-2") == 403
    assert await publish(http, mesh[B].url, "orders.created", "w-3") == 202
    await eventually(lambda: stored_version(stores[B]) == version, 5)
