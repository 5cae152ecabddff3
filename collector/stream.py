"""The collector's side of Redis: the flow stream's consumer group, in-flight batch
manifests, the dead-letter stream and live statistics. Only moves data; every
redis exception becomes StreamUnavailable here.

A manifest (``meshscope:collector:inflight:{<the stream's tag>}``, one hash field per batch token,
in the stream's own slot: the scripts below read both)
names the entry ids of a batch before it is inserted, and is removed after the
ack. A collector that dies between insert and ack leaves the manifest behind; the
next collector to recover it re-inserts exactly those entries with the same token
(ClickHouse drops the duplicate) and acks them.

So an entry must be inserted under one token only: the one of the manifest that
names it. Two scripts keep it so, each atomic in Redis:

- ``save_manifest`` writes a manifest of only the entries still pending on this
  consumer (another may have taken some over while the batch waited), and says
  which those are;
- ``claim_idle`` takes over entries idle on other consumers except those that any
  manifest names: those belong to that manifest's recovery, which claims them
  whatever their idle time. (XAUTOCLAIM cannot leave them out: claiming resets
  an entry's idle time, and a manifest whose entries were claimed that way could
  no longer be recovered, its batch inserted again under a new token.)
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from collector.errors import StreamUnavailable
from meshcore import storekeys as sk

Entry = tuple[str, dict[Any, Any]]

# KEYS: stream, manifests. ARGV: group, consumer, min idle ms, count.
# Entries idle on other consumers that no manifest names, claimed by this consumer.
CLAIM_IDLE = """
local held = {}
for _, raw in ipairs(redis.call('HVALS', KEYS[2])) do
  local ok, manifest = pcall(cjson.decode, raw)
  if ok and type(manifest) == 'table' and type(manifest['ids']) == 'table' then
    for _, id in ipairs(manifest['ids']) do held[id] = true end
  end
end
local want = tonumber(ARGV[4])
local take = {}
local start = '-'
for _ = 1, 100 do
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], start, '+', 1000)
  for _, p in ipairs(page) do
    if #take < want and p[2] ~= ARGV[2] and not held[p[1]] then take[#take + 1] = p[1] end
  end
  if #page < 1000 or #take >= want then break end
  start = '(' .. page[#page][1]
end
local out = {}
for i = 1, #take, 500 do
  local chunk = {}
  for j = i, math.min(i + 499, #take) do chunk[#chunk + 1] = take[j] end
  for _, entry in ipairs(redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], unpack(chunk))) do
    out[#out + 1] = entry
  end
end
return out
"""

# KEYS: stream, manifests. ARGV: group, consumer, token, time, entry ids...
# Writes the manifest of the entries still pending on this consumer; returns their ids.
SAVE_MANIFEST = """
local owned = {}
for i = 5, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then owned[#owned + 1] = ARGV[i] end
end
if #owned > 0 then
  redis.call('HSET', KEYS[2], ARGV[3], cjson.encode({ids = owned, owner = ARGV[2], ts = tonumber(ARGV[4])}))
end
return owned
"""


def _entries(raw: Any) -> list[Entry]:
    return [(eid.decode() if isinstance(eid, bytes) else eid, fields) for eid, fields in raw if fields is not None]


def _script_entries(raw: Any) -> list[Entry]:
    """Entries as a script returns them: [id, [field, value, ...]]."""
    out: list[Entry] = []
    for eid, flat in raw or []:
        if flat:
            out.append((eid.decode() if isinstance(eid, bytes) else eid, dict(zip(flat[::2], flat[1::2], strict=True))))
    return out


class FlowStream:
    def __init__(self, client: aioredis.Redis, stream: str, group: str, consumer: str, dead_letter: str):
        self.client = client
        self.stream = stream
        self.manifests_key = sk.manifests(stream)
        self.legacy_manifests = False
        """Whether the manifests of before they had the stream's slot are read too (the unsharded stream's)."""
        self.group = group
        self.consumer = consumer
        self.dead_letter_stream = dead_letter
        self._claim_idle = client.register_script(CLAIM_IDLE)
        self._save_manifest = client.register_script(SAVE_MANIFEST)

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

    async def claim_idle(self, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle on other (presumed dead) consumers that no in-flight manifest names."""
        try:
            raw: Any = await self._claim_idle(
                keys=[self.stream, self.manifests_key], args=[self.group, self.consumer, min_idle_ms, count]
            )
        except RedisError as exc:
            raise StreamUnavailable(f"cannot claim entries of {self.stream}: {exc}") from exc
        return _script_entries(raw)

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

    async def save_manifest(self, token: str, ids: list[str]) -> set[str]:
        """Write the manifest of ``ids`` still pending on this consumer; returns those (the batch keeps only them)."""
        try:
            raw: Any = await self._save_manifest(
                keys=[self.stream, self.manifests_key], args=[self.group, self.consumer, token, time.time(), *ids]
            )
        except RedisError as exc:
            raise StreamUnavailable(f"cannot save batch manifest: {exc}") from exc
        return {i.decode() if isinstance(i, bytes) else i for i in raw or []}

    async def drop_manifest(self, token: str) -> None:
        try:
            await self.client.hdel(self.manifests_key, token)
            if self.legacy_manifests:
                await self.client.hdel(sk.LEGACY_MANIFESTS, token)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot remove batch manifest: {exc}") from exc

    async def manifests(self) -> dict[str, dict[str, Any]]:
        try:
            raw: Any = await self.client.hgetall(self.manifests_key)
            if self.legacy_manifests:
                # written before manifests had their stream's slot: recovered like the others, then gone
                old: Any = await self.client.hgetall(sk.LEGACY_MANIFESTS)
                raw = {**old, **raw}
                self.legacy_manifests = bool(old)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read batch manifests: {exc}") from exc
        return {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in raw.items()}

    async def entry(self, entry_id: str) -> dict[Any, Any]:
        """The fields of one entry ({} when it is gone)."""
        try:
            raw: Any = await self.client.xrange(self.stream, entry_id, entry_id)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read {self.stream}: {exc}") from exc
        return dict(raw[0][1]) if raw else {}

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            await self.client.publish(channel, message)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot publish on {channel}: {exc}") from exc
