"""Link and group samples and region registrations from Redis into ClickHouse.

Relays write a link sample batch to the ``meshscope:links`` stream every second,
a durable group sample batch to ``meshscope:groups:lag`` every few seconds, and
register themselves in the ``meshscope:regions`` hash; this copies them into the
``links``, ``group_lag`` and ``regions`` tables through consumer groups of its
own, acking after the insert (with a deduplication token from the entry ids).
After a start or an outage, the entries it had read and not acknowledged are read
again first, so a sync cut short by Redis leaves nothing pending for good.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from redis.exceptions import RedisError, ResponseError

from collector.batch import batch_token
from collector.config import CollectorConfig
from collector.errors import StreamUnavailable
from meshcore.server import is_cluster

REGIONS_KEY = "meshscope:regions"
LINK_COLUMNS = [
    "ts",
    "relay",
    "src_region",
    "dst_region",
    "state",
    "rtt_ms",
    "queue_depth",
    "reconnects",
    "security",
    "via",
    "peer_gov",
    "gov",
    "clock_offset_ms",
    "peer_skew_s",
]
REGION_COLUMNS = ["id", "provider", "lat", "lon", "city", "relay", "first_seen", "last_seen"]
GROUPS_STREAM = "meshscope:groups:lag"
GROUP_COLUMNS = [
    "ts",
    "region",
    "group",
    "owner",
    "patterns",
    "added",
    "acked",
    "pending",
    "lag",
    "oldest_age_s",
    "consumers",
    "probe",
]


def _samples(entries: list[tuple[str, dict[Any, Any]]], lengths: tuple[int, ...]) -> Iterator[list[Any]]:
    """The samples of each entry that are lists of one of ``lengths``; the rest are skipped (advisory data)."""
    for _, fields in entries:
        try:
            samples = orjson.loads(fields.get(b"r", b"[]"))
        except orjson.JSONDecodeError:
            continue
        for s in samples if isinstance(samples, list) else []:
            if isinstance(s, list) and len(s) in lengths:
                yield s


def group_rows(entries: list[tuple[str, dict[Any, Any]]]) -> list[list[Any]]:
    """Rows of valid group samples; malformed samples are skipped (they are advisory)."""
    rows = []
    for s in _samples(entries, (11, 12)):
        try:
            ts, region, group, owner, patterns, added, acked, pending, lag, oldest, consumers = s[:11]
            probe = s[11] is True if len(s) == 12 else False
            rows.append(
                [
                    int(ts), str(region)[:128], str(group)[:64], str(owner)[:128],
                    [str(p)[:255] for p in patterns][:100], int(added), int(acked), int(pending), int(lag),
                    float(oldest), int(consumers), int(probe),
                ]
            )  # fmt: skip
        except (TypeError, ValueError):
            continue
    return rows


WithClickHouse = Callable[[str, Callable[[Client], Any]], Awaitable[Any]]


def link_rows(entries: list[tuple[str, dict[Any, Any]]]) -> list[list[Any]]:
    """Rows of valid link samples; malformed samples are skipped (they are advisory)."""
    rows = []
    for s in _samples(entries, (8, 12, 14)):
        try:
            ts, relay, src, dst, state, rtt, depth, reconnects = s[:8]
            security, via, peer_gov, gov = s[8:12] if len(s) >= 12 else ["", "", "", ""]
            offset, skew = s[12:14] if len(s) == 14 else [0.0, 0.0]
            rows.append(
                [
                    int(ts), str(relay)[:128], str(src)[:128], str(dst)[:128], str(state)[:16], float(rtt),
                    int(depth), int(reconnects), str(security)[:8], str(via)[:128], str(peer_gov)[:128],
                    str(gov)[:128], float(offset or 0.0), float(skew or 0.0),
                ]
            )  # fmt: skip
        except (TypeError, ValueError):
            continue
    return rows


class LinkSync:
    def __init__(self, config: CollectorConfig, client: aioredis.Redis):
        self.config = config
        self.redis = client
        self.group = f"{config.group}-links"
        self._own_first = True
        """Read this consumer's unacknowledged entries before new ones (at start, after an outage)."""

    async def ensure_group(self) -> None:
        self._own_first = True
        for stream in (self.config.links_stream, GROUPS_STREAM):
            try:
                await self.redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise StreamUnavailable(f"cannot create consumer group on {stream}: {exc}") from exc
            except RedisError as exc:
                raise StreamUnavailable(f"cannot create consumer group on {stream}: {exc}") from exc

    async def sync(self, with_clickhouse: WithClickHouse) -> None:
        db = self.config.database
        since = "0" if self._own_first else ">"
        try:
            streams: dict[Any, Any] = {self.config.links_stream: since, GROUPS_STREAM: since}
            reply: Any = []
            if is_cluster(self.redis):  # one read names keys of one slot: a read per stream
                for stream, at in streams.items():
                    reply += (
                        await self.redis.xreadgroup(self.group, self.config.consumer, {stream: at}, count=1000) or []
                    )
            else:
                reply = await self.redis.xreadgroup(self.group, self.config.consumer, streams, count=1000)
            regions: Any = await self.redis.hgetall(REGIONS_KEY)
        except RedisError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the consumer group (restarted without data): make it again
                await self.ensure_group()
                return
            raise StreamUnavailable(f"cannot read link samples: {exc}") from exc
        by_stream = {
            (name.decode() if isinstance(name, bytes) else name): [(e.decode(), f) for e, f in raw]
            for name, raw in reply or []
        }
        entries = [(e, f) for e, f in by_stream.get(self.config.links_stream, []) if f]
        group_entries = [(e, f) for e, f in by_stream.get(GROUPS_STREAM, []) if f]
        gone = {name: [e for e, f in raw if not f] for name, raw in by_stream.items()}  # trimmed while pending
        if self._own_first and not entries and not group_entries:
            self._own_first = False  # nothing of ours left unacknowledged: new entries from now on
        rows = link_rows(entries)
        lag_rows = group_rows(group_entries)
        last_seen: dict[str, int] = {}
        for row in rows:
            last_seen[row[2]] = max(last_seen.get(row[2], 0), row[0])
        region_rows = []
        for key, value in regions.items():
            info = orjson.loads(value)
            rid = key.decode() if isinstance(key, bytes) else key
            first = datetime.fromtimestamp(info.get("ts", 0) / 1e6, UTC)
            seen = datetime.fromtimestamp(last_seen.get(rid, info.get("ts", 0)) / 1e6, UTC)
            region_rows.append(
                [
                    rid,
                    info.get("provider", ""),
                    float(info.get("lat", 0)),
                    float(info.get("lon", 0)),
                    info.get("city", rid),
                    info.get("relay", ""),
                    first,
                    seen,
                ]
            )

        def run(client: Client) -> None:
            if rows:
                client.insert(
                    f"`{db}`.`links`",
                    rows,
                    column_names=LINK_COLUMNS,
                    settings={"insert_deduplication_token": batch_token([e for e, _ in entries])},
                )
            if lag_rows:
                client.insert(
                    f"`{db}`.`group_lag`",
                    lag_rows,
                    column_names=GROUP_COLUMNS,
                    settings={"insert_deduplication_token": batch_token([e for e, _ in group_entries])},
                )
            if region_rows:
                client.insert(f"`{db}`.`regions`", region_rows, column_names=REGION_COLUMNS)

        if rows or region_rows or lag_rows:
            await with_clickhouse("links", run)
        try:
            if entries:
                await self.redis.xack(self.config.links_stream, self.group, *[e for e, _ in entries])
            if group_entries:
                await self.redis.xack(GROUPS_STREAM, self.group, *[e for e, _ in group_entries])
            for name, ids in gone.items():
                if ids:
                    await self.redis.xack(name, self.group, *ids)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot ack link samples: {exc}") from exc

    async def claim_idle(self) -> int:
        """Take over entries another consumer read and never acknowledged (it died); they are read next."""
        idle_ms = int(self.config.claim_idle_s * 1000)
        claimed = 0
        try:
            for stream in (self.config.links_stream, GROUPS_STREAM):
                ids: Any = await self.redis.xautoclaim(
                    stream, self.group, self.config.consumer, idle_ms, start_id="0-0", count=1000, justid=True
                )
                claimed += len(ids)  # with justid, redis-py answers the claimed ids alone
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise StreamUnavailable(f"cannot claim link samples: {exc}") from exc
        except RedisError as exc:
            raise StreamUnavailable(f"cannot claim link samples: {exc}") from exc
        if claimed:
            self._own_first = True
        return claimed
