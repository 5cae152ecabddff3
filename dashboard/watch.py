"""The readings the dashboard's freshness is judged on, gathered from every region's store and the live feed.

An I/O shell around ``meshcore.freshness``: it only collects when each source of
each region last had news, and lets the pure module judge.

    flows   each region's flow history: its collectors' positions (``dashboard.regionstores``)
    relay   each region's relay reports (``meshscope:relaystate`` of its store, every 2 s)
    links   the newest link sample of each region's relays (the live feed, or what the caller read)
    feed    the last message of the collectors on the live channel

A store that cannot be read is a ``StoreCheck`` with its error: the pure module then
makes every source of the regions it holds unknown, and names it once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dashboard.regionstores import RegionStores
from meshcore.freshness import ALL, FEED, LINKS, Assessment, Reading, StoreCheck, age_text, assess


@dataclass
class FeedState:
    """What the live feed heard, kept by the hub as messages arrive and read by the watch."""

    edges_at: float = 0.0
    """When the collectors' last message arrived (0: never)."""
    links_at: dict[str, float] = field(default_factory=dict)
    """Region -> Unix seconds of the newest link sample of its relays."""
    lost: dict[int, tuple[float, str]] = field(default_factory=dict)
    """Store index -> (since when, why) while the subscription to that store's channels is down."""

    @property
    def lost_since(self) -> float:
        """When the first of the lost subscriptions was lost (0: every one is up)."""
        return min((since for since, _ in self.lost.values()), default=0.0)

    @property
    def lost_error(self) -> str:
        return "; ".join(dict.fromkeys(error for _, error in self.lost.values()))


class FreshnessWatch:
    """Gathers readings and judges them; ``current`` keeps the last judgement for a moment."""

    def __init__(self, stores: RegionStores, feed: FeedState, clock: Callable[[], float] = time.time):
        self.stores = stores
        self.feed = feed
        self.clock = clock
        self.latest: Assessment | None = None
        self._lock = asyncio.Lock()

    def readings(
        self, regions: Iterable[str], links: Mapping[str, float], now: float
    ) -> tuple[list[Reading], list[StoreCheck]]:
        """Every source of every region known to anyone, from the stores' last answers and what the feed heard."""
        found, checks, linked = self.stores.readings(now)
        seen_links = dict(self.feed.links_at)
        for region, ts in links.items():
            seen_links[region] = max(ts, seen_links.get(region, 0.0))
        out = list(found)
        named = {r.region for r in found} | set(regions) | set(seen_links)
        for region in sorted((linked | set(seen_links)) & (named - {ALL})):
            out.append(Reading(LINKS, region, seen_links.get(region), f"no link report from the relays of {region}"))
        feed = self.feed
        if feed.lost_since:
            cause = f"live channel lost {age_text(now - feed.lost_since)} ago: {feed.lost_error}"
        else:
            cause = "no message from the collectors on the live channel"
        out.append(Reading(FEED, ALL, feed.edges_at or None, cause))
        return out, checks

    async def assess(
        self,
        regions: Iterable[str] = (),
        links: Mapping[str, float] | None = None,
        now: float | None = None,
        extra: Iterable[Reading] = (),
    ) -> Assessment:
        """Judge every source now (or as at ``now``, for a window in the past); ``extra``: readings the
        caller made itself (a source only it read, such as group samples)."""
        await self.stores.ensure_polled()
        at = self.clock() if now is None else now
        found, checks = self.readings(regions, links or {}, at)
        return assess(found + list(extra), at, checks)

    async def current(self, max_age_s: float = 1.0) -> Assessment:
        """The last judgement if younger than ``max_age_s``, else a new one (one at a time)."""
        async with self._lock:
            latest = self.latest
            if latest is None or self.clock() - latest.checked_at > max_age_s:
                latest = self.latest = await self.assess()
            return latest
