"""meshscope chaos's verdicts and its search for drop records, against a real Valkey (no running demo)."""

from __future__ import annotations

import time
from pathlib import Path

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
    ],
)
def test_a_loss_nobody_could_look_for_is_unknown_not_failed(outcome: Outcome, result: str) -> None:
    assert outcome.result == result
    assert result.split(":")[0] in table([outcome]).splitlines()[2]


def test_scenarios_are_a_table() -> None:
    assert list(SCENARIOS) == ["relay-kill", "valkey-restart", "black-hole", "link-flap", "partition"]
    assert SCENARIOS["partition"].regions == 3 and all(s.what for s in SCENARIOS.values())


async def test_every_drop_record_since_the_start_is_read_however_many_came_after(
    redis_sync: redis.Redis, redis_async: aioredis.Redis, tmp_path: Path
) -> None:
    started_ms = int(time.time() * 1000) - 1000
    redis_sync.xadd("meshscope:flows", pack([drop("p-1"), drop("p-2", "expired")]))  # type: ignore[arg-type]
    for _ in range(3_000):  # a busy demo: far more than the last 2,000 entries came after them
        redis_sync.xadd("meshscope:flows", pack(busy(3)))  # type: ignore[arg-type]
    found = await find_drops(redis_async, tmp_path, TOPIC, started_ms, {"p-1", "p-2", "p-3"}, 0)
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
    found = await find_drops(redis_async, tmp_path, TOPIC, started_ms, {"p-1"}, 0)
    assert found.named == {}
    assert found.unknown == "collector 13 min behind and the flow stream trimmed since the scenario began"
    assert orjson.loads(redis_sync.hget("meshscope:freshness", "collector:meshscope:flows") or b"{}")["lag_s"] == 780
