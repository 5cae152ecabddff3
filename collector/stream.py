"""The collector's side of Redis: the flow stream's consumer group, in-flight batch
manifests, the dead-letter stream and live statistics. Only moves data; every
redis exception becomes StreamUnavailable here.

A manifest (``meshscope:collector:inflight``, one hash field per batch token)
names the entry ids of a batch before it is inserted, and is removed after the
ack. A collector that dies between insert and ack leaves the manifest behind; the
next collector to recover it re-inserts exactly those entries with the same token
(ClickHouse drops the duplicate) and acks them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from collector.errors import StreamUnavailable

MANIFESTS = "meshscope:collector:inflight"
Entry = tuple[str, dict[Any, Any]]


def _entries(raw: Any) -> list[Entry]:
    return [(eid.decode() if isinstance(eid, bytes) else eid, fields) for eid, fields in raw if fields is not None]


class FlowStream:
    def __init__(self, client: aioredis.Redis, stream: str, group: str, consumer: str, dead_letter: str):
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter_stream = dead_letter

    async def ensure_group(self) -> None:
        try:
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise StreamUnavailable(f"cannot create consumer group: {exc}") from exc
        except RedisError as exc:
            raise StreamUnavailable(f"cannot create consumer group: {exc}") from exc

    async def read(self, count: int, block_ms: int, pending: bool = False) -> list[Entry]:
        """New entries for this consumer, or (``pending``) the ones it was given but never acked."""
        try:
            reply: Any = await self.client.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: "0" if pending else ">"},
                count=count,
                block=None if pending else max(1, block_ms),
            )
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read {self.stream}: {exc}") from exc
        out: list[Entry] = []
        for _, raw in reply or []:
            out.extend(_entries(raw))
        return out

    async def autoclaim(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle on other (presumed dead) consumers."""
        out: list[Entry] = []
        start = "0-0"
        try:
            while True:
                reply: Any = await self.client.xautoclaim(
                    self.stream, self.group, self.consumer, min_idle_ms, start_id=start, count=count
                )
                next_id, raw = reply[0], reply[1]
                out.extend(_entries(raw))
                start = next_id.decode() if isinstance(next_id, bytes) else next_id
                if start == "0-0" or len(out) >= count:
                    return out
        except RedisError as exc:
            raise StreamUnavailable(f"cannot claim entries of {self.stream}: {exc}") from exc

    async def claim(self, ids: list[str], min_idle_ms: int) -> list[Entry]:
        try:
            raw: Any = await self.client.xclaim(self.stream, self.group, self.consumer, min_idle_ms, list[Any](ids))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot claim entries of {self.stream}: {exc}") from exc
        return _entries(raw)

    async def ack(self, ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self.client.xack(self.stream, self.group, *ids)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot ack entries of {self.stream}: {exc}") from exc

    async def dead_letter(self, entry_id: str, reason: str, fields: dict[Any, Any]) -> None:
        record = {b"source_id": entry_id.encode(), b"reason": reason.encode(), b"stream": self.stream.encode()}
        for key, value in fields.items():
            k = key if isinstance(key, bytes) else str(key).encode()
            record[b"field:" + k] = value if isinstance(value, bytes) else str(value).encode()
        try:
            await self.client.xadd(self.dead_letter_stream, record)  # type: ignore[arg-type]
        except RedisError as exc:
            raise StreamUnavailable(f"cannot write dead letter: {exc}") from exc

    async def save_manifest(self, token: str, ids: list[str]) -> None:
        data = orjson.dumps({"ids": ids, "owner": self.consumer, "ts": time.time()})
        try:
            await self.client.hset(MANIFESTS, token, data)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot save batch manifest: {exc}") from exc

    async def drop_manifest(self, token: str) -> None:
        try:
            await self.client.hdel(MANIFESTS, token)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot remove batch manifest: {exc}") from exc

    async def manifests(self) -> dict[str, dict[str, Any]]:
        try:
            raw: Any = await self.client.hgetall(MANIFESTS)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read batch manifests: {exc}") from exc
        return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            await self.client.publish(channel, message)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot publish on {channel}: {exc}") from exc
