"""The running ``meshscope up`` that ``meshscope chaos`` works on, and the probes it publishes there.

``Demo`` reads up.json (the relays' ports and process ids, each region's own store, the
tokens and the CA) and does what the scenarios need: inject a fault through a relay's
fault-injection endpoint, kill a relay or a region's Valkey, cut a region off (the relay's
``isolate`` fault, and the central services' gate to its store through faults.json), ask
the dashboard and the relays' admin API. ``Probe`` publishes numbered events and keeps what
the relay accepted; ``probe_group`` makes the durable group they go to, marked as a probe so
that it never pages.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
import websockets

from collector.sqlclient import MESHSCOPE_TOKEN_FILE, client_token, running_dashboard, via_dashboard
from meshscope.demofaults import FAULTS_FILE, write_faults


class ChaosError(Exception):
    """The running demo cannot be found or used; the message says why."""


@dataclass
class Demo:
    """A running ``meshscope up``, from its up.json."""

    data: Path
    state: dict[str, Any]
    token: str
    ssl: ssl.SSLContext | None

    @classmethod
    def find(cls, data_dir: str) -> Demo:
        data = Path(data_dir).resolve()
        try:
            state = json.loads((data / "up.json").read_text())
            token = (Path(state["tokens"]) / "chaos.token").read_text().strip()
        except (OSError, ValueError, KeyError) as exc:
            raise ChaosError(f"no running meshscope up in {data} (up.json or the chaos token: {exc})") from None
        try:
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError):
            raise ChaosError(f"the meshscope up of {data} is not running") from None
        context = ssl.create_default_context(cafile=state["ca"]) if state.get("ca") else None
        return cls(data, state, token, context)

    def refresh(self) -> None:
        self.state = json.loads((self.data / "up.json").read_text())

    @property
    def regions(self) -> list[str]:
        return list(self.state["relays"])

    def http(self, region: str) -> str:
        return f"{self.state['scheme']}://127.0.0.1:{self.state['relays'][region]['port']}"

    def ws(self, region: str) -> str:
        return self.http(region).replace("http", "ws", 1)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def redis(self, region: str) -> aioredis.Redis:
        """A client of ``region``'s own store (directly, not through the central services' gate)."""
        return aioredis.Redis.from_url(self.state["valkeys"][region]["url"], socket_timeout=5)

    def stores(self) -> list[aioredis.Redis]:
        """A client of every region's store, one per store (the caller closes them)."""
        urls = dict.fromkeys(str(self.state["valkeys"][r]["url"]) for r in self.regions)
        return [aioredis.Redis.from_url(url, socket_timeout=5) for url in urls]

    def faults(self, **changes: dict[str, float]) -> None:
        """Ask ``up`` (through faults.json) to cut regions off from the central services, or hold a store down."""
        write_faults(self.data / FAULTS_FILE, **changes)

    def kill_store(self, region: str) -> None:
        self.refresh()
        os.kill(int(self.state["valkeys"][region]["pid"]), signal.SIGKILL)

    async def isolate(self, region: str, seconds: float) -> float:
        """Cut ``region`` off from every other region and from the central services; when it heals (monotonic)."""
        request = urllib.request.Request(
            f"{self.http(region)}/v1/faults",
            data=json.dumps({"fault": "isolate", "seconds": seconds}).encode(),
            headers={**self.headers, "content-type": "application/json"},
            method="POST",
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        self.faults(isolated={region: time.time() + seconds})
        await asyncio.to_thread(send)
        return time.monotonic() + seconds

    def dashboard(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """``up``'s dashboard API, as the ops principal."""
        up = running_dashboard(str(self.data))
        if up is None:
            raise ChaosError("the dashboard of meshscope up is not running")
        token = client_token({MESHSCOPE_TOKEN_FILE: str(up.get("token_file") or "")})
        request = urllib.request.Request(
            str(up["url"]).rstrip("/") + path, headers={"authorization": f"Bearer {token}"}, method=method
        )
        context = ssl.create_default_context(cafile=up["ca"]) if up.get("ca") else None
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return json.loads(reply.read())

    def sql(self, query: str) -> list[list[Any]]:
        up = running_dashboard(str(self.data))
        if up is None:
            raise ChaosError("the dashboard of meshscope up is not running")
        token = client_token({MESHSCOPE_TOKEN_FILE: str(up.get("token_file") or "")})
        return via_dashboard(str(up["url"]), query, token, up.get("ca"))[1]

    def put(self, region: str, path: str, body: Any, token_file: str = "ops.token") -> dict[str, Any]:
        token = (Path(self.state["tokens"]) / token_file).read_text().strip()
        request = urllib.request.Request(
            f"{self.http(region)}{path}",
            data=json.dumps(body).encode(),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            method="PUT",
        )
        with urllib.request.urlopen(request, timeout=15, context=self.ssl) as reply:
            return dict(json.loads(reply.read()))

    def health(self, region: str) -> dict[str, Any]:
        try:
            return dict(self._get(f"{self.http(region)}/healthz"))
        except urllib.error.HTTPError as exc:  # 503: degraded, with its reasons
            return dict(json.loads(exc.read()))

    def kill9(self, region: str) -> None:
        self.refresh()
        os.killpg(int(self.state["relays"][region]["pid"]), signal.SIGKILL)

    async def delete_group(self, region: str, group: str) -> None:
        """Forget a probe's durable group (its entries and interest); a failure is only reported."""
        request = urllib.request.Request(
            f"{self.http(region)}/v1/groups/{group}", headers=self.headers, method="DELETE"
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        try:
            await asyncio.to_thread(send)
        except OSError as exc:  # urllib's errors are OSErrors
            print(f"meshscope chaos: could not delete the probe group {group} at {region}: {exc}", flush=True)

    async def fault(self, region: str, peer: str, fault: str, seconds: float = 0.0) -> None:
        body = json.dumps({"peer": peer, "fault": fault, "seconds": seconds}).encode()
        request = urllib.request.Request(
            f"{self.http(region)}/v1/faults",
            data=body,
            headers={**self.headers, "content-type": "application/json"},
            method="POST",
        )

        def send() -> None:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl):
                pass

        await asyncio.to_thread(send)

    async def healthy(self, region: str, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                health: dict[str, Any] = await asyncio.to_thread(self._get, f"{self.http(region)}/healthz")
                if health["status"] == "ok" and health["links_up"] == len(self.regions) - 1:
                    return health
            except (OSError, ValueError, KeyError):
                pass
            self.refresh()
            await asyncio.sleep(0.2)
        raise ChaosError(f"relay {region} did not come back healthy within {timeout_s:g} s")

    def _get(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=3, context=self.ssl) as reply:
            return json.loads(reply.read())


class Probe:
    """Numbered events from one region, retried until the relay acknowledges each frame."""

    def __init__(self, demo: Demo, origin: str, topic: str, run: str):
        self.demo = demo
        self.origin = origin
        self.topic = topic
        self.run = run
        self.accepted: set[str] = set()
        self.refused: collections.Counter[int] = collections.Counter()

    def events(self, start: int, n: int) -> list[dict[str, Any]]:
        return [
            {"specversion": "1.0", "id": f"{self.run}-{i}", "source": "/meshscope/chaos", "type": self.topic,
             "data": {"n": i, "amount": 1.0}}
            for i in range(start, start + n)
        ]  # fmt: skip

    async def publish(self, total: int, frame: int = 20, pause_s: float = 0.02, deadline_s: float = 120) -> None:
        deadline = time.monotonic() + deadline_s
        sent = 0
        while sent < total:
            if time.monotonic() > deadline:
                raise ChaosError(f"could not publish at {self.origin} for {deadline_s:g} s")
            try:
                async with websockets.connect(
                    f"{self.demo.ws(self.origin)}/v1/stream",
                    additional_headers=self.demo.headers,
                    ssl=self.demo.ssl,
                    open_timeout=5,
                ) as ws:
                    while sent < total:
                        batch = self.events(sent, min(frame, total - sent))
                        await ws.send(orjson.dumps(batch))
                        ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                        for err in ack.get("errors", []):
                            self.refused[int(err.get("status", 0))] += 1
                        self.accepted.update(ack["accepted"])
                        self.accepted.update(ack["duplicates"])  # accepted earlier, its ack lost
                        sent += len(batch)
                        await asyncio.sleep(pause_s)
            except (OSError, websockets.WebSocketException, TimeoutError) as exc:
                self.refused[503] += 1 if "1013" in str(exc) else 0
                await asyncio.sleep(0.3)  # the relay is restarting or asked us to retry: send the frame again


async def probe_group(demo: Demo, region: str, group: str, topic: str) -> None:
    """A durable probe group: made as a probe, so it never pages, however it is left."""
    url = f"{demo.ws(region)}/v1/subscribe?topic={topic}&group={group}&consumer=probe&probe=true"
    async with websockets.connect(url, additional_headers=demo.headers, ssl=demo.ssl, open_timeout=10):
        pass
