"""Traffic for a demo mesh: producers and subscribers in several regions, speaking the relay's public API.

Each region publishes its share of ``rate_per_s`` over ``WS /v1/stream`` in
batches ten times a second, over a fixed set of topics; a small share of events
is malformed on purpose (they are refused as ``malformed``), and one topic has
no subscriber anywhere (``no_route``). Each region subscribes to a few
patterns, and one region keeps a durable group that acks what it reads.

With ``bad_token``, a second producer (a "legacy shop") in the first region
keeps sending what governance refuses: orders whose data breaks the orders
schema (422, ``schema_rejected``) and payments it may not publish (403,
``policy_denied``), so the governance view has something to show.

Every connection authenticates with the simulator's bearer token, over TLS
when the relays serve it (``ssl_context`` trusts their CA).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

log = logging.getLogger(__name__)

TOPICS = (
    "orders.created",
    "orders.paid",
    "orders.cancelled",
    "payments.authorized",
    "payments.settled",
    "inventory.reserved",
    "inventory.restocked",
    "shipping.dispatched",
    "shipping.delivered",
    "users.signup",
    "users.login",
    "audit.log",
)
PATTERNS = ("orders.>", "payments.*", "inventory.>", "shipping.*", "users.>", "orders.paid", "payments.settled")
WEIGHTS = (8, 5, 1, 4, 4, 2, 2, 3, 3, 2, 6, 1)


@dataclass(frozen=True)
class SimulatorConfig:
    relays: dict[str, str]  # region -> ws(s)://host:port
    rate_per_s: float = 200.0
    invalid_ratio: float = 0.005
    seed: int | None = None
    token: str | None = None
    ssl_context: ssl.SSLContext | None = None
    bad_token: str | None = None  # a second producer whose events governance refuses
    bad_interval_s: float = 2.0


def subscriptions(regions: list[str]) -> dict[str, list[str]]:
    """Two or three patterns per region, rotating so every pattern is held somewhere."""
    out = {}
    for i, region in enumerate(regions):
        out[region] = [PATTERNS[(i * 2 + k) % len(PATTERNS)] for k in range(2 + i % 2)]
    return out


class Simulator:
    def __init__(self, config: SimulatorConfig):
        self.config = config
        self.rng = random.Random(config.seed)
        self.sent = 0
        self.received = 0
        self.rejected = 0
        self.refused_by_governance = 0
        self._seq = itertools.count()

    def _connect(self, url: str, token: str | None = None) -> Any:
        token = token or self.config.token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        ssl_context = self.config.ssl_context if url.startswith("wss://") else None
        return websockets.connect(url, max_size=None, additional_headers=headers, ssl=ssl_context)

    def event(self, region: str) -> dict[str, object]:
        topic = self.rng.choices(TOPICS, WEIGHTS)[0]
        n = next(self._seq)
        ev: dict[str, object] = {
            "specversion": "1.0",
            "id": f"{uuid.uuid4().hex[:16]}-{n}",
            "source": f"/sim/{region}",
            "type": topic,
            "datacontenttype": "application/json",
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {"n": n, "amount": round(self.rng.uniform(1, 500), 2)},
        }
        if self.rng.random() < self.config.invalid_ratio:
            del ev["source"]  # refused by the relay as malformed (400)
        return ev

    async def produce(self, region: str, url: str) -> None:
        share = self.config.rate_per_s / max(1, len(self.config.relays))
        carry = 0.0
        while True:
            try:
                async with self._connect(f"{url}/v1/stream") as ws:
                    acks = asyncio.create_task(self._count_acks(ws))
                    try:
                        while True:
                            started = time.monotonic()
                            carry += share / 10
                            n = int(carry)
                            carry -= n
                            if n:
                                await ws.send(orjson.dumps([self.event(region) for _ in range(n)]))
                                self.sent += n
                            await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - started)))
                    finally:
                        acks.cancel()
            except (OSError, websockets.WebSocketException) as exc:
                log.info("producer reconnecting", extra={"region": region, "error": repr(exc)})
                await asyncio.sleep(1.0)

    async def _count_acks(self, ws: ClientConnection) -> None:
        async for raw in ws:
            errors = orjson.loads(raw).get("errors", [])
            self.rejected += len(errors)
            self.refused_by_governance += sum(1 for e in errors if e.get("status") in (403, 422))

    async def bad_producer(self, region: str, url: str, token: str) -> None:
        """Orders that break their schema and payments this principal may not publish, now and then."""
        while True:
            try:
                async with self._connect(f"{url}/v1/stream", token) as ws:
                    acks = asyncio.create_task(self._count_acks(ws))
                    try:
                        while True:
                            n = next(self._seq)
                            bad_order = self.event(region) | {
                                "type": "orders.created",
                                "source": "/legacy-shop",
                                "data": {"n": str(n), "amount": "twelve euros"},
                            }
                            payment = self.event(region) | {"type": "payments.authorized", "source": "/legacy-shop"}
                            await ws.send(orjson.dumps([bad_order, payment]))
                            await asyncio.sleep(self.config.bad_interval_s)
                    finally:
                        acks.cancel()
            except (OSError, websockets.WebSocketException) as exc:
                log.info("bad producer reconnecting", extra={"region": region, "error": repr(exc)})
                await asyncio.sleep(1.0)

    async def subscribe(self, url: str, patterns: list[str], group: str | None = None) -> None:
        query = "&".join(f"topic={p}" for p in patterns)
        if group:
            query += f"&group={group}&consumer=sim"
        while True:
            try:
                async with self._connect(f"{url}/v1/subscribe?{query}") as ws:
                    async for raw in ws:
                        self.received += 1
                        if group:
                            await ws.send(orjson.dumps({"ack": [orjson.loads(raw)["ack"]]}))
            except (OSError, websockets.WebSocketException) as exc:
                log.info("subscriber reconnecting", extra={"error": repr(exc)})
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        regions = list(self.config.relays)
        tasks = []
        for region, patterns in subscriptions(regions).items():
            tasks.append(asyncio.create_task(self.subscribe(self.config.relays[region], patterns)))
        first = regions[0]
        tasks.append(asyncio.create_task(self.subscribe(self.config.relays[first], ["payments.>"], group="billing")))
        await asyncio.sleep(1.0)  # let interest spread before the first publish
        for region, url in self.config.relays.items():
            tasks.append(asyncio.create_task(self.produce(region, url)))
        if self.config.bad_token:
            tasks.append(
                asyncio.create_task(self.bad_producer(first, self.config.relays[first], self.config.bad_token))
            )
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
