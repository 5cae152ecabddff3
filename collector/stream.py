"""The collector's side of Redis: the flow stream's consumer group, in-flight batch
manifests, the dead-letter stream and live statistics. Only moves data; every
redis exception becomes StreamUnavailable here.

A manifest (``meshscope:collector:inflight``, one hash field per batch token)
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

MANIFESTS = "meshscope:collector:inflight"
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


def _ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.partition("-")[0])


async def oldest_waiting_ms(client: aioredis.Redis, stream: str, group: str) -> int | None:
    """The write time (ms) of the oldest entry of ``stream`` that ``group`` has not acknowledged, or None.

    Raises StreamUnavailable, and LookupError when no such group reads the stream (no collector yet).
    """
    try:
        groups: Any = await client.xinfo_groups(stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            raise LookupError(f"{stream} does not exist") from None
        raise StreamUnavailable(f"cannot inspect {stream}: {exc}") from exc
    except RedisError as exc:
        raise StreamUnavailable(f"cannot inspect {stream}: {exc}") from exc
    found = None
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            found = g
    if found is None:
        raise LookupError(f"no collector group {group!r} reads {stream}")
    times = []
    try:
        if int(found.get("pending") or 0):
            summary: Any = await client.xpending(stream, group)
            if summary and summary.get("min"):
                times.append(_ms(summary["min"]))
        last = found.get("last-delivered-id") or b"0-0"
        last_id = last.decode() if isinstance(last, bytes) else str(last)
        after: Any = await client.xrange(stream, f"({last_id}", "+", 1)
        if after:
            times.append(_ms(after[0][0]))
    except RedisError as exc:
        raise StreamUnavailable(f"cannot inspect {stream}: {exc}") from exc
    return min(times) if times else None


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
                keys=[self.stream, MANIFESTS], args=[self.group, self.consumer, min_idle_ms, count]
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
                keys=[self.stream, MANIFESTS], args=[self.group, self.consumer, token, time.time(), *ids]
            )
        except RedisError as exc:
            raise StreamUnavailable(f"cannot save batch manifest: {exc}") from exc
        return {i.decode() if isinstance(i, bytes) else i for i in raw or []}

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

    async def oldest_waiting_ms(self) -> int | None:
        """When the oldest entry no collector of the group has acknowledged was written (ms), or None.

        That is how far behind ClickHouse this stream's region is: every record written before it
        is in ClickHouse. Entry ids carry the time they were written.
        """
        return await oldest_waiting_ms(self.client, self.stream, self.group)

    async def lag(self) -> tuple[int, int]:
        """(pending entries, entries not yet delivered to the group)."""
        pending, lag, _ = await self.backlog()
        return pending, lag

    async def backlog(self) -> tuple[int, int, int]:
        """(pending entries, entries not yet delivered, when the oldest not yet stored was added, in ms; 0: none)."""
        try:
            groups: Any = await self.client.xinfo_groups(self.stream)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot inspect {self.stream}: {exc}") from exc
        for g in groups:
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group:
                try:
                    oldest = await oldest_waiting_ms(self.client, self.stream, self.group)
                except LookupError:  # the group went away between the two reads
                    oldest = None
                return int(g.get("pending") or 0), int(g.get("lag") or 0), oldest or 0
        return 0, 0, 0

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            await self.client.publish(channel, message)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot publish on {channel}: {exc}") from exc
