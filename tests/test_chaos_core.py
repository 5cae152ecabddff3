"""meshscope chaos's verdicts and its search for drop records, against a real Valkey (no running demo)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from collector.position import publish
from meshcore.flowrecord import FlowRecord, pack
from meshcore.freshness import LagReport
from meshscope.chaos import SCENARIOS, Outcome, table
from meshscope.chaosrecords import find_drops

TOPIC = "chaos.relaykill.c1"


def drop(event_id: str, status: str = "delivery_failed") -> FlowRecord:
    return FlowRecord(time.time_ns() // 1000, event_id, "t" * 32, "s" * 16, "p" * 16, TOPIC, "drop", "a:x", "b:y", "r",
                      0.0, 0.0, status, 10, 1, 1)  # fmt: skip


def busy(n: int) -> list[FlowRecord]:
    return [drop(f"other-{i}")._replace(kind="deliver", status="ok", topic="orders.x") for i in range(n)]


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        (Outcome("x", 10, 10), "ok"),
        (Outcome("x", 10, 8, 0, 2, 2), "ok"),  # lost, each named by a drop record
        (Outcome("x", 10, 8, 0, 2, 1), "FAILED"),
        (Outcome("x", 10, 10, 1), "FAILED"),  # twice
        (Outcome("x", 10, 8, 0, 2, 1, unknown="collector 13 min behind"), "unknown: collector 13 min behind"),
        (Outcome("x", 10, 10, 1, unknown="collector 13 min behind"), "FAILED"),  # a duplicate is known
        (Outcome("x", 10, 10, problems=["the map did not show b stale within 10 s"]), "FAILED"),
        (Outcome("x", 10, 8, 0, 2, 1, unknown="collector 13 min behind", problems=["publishes refused"]), "FAILED"),
    ],
)
def test_a_loss_nobody_could_look_for_is_unknown_not_failed(outcome: Outcome, result: str) -> None:
    assert outcome.result == result
    assert result.split(":")[0] in table([outcome]).splitlines()[2]


def test_scenarios_are_a_table() -> None:
    assert list(SCENARIOS) == ["relay-kill", "valkey-restart", "black-hole", "link-flap", "partition",
                               "region-valkey-kill", "region-isolation", "governance-isolated"]  # fmt: skip
    assert SCENARIOS["partition"].regions == 3 and all(s.what for s in SCENARIOS.values())
    assert {n for n, s in SCENARIOS.items() if s.own_probes} == {
        "region-valkey-kill",
        "region-isolation",
        "governance-isolated",
    }


def test_a_scenario_of_several_probes_adds_their_counts_and_keeps_what_could_not_be_established() -> None:
    whole = Outcome("region-isolation", notes=["b cut off for 60 s"])
    whole.add(Outcome("in", 10, 10))
    retried = ["publisher told to retry 3x 503"]
    whole.add(Outcome("out", 10, 9, 0, 1, 0, notes=retried, unknown="collector 2 min behind"))
    assert (whole.published, whole.delivered, whole.lost, whole.explained) == (20, 19, 1, 0)
    assert whole.result == "unknown: collector 2 min behind" and "3x 503" in table([whole])


async def test_every_drop_record_since_the_start_is_read_however_many_came_after(
    redis_sync: redis.Redis, redis_async: aioredis.Redis, tmp_path: Path
) -> None:
    started_ms = int(time.time() * 1000) - 1000
    redis_sync.xadd("meshscope:flows", pack([drop("p-1"), drop("p-2", "expired")]))  # type: ignore[arg-type]
    for _ in range(3_000):  # a busy demo: far more than the last 2,000 entries came after them
        redis_sync.xadd("meshscope:flows", pack(busy(3)))  # type: ignore[arg-type]
    found = await find_drops([redis_async], tmp_path, TOPIC, started_ms, {"p-1", "p-2", "p-3"}, 0)
    assert found.named == {"p-1": "delivery_failed", "p-2": "expired"}
    assert found.unknown == ""  # the stream holds everything since the start: p-3 has no drop record at all


async def test_records_out_of_reach_make_the_answer_unknown(
    redis_sync: redis.Redis, redis_async: aioredis.Redis, tmp_path: Path
) -> None:
    started_ms = int(time.time() * 1000) - 1000
    redis_sync.xadd("meshscope:flows", pack([drop("p-1")]))  # type: ignore[arg-type]
    for _ in range(3):
        redis_sync.xadd("meshscope:flows", pack(busy(1)))  # type: ignore[arg-type]
    redis_sync.xtrim("meshscope:flows", maxlen=1, approximate=False)  # its drop record trimmed, not collected
    await publish(redis_async, [LagReport("meshscope:flows", ("*",), time.time(), 780.0)])
    found = await find_drops([redis_async], tmp_path, TOPIC, started_ms, {"p-1"}, 0)
    assert found.named == {}
    assert found.unknown == "collector 13 min behind and the flow stream trimmed since the scenario began"
    assert orjson.loads(redis_sync.hget("meshscope:freshness", "collector:meshscope:flows") or b"{}")["lag_s"] == 780


async def test_a_drop_is_found_in_the_store_of_the_region_where_it_happened_and_a_store_gone_is_unknown(
    region_stores: Any, tmp_path: Path
) -> None:
    urls = region_stores(["aws:a", "gcp:b"])
    started_ms = int(time.time() * 1000) - 1000
    with redis.Redis.from_url(urls["gcp:b"]) as b:
        b.xadd("meshscope:flows", pack([drop("p-1", "expired")]))  # type: ignore[arg-type]
    clients = [aioredis.Redis.from_url(url) for url in urls.values()]
    try:
        found = await find_drops(clients, tmp_path, TOPIC, started_ms, {"p-1", "p-2"}, 0)
        assert found.named == {"p-1": "expired"} and found.unknown == ""
        region_stores.servers["aws:a"].stop()
        gone = await find_drops(clients, tmp_path, TOPIC, started_ms, {"p-1", "p-2"}, 0)
        assert gone.named == {"p-1": "expired"}
        assert gone.unknown.startswith("the flow stream of 1 store(s) cannot be read")
    finally:
        for client in clients:
            await client.aclose()
