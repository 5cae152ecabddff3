"""Every region's store, read by the dashboard: one connection per store, read every second.

``MESHSCOPE_REGION_STORES`` names each region's store; the dashboard keeps one client per
distinct URL (so the demo of old, every region on one URL, is one connection) and reads, from
each store, its relays' reports (``meshscope:relaystate``) and its collectors' positions
(``meshscope:freshness``, ``collector.position.reports``: on Valkey's clock, moved onto ours).
Without ``MESHSCOPE_REGION_STORES`` the one store of ``MESHSCOPE_REDIS_URL`` speaks for every
region that reports in it.

An I/O shell: what each store says becomes readings in ``dashboard.regionstale``, judged
by ``meshcore.freshness``. A store that stops answering keeps its last readings, which age,
and is named as the cause of its regions being unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.config import CollectorConfig
from collector.errors import StreamUnavailable
from collector.position import reports as read_reports
from dashboard import relaystate as rs
from dashboard.regionstale import StoreReading, readings
from meshcore.freshness import LagReport, Reading, StoreCheck
from meshcore.server import client_name, redis_client

log = logging.getLogger(__name__)

POLL_S = 1.0
READ_TIMEOUT_S = 2.0
"""A store that does not answer within this long is unreachable until it does."""


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
    reports: list[LagReport] = field(default_factory=list)

    def speaks_for(self, region: str) -> bool:
        return not self.regions or region in self.regions


class RegionStores:
    def __init__(self, config: CollectorConfig, primary: aioredis.Redis, clock: Callable[[], float] = time.time):
        pairs = config.region_stores or (("", config.redis_url),)
        by_url: dict[str, list[str]] = {}
        for region, url in pairs:
            by_url.setdefault(url, []).append(region)
        self.stores: list[RegionStore] = []
        for url, regions in by_url.items():
            own = url != config.redis_url
            client = redis_client(url, client_name("dashboard")) if own else primary
            self.stores.append(RegionStore(url, tuple(r for r in regions if r), client, own))
        self.clock = clock
        self.polled_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def clients(self) -> list[aioredis.Redis]:
        return [s.client for s in self.stores]

    async def _read(self, store: RegionStore) -> None:
        try:
            states: Any = await asyncio.wait_for(store.client.hgetall(rs.STATE_KEY), READ_TIMEOUT_S)
            positions = await asyncio.wait_for(read_reports(store.client), READ_TIMEOUT_S)
        except TimeoutError:
            self._failed(store, f"no answer within {READ_TIMEOUT_S:g} s")
            return
        except (RedisError, OSError, StreamUnavailable) as exc:
            self._failed(store, str(exc)[:300] or type(exc).__name__)
            return
        if store.error:
            log.info("a region store answers again", extra={"store": _safe(store.url)})
        store.raw_states = dict(states)
        store.reports = positions
        store.answered_at = self.clock()
        store.error = ""

    def _failed(self, store: RegionStore, error: str) -> None:
        if not store.error:
            log.warning("a region store does not answer", extra={"store": _safe(store.url), "error": error})
        store.error = error

    async def poll(self) -> None:
        """Read every store once, at the same time."""
        async with self._lock:
            await asyncio.gather(*(self._read(s) for s in self.stores))
            self.polled_at = self.clock()

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(POLL_S)

    async def ensure_polled(self) -> None:
        """Poll once when nothing was read yet (before the background reader's first round)."""
        if not self.polled_at:
            await self.poll()

    def states(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Each region's relay report, from the store that speaks for it (as ``relaystate.parse_states``)."""
        now = self.clock() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for store in self.stores:
            for region, state in rs.parse_states(store.raw_states, now).items():
                if store.speaks_for(region):
                    out[region] = state
        return dict(sorted(out.items()))

    def readings(self, now: float) -> tuple[list[Reading], list[StoreCheck], set[str]]:
        """Every store's readings (``regionstale.readings``), their checks, and the regions whose relays
        report mesh links (each is expected to have link samples)."""
        out: list[Reading] = []
        checks: list[StoreCheck] = []
        linked: set[str] = set()
        for store in self.stores:
            states = {r: s for r, s in rs.parse_states(store.raw_states, now).items() if store.speaks_for(r)}
            relays = {r: float(s["ts"]) for r, s in states.items() if s["ts"] > 0}
            found, check = readings(StoreReading(store.regions, store.error, relays, store.reports), now)
            out += found
            checks.append(check)
            linked |= {r for r, s in states.items() if s["links"] and r in relays}
        return out, checks, linked

    async def close(self) -> None:
        for store in self.stores:
            if store.owned:
                await store.client.aclose()


def _safe(url: str) -> str:
    """A store URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
