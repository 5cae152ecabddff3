"""Where the collector stands in each stream it reads, measured and published every second.

For each stream, on Valkey's own clock (``TIME``, so a collector on another host
measures the same ages): the oldest record not yet in ClickHouse, which is the
oldest entry read and not acknowledged (``XPENDING``) or else the first entry
after the group's last delivered id (``XRANGE (last +``). Its age is the
stream's lag: how far the history in ClickHouse is behind the relays. A stream
with nothing waiting has lag 0.

Each measure is published as a ``meshcore.freshness.LagReport``, with the
regions whose records the stream holds (``MESHSCOPE_COLLECTOR_REGIONS``; every
region by default), in the hash ``meshscope:freshness`` (field
``collector:<stream>``) and in the collector's live message, so the dashboard
and the alert evaluator know how old what they show is, per region.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from collector.errors import StreamUnavailable
from meshcore.freshness import LagReport, lag_from

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
            pipe.time()
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
            now, groups, pending = await pipe.execute(raise_on_error=False)
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
    """Every collector report in the freshness hash (unreadable ones are skipped); StreamUnavailable."""
    try:
        raw: Any = await client.hgetall(FRESHNESS_KEY)
    except RedisError as exc:
        raise StreamUnavailable(f"cannot read {FRESHNESS_KEY}: {exc}") from exc
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
            out.append(report)
    return out
