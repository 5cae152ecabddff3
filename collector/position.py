"""Where the collector stands in each stream it reads, measured and published every second.

For each stream, on Valkey's own clock (``TIME``, so a collector on another host
measures the same ages): the oldest record not yet in ClickHouse, which is the
oldest entry read and not acknowledged (``XPENDING``) or else the first entry
after the group's last delivered id (``XRANGE (last +``). Its age is the
stream's lag: how far the history in ClickHouse is behind the relays. A stream
with nothing waiting has lag 0.

This is the one measure of how far behind ClickHouse a stream is: the metric
``meshscope_collector_lag_seconds{stream}``, the collector's /healthz, and each
region's freshness on the dashboard and for the alert evaluator all come from it.
Each measure is published as a ``meshcore.freshness.LagReport``, with the
regions whose records the stream holds (``CollectorConfig.regions``: the region
of the store, or every region when one store holds them all), in the hash
``meshscope:freshness`` of the store it measured (field ``collector:<stream>``)
and in the collector's live message. A reader of that hash gets the reports on
its own clock (``reports``): their times are moved by the difference between
its clock and Valkey's, so ages compare across hosts.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.config import CollectorConfig
from collector.errors import StreamUnavailable
from meshcore.freshness import ALL, LagReport, StoreCheck, lag_from
from meshcore.server import client_name, is_cluster, node_time, redis_client

FRESHNESS_KEY = "meshscope:freshness"
"""Hash of lag reports: field ``collector:<stream>``, value a LagReport as JSON."""


@dataclass(frozen=True, slots=True)
class Position:
    """One stream's position for one consumer group, at Valkey's ``now_ms``."""

    now_ms: int
    oldest_ms: int | None
    """Timestamp of the oldest entry not yet acknowledged by the group (None: nothing waits)."""
    unread: int
    pending: int

    @property
    def lag_s(self) -> float:
        return 0.0 if self.oldest_ms is None else max(0.0, (self.now_ms - self.oldest_ms) / 1000)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(entry_id: Any) -> int:
    return int(_text(entry_id).split("-", 1)[0])


async def position(client: aioredis.Redis, stream: str, group: str) -> Position:
    """Where ``group`` stands in ``stream``; StreamUnavailable when Valkey does not answer."""
    try:
        async with client.pipeline(transaction=False) as pipe:
            if not is_cluster(client):
                pipe.time()
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
            replies = await pipe.execute(raise_on_error=False)
        # a cluster pipeline takes no keyless command: the time of the stream's own node, apart
        now, groups, pending = replies if len(replies) == 3 else [await node_time(client, stream), *replies]
        if isinstance(now, Exception):
            raise now
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        if isinstance(groups, Exception) or isinstance(pending, Exception):
            return Position(now_ms, None, 0, 0)  # no stream or no group yet: nothing waits
        info = next((g for g in groups if _text(g.get("name")) == group), None)
        if info is None:
            return Position(now_ms, None, 0, 0)
        last = _text(info.get("last-delivered-id") or "0-0")
        nxt: Any = await client.xrange(stream, min=f"({last}", max="+", count=1)
    except RedisError as exc:
        raise StreamUnavailable(f"cannot measure the position in {stream}: {exc}") from exc
    waiting = [_ms(pending["min"])] if pending and pending.get("min") else []
    if nxt:
        waiting.append(_ms(nxt[0][0]))
    lag = info.get("lag")
    unread = int(lag) if isinstance(lag, int) else (1 if nxt else 0)
    return Position(now_ms, min(waiting) if waiting else None, unread, int(pending.get("pending") or 0))


async def publish(client: aioredis.Redis, reports: list[LagReport]) -> None:
    """Write the reports to the freshness hash; StreamUnavailable when Valkey refuses."""
    if not reports:
        return
    try:
        await client.hset(FRESHNESS_KEY, mapping={f"collector:{r.stream}": orjson.dumps(r.to_json()) for r in reports})
    except RedisError as exc:
        raise StreamUnavailable(f"cannot publish the collector's position: {exc}") from exc


async def reports(client: aioredis.Redis) -> list[LagReport]:
    """Every collector report in the freshness hash, its time moved onto this host's clock (unreadable
    ones are skipped); StreamUnavailable when Valkey does not answer."""
    try:
        if is_cluster(client):
            now, raw = await node_time(client, FRESHNESS_KEY), await client.hgetall(FRESHNESS_KEY)
        else:
            async with client.pipeline(transaction=False) as pipe:
                pipe.time()
                pipe.hgetall(FRESHNESS_KEY)
                now, raw = await pipe.execute()
    except RedisError as exc:
        raise StreamUnavailable(f"cannot read {FRESHNESS_KEY}: {exc}") from exc
    shift_s = time.time() - (int(now[0]) + int(now[1]) / 1e6)
    out = []
    for key, value in raw.items():
        if not _text(key).startswith("collector:"):
            continue
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        report = lag_from(data) if isinstance(data, dict) else None
        if report is not None:
            out.append(replace(report, ts=report.ts + shift_s))
    return out


READ_TIMEOUT_S = 2.0
"""A store that does not answer within this long is unreachable for this read."""


class RegionPositions:
    """The collectors' reports in every region's store, for whoever judges every region (the alert evaluator).

    One client per distinct store of ``region_stores`` (the one of ``redis_url`` is the caller's);
    without ``region_stores``, that one store for every region. A store speaks only for the regions
    configured on it; one that does not answer is a ``StoreCheck`` naming it, never an exception.
    """

    def __init__(self, config: CollectorConfig, primary: aioredis.Redis, seen_from: str):
        self.seen_from = seen_from
        by_url: dict[str, list[str]] = {}
        for region, url in config.region_stores or (("", config.redis_url),):
            by_url.setdefault(url, []).append(region)
        self.stores: list[tuple[tuple[str, ...], aioredis.Redis, bool]] = []
        for url, regions in by_url.items():
            own = url != config.redis_url
            client = redis_client(url, client_name("collector", config.region)) if own else primary
            self.stores.append((tuple(r for r in regions if r), client, own))

    async def _read(self, regions: tuple[str, ...], client: aioredis.Redis) -> tuple[list[LagReport], StoreCheck]:
        name = f"Valkey of {', '.join(regions)}" if regions else "Valkey"
        try:
            found = await asyncio.wait_for(reports(client), READ_TIMEOUT_S)
        except (StreamUnavailable, OSError, TimeoutError) as exc:
            error = str(exc)[:300] or f"no answer within {READ_TIMEOUT_S:g} s"
            return [], StoreCheck(regions or (ALL,), error, self.seen_from, name)
        if regions:  # a store speaks for its own regions only
            found = [replace(r, regions=own) for r in found if (own := _own(r, regions))]
        return found, StoreCheck(regions or (ALL,), "", self.seen_from, name)

    async def read(self) -> tuple[list[LagReport], list[StoreCheck]]:
        """Every store's reports, and whether each answered."""
        got = await asyncio.gather(*(self._read(regions, client) for regions, client, _ in self.stores))
        return [r for found, _ in got for r in found], [check for _, check in got]

    async def close(self) -> None:
        for _, client, owned in self.stores:
            if owned:
                await client.aclose()


def _own(report: LagReport, regions: tuple[str, ...]) -> tuple[str, ...]:
    """The regions of ``report`` its store speaks for (every one of them when it claims every region)."""
    return regions if ALL in report.regions else tuple(r for r in report.regions if r in regions)
