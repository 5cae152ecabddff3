"""Traffic for a demo mesh: producers and subscribers in several regions, speaking the relay's public API.

Each region publishes its share of ``rate_per_s`` over ``WS /v1/stream`` in
batches ten times a second, over a fixed set of topics; a small share of events
is malformed on purpose (they are refused with ``schema_rejected``), and one
topic has no subscriber anywhere (``no_route``). Each region subscribes to a
few patterns, and one region keeps a durable group that acks what it reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from dataclasses import dataclass

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
    relays: dict[str, str]  # region -> ws://host:port
    rate_per_s: float = 200.0
    invalid_ratio: float = 0.005
    seed: int | None = None


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
        self._seq = itertools.count()

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
            del ev["source"]  # refused by the relay: schema_rejected
        return ev

    async def produce(self, region: str, url: str) -> None:
        share = self.config.rate_per_s / max(1, len(self.config.relays))
        carry = 0.0
        while True:
            try:
                async with websockets.connect(f"{url}/v1/stream", max_size=None) as ws:
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
            self.rejected += len(orjson.loads(raw).get("errors", []))

    async def subscribe(self, url: str, patterns: list[str], group: str | None = None) -> None:
        query = "&".join(f"topic={p}" for p in patterns)
        if group:
            query += f"&group={group}&consumer=sim"
        while True:
            try:
                async with websockets.connect(f"{url}/v1/subscribe?{query}", max_size=None) as ws:
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
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
