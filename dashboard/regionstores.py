"""Every region's store, read by the dashboard: one connection per store, read every second.

``MESHSCOPE_REGION_STORES`` names each region's store; the dashboard keeps one client per
distinct URL (so the demo of old, every region on one URL, is one connection) and reads, from
each store, its relays' reports (``meshscope:relaystate``) and its flow stream's position
(``collector.stream.oldest_waiting_ms``). A store speaks only for the regions configured on it:
an entry in region Y's store claiming to be region X is ignored. Without
``MESHSCOPE_REGION_STORES`` the one store of ``MESHSCOPE_REDIS_URL`` speaks for every region
that reports in it.

A store that stops answering keeps its last readings, which age: its regions turn stale
(``dashboard.regionstale``) with the cause named, and the live feed says so within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.config import CollectorConfig
from collector.errors import StreamUnavailable
from collector.stream import oldest_waiting_ms
from dashboard import relaystate as rs
from dashboard.regionstale import StoreReading, freshness, regions_message
from meshcore.server import client_name, redis_client

log = logging.getLogger(__name__)

POLL_S = 1.0
READ_TIMEOUT_S = 2.0


@dataclass
class RegionStore:
    """One store and what was last read from it."""

    url: str
    regions: tuple[str, ...]
    """The regions it speaks for; empty: every region that reports in it (one store for all)."""
    client: aioredis.Redis
    owned: bool
    answered_at: float = 0.0
    error: str = ""
    raw_states: dict[Any, Any] = field(default_factory=dict)
    waiting_since: float | None = None
    collected: bool = False

    def speaks_for(self, region: str) -> bool:
        return not self.regions or region in self.regions


class RegionStores:
    def __init__(self, config: CollectorConfig, primary: aioredis.Redis):
        self.stream = config.stream
        self.group = config.group
        pairs = config.region_stores or (("", config.redis_url),)
        by_url: dict[str, list[str]] = {}
        for region, url in pairs:
            by_url.setdefault(url, []).append(region)
        self.stores: list[RegionStore] = []
        for url, regions in by_url.items():
            own = url != config.redis_url
            client = redis_client(url, client_name("dashboard")) if own else primary
            self.stores.append(RegionStore(url, tuple(r for r in regions if r), client, own))
        self.on_poll: Callable[[str], None] | None = None
        """Called with the encoded ``regions`` live message after each poll."""

    @property
    def clients(self) -> list[aioredis.Redis]:
        return [s.client for s in self.stores]

    async def _read(self, store: RegionStore) -> None:
        try:
            states: Any = await asyncio.wait_for(store.client.hgetall(rs.STATE_KEY), READ_TIMEOUT_S)
            try:
                oldest = await asyncio.wait_for(
                    oldest_waiting_ms(store.client, self.stream, self.group), READ_TIMEOUT_S
                )
                collected = True
            except LookupError:
                oldest, collected = None, False
        except (RedisError, OSError, StreamUnavailable, TimeoutError) as exc:
            if not store.error:
                log.warning("a region store does not answer", extra={"store": _safe(store.url), "error": str(exc)})
            store.error = str(exc)[:300] or type(exc).__name__
            return
        store.raw_states = dict(states)
        store.waiting_since = None if oldest is None else oldest / 1000
        store.collected = collected
        store.answered_at = time.time()
        store.error = ""

    async def poll(self) -> None:
        await asyncio.gather(*(self._read(s) for s in self.stores))

    async def run(self) -> None:
        while True:
            await self.poll()
            if self.on_poll is not None:
                self.on_poll(orjson.dumps(regions_message(self.freshness(), time.time())).decode())
            await asyncio.sleep(POLL_S)

    def states(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Each region's relay report, from the store that speaks for it (as ``relaystate.parse_states``)."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for store in self.stores:
            for region, state in rs.parse_states(store.raw_states, now).items():
                if store.speaks_for(region):
                    out[region] = state
        return dict(sorted(out.items()))

    def freshness(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Each region's freshness (``regionstale.freshness``), for every region a store speaks for."""
        now = time.time() if now is None else now
        states = self.states(now)
        out: dict[str, dict[str, Any]] = {}
        for store in self.stores:
            regions = store.regions or tuple(r for r in states if store.speaks_for(r))
            for region in regions:
                state = states.get(region)
                reading = StoreReading(
                    store.answered_at,
                    store.error,
                    state["ts"] if state is not None else None,
                    store.waiting_since,
                    store.collected,
                )
                out[region] = freshness(reading, now)
        return dict(sorted(out.items()))

    def problems(self) -> list[str]:
        out = []
        for store in self.stores:
            if store.error:
                regions = ", ".join(store.regions) or "every region"
                out.append(f"region store {_safe(store.url)} ({regions}): {store.error}")
        return out

    async def close(self) -> None:
        for store in self.stores:
            if store.owned:
                await store.client.aclose()


def _safe(url: str) -> str:
    """A store URL without its password, for logs and /healthz."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
