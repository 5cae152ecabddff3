"""Local subscribers: live ones with a bounded buffer, and durable consumer groups.

A live subscriber gets at most ``buffer`` undelivered events; past that the
relay drops new events for that subscriber with a ``backpressure`` flow record
(it never buffers without bound and never blocks the publisher). A durable group
keeps its events in a per-region Redis Stream, read with XREADGROUP: members that
disconnect and come back get what they missed, and ack what they processed.
The group's patterns are stored in Redis, so its interest survives restarts and
periods with no member connected.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from meshcore.errors import StreamUnavailable
from meshcore.topic import PatternSet

_ids = itertools.count(1)


class Subscriber:
    __slots__ = ("dropped", "id", "patterns", "queue")

    def __init__(self, patterns: list[str], buffer: int):
        self.id = next(_ids)
        self.patterns = PatternSet(patterns)
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=buffer)
        self.dropped = 0

    def offer(self, data: bytes) -> bool:
        """Buffer one encoded event; False when the buffer is full (the event is dropped)."""
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True


class GroupStore:
    """Durable consumer groups of one region, kept in Redis."""

    def __init__(self, client: aioredis.Redis, region: str, maxlen: int = 1_000_000):
        self.client = client
        self.region = region
        self.maxlen = maxlen
        self.registry_key = f"meshscope:groups:{region}"
        self.groups: dict[str, PatternSet] = {}

    def stream(self, group: str) -> str:
        return f"meshscope:group:{self.region}:{group}"

    async def load(self) -> dict[str, PatternSet]:
        """Read the stored groups; returns those not already known in memory."""
        try:
            raw: Any = await self.client.hgetall(self.registry_key)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot load consumer groups: {exc}") from exc
        new = {k.decode(): PatternSet(orjson.loads(v)) for k, v in raw.items() if k.decode() not in self.groups}
        self.groups.update(new)
        return new

    async def ensure(self, group: str, patterns: list[str]) -> tuple[PatternSet | None, PatternSet]:
        """Create or update a group; returns (old patterns or None, new patterns)."""
        new = PatternSet(patterns)
        old = self.groups.get(group)
        try:
            if old != new:
                await self.client.hset(self.registry_key, group, orjson.dumps(sorted(new.patterns)))
            try:
                await self.client.xgroup_create(self.stream(group), group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        except RedisError as exc:
            raise StreamUnavailable(f"cannot create consumer group {group!r}: {exc}") from exc
        self.groups[group] = new
        return old, new

    async def remove(self, group: str) -> PatternSet | None:
        old = self.groups.pop(group, None)
        try:
            await self.client.hdel(self.registry_key, group)
            await self.client.delete(self.stream(group))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot remove consumer group {group!r}: {exc}") from exc
        return old

    def matching(self, topic: str) -> list[str]:
        return [g for g, ps in self.groups.items() if ps.matches(topic)]

    async def append(self, items: list[tuple[str, bytes]]) -> None:
        """Append (group, encoded event) pairs in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for group, data in items:
            pipe.xadd(self.stream(group), {b"e": data}, maxlen=self.maxlen, approximate=True)
        try:
            await pipe.execute()
        except RedisError as exc:
            raise StreamUnavailable(f"cannot append to consumer group stream: {exc}") from exc

    async def read(self, group: str, consumer: str, pending: bool, count: int, block_ms: int) -> list[tuple[str, Any]]:
        """Entries for ``consumer``: its own un-acked ones when ``pending``, else new ones."""
        try:
            reply: Any = await self.client.xreadgroup(
                group,
                consumer,
                {self.stream(group): "0" if pending else ">"},
                count=count,
                block=None if pending else block_ms,
            )
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read consumer group {group!r}: {exc}") from exc
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields and b"e" in fields:
                    out.append((entry_id.decode(), orjson.loads(fields[b"e"])))
        return out

    async def ack(self, group: str, ids: list[str]) -> int:
        try:
            return int(await self.client.xack(self.stream(group), group, *ids))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot ack in consumer group {group!r}: {exc}") from exc
