"""A worker reads whatever is in its region stream without falling over (``router.siblings``).

The region stream is written by the region's own workers, yet an entry can be
damaged or written by another version; the reader skips what it cannot read,
logs it, and goes on. Its worker is real (a Relay over a real Valkey), not started.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import RelayConfig
from router.delivery import Arrival
from router.relay import Relay
from router.siblings import ROW_FIELDS, worker_names

A = "aws:us-east-1"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
rows = st.lists(st.lists(json_values, min_size=ROW_FIELDS, max_size=ROW_FIELDS) | json_values, max_size=4)
fields = st.fixed_dictionaries(
    {
        b"w": st.sampled_from([b"relay-x-w1", b"relay-x-w0", b"", b"\xff"]),
        b"k": st.sampled_from([b"e", b"i", b"g", b"l", b"?"]),
        b"d": st.one_of(rows.map(orjson.dumps), json_values.map(orjson.dumps), st.binary(max_size=64)),
    }
)


def make_worker(redis_url: str, index: int) -> Relay:
    env = {"MESHSCOPE_REGION": A, "REDIS_URL": redis_url, "MESHSCOPE_ALLOW_ANONYMOUS": "true"}
    config = RelayConfig.from_env(env, relay_name=f"relay-x-w{index}", workers=2, worker=index)
    return Relay(config, aioredis.Redis.from_url(redis_url))


@pytest.fixture(params=[0, 1], ids=["worker 0", "worker 1"])
def any_worker(redis_url: str, request: pytest.FixtureRequest) -> Relay:
    return make_worker(redis_url, request.param)


@pytest.fixture
def worker(redis_url: str) -> Relay:
    return make_worker(redis_url, 0)


def test_worker_names_follow_the_parents_name() -> None:
    assert worker_names("relay-a-w2", 2, 3) == ["relay-a-w0", "relay-a-w1", "relay-a-w2"]
    assert worker_names("edge-w1-w1", 1, 2) == ["edge-w1-w0", "edge-w1-w1"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(fields, max_size=5))
def test_any_entry_of_the_region_stream_is_read_or_skipped(
    any_worker: Relay, entries: list[dict[bytes, bytes]]
) -> None:
    async def read() -> list[tuple[Arrival, bool]]:
        routes: list[tuple[Arrival, bool]] = []
        for entry in entries:
            any_worker.siblings._entry(entry, True, routes)
        return routes

    routes = asyncio.run(read())
    assert all(isinstance(a, Arrival) for a, _ in routes)


def test_a_sound_event_of_a_sibling_is_routed_by_worker_0(worker: Relay) -> None:
    event = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/t",
        "type": "orders.created",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    row: list[Any] = ["orders.created", "b7ad6b7169203331", "p", 1, 2, A, 1, 0, "", True, False, event]
    routes: list[tuple[Arrival, bool]] = []
    worker.siblings._entry({b"w": b"relay-x-w1", b"k": b"e", b"d": orjson.dumps([row])}, True, routes)
    assert [(a.event.id, a.principal, local) for a, local in routes] == [("e-1", "p", False)]
    row[9] = False  # not for other regions: nothing to route
    routes.clear()
    worker.siblings._entry({b"w": b"relay-x-w1", b"k": b"e", b"d": orjson.dumps([row])}, True, routes)
    assert routes == []
