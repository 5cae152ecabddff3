"""The timestamps the dashboard's freshness is judged on, gathered from Valkey and the live feed.

An I/O shell around ``meshcore.freshness``: it only collects when each source of
each region last had news, and lets the pure module judge.

    flows   the collectors' positions (``meshscope:freshness``, and every live message)
    links   the newest link sample of each region's relays (the live feed, or what the caller read)
    relay   each relay's state report (``meshscope:relaystate``, every 2 s)
    feed    the last message of the collectors on the live channel

A store that cannot be read is a ``StoreCheck`` with its error: the pure module then
makes every source of the regions it holds unknown, and names it once. Today one
Valkey holds every region (``ALL``); the store of each region is a mapping the
caller passes, so one store per region needs no change here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.errors import StreamUnavailable
from collector.position import reports as read_reports
from dashboard.livemessage import json_object, number_of
from meshcore.freshness import (
    ALL,
    FEED,
    LINKS,
    RELAY,
    Assessment,
    LagReport,
    Reading,
    StoreCheck,
    age_text,
    assess,
    flows_reading,
)

RELAYSTATE_KEY = "meshscope:relaystate"
READ_TIMEOUT_S = 2.0
"""A store that does not answer within this long is unreachable for this judgement."""
FORGET_S = 3600.0
"""A relay whose last report is older than this is gone (a region taken out), not stale."""


@dataclass
class FeedState:
    """What the live feed heard, kept by the hub as messages arrive and read by the watch."""

    edges_at: float = 0.0
    """When the collectors' last message arrived (0: never)."""
    links_at: dict[str, float] = field(default_factory=dict)
    """Region -> Unix seconds of the newest link sample of its relays."""
    reports: dict[str, LagReport] = field(default_factory=dict)
    """Stream -> the newest position report that came with a live message."""
    lost_since: float = 0.0
    """When the subscription was lost (0: subscribed)."""
    lost_error: str = ""

    def take_reports(self, reports: Iterable[LagReport]) -> None:
        for report in reports:
            known = self.reports.get(report.stream)
            if known is None or report.ts >= known.ts:
                self.reports[report.stream] = report


@dataclass(frozen=True)
class Gathered:
    """One read of the stores: relay report times per region, position reports, and what failed."""

    relays: dict[str, float]
    reports: list[LagReport]
    store: StoreCheck


class FreshnessWatch:
    """Gathers readings and judges them; ``current`` keeps the last judgement for a moment."""

    def __init__(
        self,
        redis: aioredis.Redis,
        feed: FeedState,
        store_regions: tuple[str, ...] = (ALL,),
        clock: Callable[[], float] = time.time,
    ):
        self.redis = redis
        self.feed = feed
        self.store_regions = store_regions
        self.clock = clock
        self.latest: Assessment | None = None
        self._lock = asyncio.Lock()

    async def gather(self) -> Gathered:
        """Read the relays' and collectors' reports; a store that fails is named, never raised."""
        try:
            raw: Any = await asyncio.wait_for(self.redis.hgetall(RELAYSTATE_KEY), READ_TIMEOUT_S)
            reports = await asyncio.wait_for(read_reports(self.redis), READ_TIMEOUT_S)
        except TimeoutError:
            return Gathered({}, [], StoreCheck(self.store_regions, f"no answer within {READ_TIMEOUT_S:g} s"))
        except (RedisError, OSError, StreamUnavailable) as exc:
            return Gathered({}, [], StoreCheck(self.store_regions, _error(exc)))
        relays = {}
        for key, value in raw.items():
            region = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
            data = json_object(value)
            ts = number_of(data.get("ts")) if data is not None else None
            if ts is not None and self.clock() - ts / 1e6 < FORGET_S:
                relays[region[:128]] = ts / 1e6
        return Gathered(relays, reports, StoreCheck(self.store_regions))

    def readings(self, got: Gathered, regions: Iterable[str], links: Mapping[str, float], now: float) -> list[Reading]:
        """Every source of every region known to anyone, from what was gathered and heard."""
        feed = self.feed
        merged = dict(feed.reports)
        for report in got.reports:
            if report.stream not in merged or report.ts > merged[report.stream].ts:
                merged[report.stream] = report
        reports = list(merged.values())
        seen_links = {**feed.links_at}
        for region, ts in links.items():
            seen_links[region] = max(ts, seen_links.get(region, 0.0))
        named = set(regions) | set(got.relays) | set(seen_links)
        named |= {r for report in reports for r in report.regions if r != ALL}
        named.discard(ALL)
        out: list[Reading] = []
        if named and any(ALL in report.regions for report in reports):
            out.append(flows_reading(reports, ALL, now))  # what holds for a region nobody named yet
        for region in sorted(named) or [ALL]:
            out.append(flows_reading(reports, region, now))
            if region == ALL:
                continue
            relay = got.relays.get(region)
            out.append(Reading(RELAY, region, relay, f"no report from the relay of {region}"))
            link = seen_links.get(region)
            out.append(Reading(LINKS, region, link, f"no link report from the relays of {region}"))
        if feed.lost_since:
            cause = f"live channel lost {age_text(now - feed.lost_since)} ago: {feed.lost_error}"
        else:
            cause = "no message from the collectors on the live channel"
        out.append(Reading(FEED, ALL, feed.edges_at or None, cause))
        return out

    async def assess(
        self,
        regions: Iterable[str] = (),
        links: Mapping[str, float] | None = None,
        now: float | None = None,
        extra: Iterable[Reading] = (),
    ) -> Assessment:
        """Judge every source now (or as at ``now``, for a window in the past); ``extra``: readings the
        caller made itself (a source only it read, such as group samples)."""
        got = await self.gather()
        at = self.clock() if now is None else now
        readings = self.readings(got, regions, links or {}, at) + list(extra)
        return assess(readings, at, [got.store])

    async def current(self, max_age_s: float = 1.0) -> Assessment:
        """The last judgement if younger than ``max_age_s``, else a new one (one at a time)."""
        async with self._lock:
            latest = self.latest
            if latest is None or self.clock() - latest.checked_at > max_age_s:
                latest = self.latest = await self.assess()
            return latest


def _error(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:300]
