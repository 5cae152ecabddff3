"""Local subscribers: live ones with a bounded buffer, and durable consumer groups.

A live subscriber gets at most ``buffer`` undelivered events; past that the
relay drops new events for that subscriber with a ``backpressure`` flow record
(it never buffers without bound and never blocks the publisher). A durable group
keeps its events in a per-region Redis Stream, read with XREADGROUP: members that
disconnect and come back get what they missed, and ack what they processed.

A group belongs to the principal that created it: its patterns, owner and
creation time are stored in Redis, so its interest survives restarts and
periods with no member connected. Joining with other patterns is refused
(409) unless the member asks to update them and may; only the owner or an
admin may delete it. Consumer names are kept per principal
(``<principal>/<consumer>``), so nobody can take another principal's
un-acknowledged entries by naming its consumer.

A member acknowledges only what it was given: an id pending on another
consumer is left alone (``ack_own``, one script: check and XACK together). An
entry a member may not read is neither sent nor acknowledged: it is moved to
the consumer ``PARKED`` (``park``), a name no principal can have, and a member
that may read it takes it from there (``parked``, then ``take``, which moves
only what is still parked, so two members never both get it).

What clients' requests do here (joining, deleting, and a member's reads,
acknowledgements and claims) runs on ``session_client``, the relay's bounded
pool for sessions, waited for when busy, so a storm of members or joins never
takes a connection a publish or the relay's own work needs; none of it blocks
in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from meshcore import storekeys as sk
from meshcore.auth import Principal
from meshcore.errors import StreamUnavailable
from meshcore.topic import PatternSet

_ids = itertools.count(1)
ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
"""A stream entry id as a member sends it back: two ASCII numbers that each fit 64 bits (``is_entry_id``)."""
MAX_ACK_IDS = 10_000
TRIM_BATCH = 1000
PARKED = "!parked"
"""The consumer that holds entries the member that read them may not read (no principal name starts with ``!``)."""
_U64 = 2**64 - 1

# Acknowledge only entries pending on ARGV[2]; returns how many. {group, consumer, id...}
_ACK_OWN = """
local n = 0
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    n = n + redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  end
end
return n
"""
# Move the entries still pending on ARGV[2] to ARGV[3]; returns the ids moved. {group, from, to, id...}
_TAKE = """
local moved = {}
for i = 4, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[i], 'JUSTID')
    moved[#moved + 1] = ARGV[i]
  end
end
return moved
"""
# The entries pending on ARGV[2] after ARGV[3] (exclusive; '-' from the start), at most ARGV[4], with their fields.
_PENDING_ENTRIES = """
local out = {}
for _, row in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], '+', ARGV[4], ARGV[2])) do
  local e = redis.call('XRANGE', KEYS[1], row[1], row[1])
  out[#out + 1] = {row[1], e[1] and e[1][2] or {}}
end
return out
"""


def is_entry_id(text: object) -> bool:
    """Whether ``text`` is a stream entry id Redis takes: ``ms-seq`` in ASCII digits, each within 64 bits."""
    if not isinstance(text, str):
        return False
    m = ENTRY_ID.fullmatch(text)
    return m is not None and int(m.group(1)) <= _U64 and int(m.group(2)) <= _U64


# One group's stream, atomically: remove the entries every member is done with (delivered and
# acknowledged: older than the oldest pending entry, and not after the last delivered one), then,
# while more than ARGV[2] entries remain, give up the oldest (at most ARGV[3] per call) and return
# those not yet acknowledged, so that each one gets a drop record.
# Returns {entries removed as done, {id, fields}... given up, entries looked at}.
_TRIM = """
local stream, group, keep, batch = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if redis.call('EXISTS', stream) == 0 then return {0, {}, 0} end
local last
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local name, delivered
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then delivered = g[i + 1] end
  end
  if name == group then last = delivered end
end
if not last then return {0, {}, 0} end
local pending = redis.call('XPENDING', stream, group)
local minid
if tonumber(pending[1]) > 0 then
  minid = pending[2]
else
  local ms, seq = string.match(last, '^(%d+)-(%d+)$')
  minid = ms .. '-' .. (tonumber(seq) + 1)
end
local done = redis.call('XTRIM', stream, 'MINID', minid)
local over = redis.call('XLEN', stream) - keep
if over <= 0 then return {done, {}, 0} end
local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
lms, lseq = tonumber(lms), tonumber(lseq)
local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', math.min(over, batch))
local ids, given = {}, {}
for i, e in ipairs(oldest) do
  ids[i] = e[1]
  local ms, seq = string.match(e[1], '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  local undelivered = ms > lms or (ms == lms and seq > lseq)
  if undelivered or #redis.call('XPENDING', stream, group, e[1], e[1], 1) > 0 then
    given[#given + 1] = e
  end
end
redis.call('XACK', stream, group, unpack(ids))
redis.call('XDEL', stream, unpack(ids))
return {done, given, #oldest}
"""


class GroupConflict(Exception):
    """The group exists with other patterns (409), or may not be changed by this principal (403)."""

    def __init__(self, message: str, status: int, rule: str | None = None):
        super().__init__(message)
        self.status = status
        self.rule = rule


class Subscriber:
    __slots__ = ("dropped", "gate", "id", "patterns", "principal", "queue")

    def __init__(self, patterns: list[str], buffer: int, principal: Principal | None = None):
        self.id = next(_ids)
        self.patterns = PatternSet(patterns)
        self.principal = principal
        self.gate: Callable[[str], bool] | None = None  # the policy's per-topic read check
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


@dataclass(frozen=True)
class GroupInfo:
    patterns: PatternSet
    owner: str
    created_us: int
    probe: bool = False
    """A probe (``meshscope chaos`` makes them): sampled and shown like any group, never alerted on."""

    def to_json(self) -> bytes:
        patterns = sorted(self.patterns.patterns)
        out: dict[str, object] = {"patterns": patterns, "owner": self.owner, "created": self.created_us}
        if self.probe:
            out["probe"] = True
        return orjson.dumps(out)

    @classmethod
    def from_json(cls, raw: bytes) -> GroupInfo:
        obj = orjson.loads(raw)
        if isinstance(obj, list):  # stored by an earlier release: patterns only
            return cls(PatternSet(obj), "", 0)
        return cls(
            PatternSet(obj["patterns"]), str(obj.get("owner", "")), int(obj.get("created", 0)), obj.get("probe") is True
        )


class GroupStore:
    """Durable consumer groups of one region, kept in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        region: str,
        max_entries: int = 1_000_000,
        session_client: aioredis.Redis | None = None,
        max_owned: int = 100,
    ):
        self.client = client
        self.session_client = session_client or client
        self.region = region
        self.max_entries = max_entries
        self.max_owned = max_owned
        self._trim = client.register_script(_TRIM)
        self._ack_own = self.session_client.register_script(_ACK_OWN)
        self._take = self.session_client.register_script(_TAKE)
        self._pending_entries = self.session_client.register_script(_PENDING_ENTRIES)
        self.registry_key = sk.groups(region)
        self.groups: dict[str, GroupInfo] = {}

    def stream(self, group: str) -> str:
        return sk.group_stream(self.region, group)

    @staticmethod
    def consumer(principal: Principal, consumer: str) -> str:
        return f"{principal.name}/{consumer}"

    async def load(self) -> dict[str, GroupInfo]:
        """Read the stored groups; returns those not already known in memory."""
        new = {name: info for name, info in (await self.stored()).items() if name not in self.groups}
        self.groups.update(new)
        return new

    async def stored(self) -> dict[str, GroupInfo]:
        """Every group of the registry as stored (unreadable entries left out)."""
        try:
            raw: Any = await self.client.hgetall(self.registry_key)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot load consumer groups: {exc}") from exc
        out = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = GroupInfo.from_json(v)
            except (ValueError, KeyError, TypeError):
                continue
        return out

    async def join(
        self,
        group: str,
        patterns: list[str],
        principal: Principal,
        update: bool,
        may_update: bool,
        now_us: int,
        probe: bool = False,
    ) -> tuple[GroupInfo | None, GroupInfo]:
        """Create the group, or join it; returns (old info or None, current info). ``probe``: a group
        created now is a probe (whether a group is one is decided when it is created).

        Raises GroupConflict: 409 when it exists with other patterns and ``update`` was not asked,
        403 when an update was asked by someone who may not change it.
        """
        wanted = PatternSet(patterns)
        old = self.groups.get(group)
        if old is None:
            try:
                raw: Any = await self.session_client.hget(self.registry_key, group)
            except RedisError as exc:
                raise StreamUnavailable(f"cannot read consumer group {group!r}: {exc}") from exc
            old = GroupInfo.from_json(raw) if raw else None
        new = old
        if old is None:
            owned = sum(1 for info in self.groups.values() if info.owner == principal.name)
            if owned >= self.max_owned:
                raise GroupConflict(
                    f"principal {principal.name!r} owns {owned} groups in {self.region}, the most allowed "
                    "(MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL); delete one (DELETE /v1/groups/NAME) first",
                    403,
                )
            new = GroupInfo(wanted, principal.name, now_us, probe)
        elif old.patterns != wanted:
            if not update:
                raise GroupConflict(
                    f"group {group!r} exists with patterns {sorted(old.patterns.patterns)}; "
                    "join with the same patterns, or add update=true to change them",
                    409,
                )
            if not may_update and principal.name != old.owner:
                raise GroupConflict(f"only the owner of group {group!r} ({old.owner}) or an admin may change it", 403)
            new = GroupInfo(wanted, old.owner, old.created_us, old.probe)
        assert new is not None
        try:
            if new is not old:
                await self.session_client.hset(self.registry_key, group, new.to_json())
            await self._create_stream(group)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot create consumer group {group!r}: {exc}") from exc
        self.groups[group] = new
        return old, new

    async def _create_stream(self, group: str) -> None:
        try:
            await self.session_client.xgroup_create(self.stream(group), group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def remove(self, group: str) -> GroupInfo | None:
        """Forget a group that exists; an unknown name deletes nothing."""
        try:
            raw: Any = await self.session_client.hget(self.registry_key, group)
            if raw is None:
                self.groups.pop(group, None)
                return None
            await self.session_client.hdel(self.registry_key, group)
            await self.session_client.delete(self.stream(group))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot remove consumer group {group!r}: {exc}") from exc
        info = self.groups.pop(group, None)
        return info or GroupInfo.from_json(raw)

    async def trim(self, group: str) -> tuple[int, list[dict[str, Any]]]:
        """Remove what every member is done with; give up the oldest entries past ``max_entries``.

        Returns (entries removed as done, events given up). Entries are only ever removed
        here, so an entry no member has acknowledged is never lost without being returned.
        """
        done = 0
        given: list[dict[str, Any]] = []
        try:
            while True:
                reply: Any = await self._trim(keys=[self.stream(group)], args=[group, self.max_entries, TRIM_BATCH])
                done += int(reply[0])
                for _entry_id, fields in reply[1]:
                    values = dict(zip(fields[::2], fields[1::2], strict=True))
                    try:
                        event = orjson.loads(values[b"e"])
                    except (KeyError, orjson.JSONDecodeError):
                        event = {}
                    given.append(event if isinstance(event, dict) else {})
                if int(reply[2] if len(reply) > 2 else 0) < TRIM_BATCH:
                    return done, given
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return done, given
            raise StreamUnavailable(f"cannot trim consumer group {group!r}: {exc}") from exc
        except RedisError as exc:
            raise StreamUnavailable(f"cannot trim consumer group {group!r}: {exc}") from exc

    def matching(self, topic: str) -> list[str]:
        return [g for g, info in self.groups.items() if info.patterns.matches(topic)]

    async def read(
        self, group: str, consumer: str, pending: bool, count: int, after: str = "0"
    ) -> list[tuple[str, Any]]:
        """Entries for ``consumer``: its own un-acked ones after ``after`` when ``pending``, else new ones.

        It never blocks: a member waits for new entries in the relay (``router.groupsession``), not in Redis.
        """
        for attempt in range(2):
            try:
                reply: Any = await self.session_client.xreadgroup(
                    group, consumer, {self.stream(group): after if pending else ">"}, count=count
                )
                break
            except ResponseError as exc:
                if "NOGROUP" in str(exc) and attempt == 0 and group in self.groups:
                    # Redis lost the group (restarted without its data): make it again and read on
                    await self._create_stream(group)
                    continue
                raise StreamUnavailable(f"cannot read consumer group {group!r}: {exc}") from exc
            except RedisError as exc:
                raise StreamUnavailable(f"cannot read consumer group {group!r}: {exc}") from exc
        out = []
        for _, entries in reply or []:
            for entry_id, fields in entries:
                if fields and b"e" in fields:
                    out.append((entry_id.decode(), _event(fields[b"e"])))
        return out

    async def ack_own(self, group: str, consumer: str, ids: list[str]) -> int:
        """Acknowledge those of ``ids`` pending on ``consumer`` (what it was given); returns how many."""
        try:
            return int(await self._ack_own(keys=[self.stream(group)], args=[group, consumer, *ids]))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0  # the group or its stream is gone, and its entries with it
            raise StreamUnavailable(f"cannot ack in consumer group {group!r}: {exc}") from exc
        except RedisError as exc:
            raise StreamUnavailable(f"cannot ack in consumer group {group!r}: {exc}") from exc

    async def park(self, group: str, ids: list[str]) -> None:
        """Move entries a member read but may not read to ``PARKED``, for a member that may."""
        try:
            claimed: list[Any] = list(ids)
            await self.session_client.xclaim(self.stream(group), group, PARKED, 0, claimed, justid=True)
        except RedisError as exc:
            raise StreamUnavailable(f"cannot set aside entries of group {group!r}: {exc}") from exc

    async def parked(self, group: str, after: str, count: int) -> list[tuple[str, Any]]:
        """Up to ``count`` parked entries after ``after`` (``-``: from the first), with their events."""
        start = after if after == "-" else f"({after}"
        try:
            reply: Any = await self._pending_entries(keys=[self.stream(group)], args=[group, PARKED, start, count])
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return []
            raise StreamUnavailable(f"cannot read parked entries of group {group!r}: {exc}") from exc
        except RedisError as exc:
            raise StreamUnavailable(f"cannot read parked entries of group {group!r}: {exc}") from exc
        out = []
        for entry_id, fields in reply:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            out.append((_text(entry_id), _event(values[b"e"]) if b"e" in values else None))
        return out

    async def take(self, group: str, consumer: str, ids: list[str]) -> list[str]:
        """Move those of ``ids`` still parked to ``consumer``; returns the ids it now has."""
        try:
            moved: Any = await self._take(keys=[self.stream(group)], args=[group, PARKED, consumer, *ids])
        except RedisError as exc:
            raise StreamUnavailable(f"cannot take parked entries of group {group!r}: {exc}") from exc
        return [_text(i) for i in moved]

    async def claim_idle(self, group: str, consumer: str, min_idle_ms: int) -> int:
        """Take over entries idle on another consumer of the same principal (one that went away).

        Only the principal's own consumers (``<principal>/...``) are looked at, so nobody takes
        another principal's entries. Returns how many were claimed.
        """
        prefix = consumer.split("/", 1)[0] + "/"
        stream = self.stream(group)
        claimed = 0
        client = self.session_client
        try:
            summary: Any = await client.xpending(stream, group)
            for entry in summary.get("consumers") or []:
                name = _text(entry.get("name"))
                if name == consumer or not name.startswith(prefix):
                    continue
                rows: Any = await client.xpending_range(
                    stream, group, "-", "+", 1000, consumername=name, idle=min_idle_ms
                )
                ids: list[Any] = [_text(r["message_id"]) for r in rows]
                if ids:
                    await client.xclaim(stream, group, consumer, min_idle_ms, ids, justid=True)
                    claimed += len(ids)
        except ResponseError:
            return claimed
        except RedisError as exc:
            raise StreamUnavailable(f"cannot claim idle entries of group {group!r}: {exc}") from exc
        return claimed

    async def has_parked(self, group: str) -> bool:
        """Whether any entry of the group waits for a member that may read it."""
        try:
            summary: Any = await self.session_client.xpending(self.stream(group), group)
        except ResponseError:
            return False
        except RedisError as exc:
            raise StreamUnavailable(f"cannot inspect consumer group {group!r}: {exc}") from exc
        return any(_text(c.get("name")) == PARKED for c in summary.get("consumers") or [])

    async def lag(self, group: str) -> dict[str, Any]:
        """One group's position in its stream: added, read and acknowledged entries, and the oldest pending age.

        ``acked`` (entries read and acknowledged) only grows while members acknowledge; ``backlog``
        (entries not yet acknowledged) grows while they fall behind. Both are what the lag status
        rules (collector.grouplag) look at over a window of samples.
        """
        stream = self.stream(group)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xinfo_stream(stream)
            pipe.xinfo_groups(stream)
            pipe.xpending(stream, group)
            info, groups, pending_summary = await pipe.execute()
        except ResponseError:
            return {}  # the stream or group is gone (deleted, or Redis lost it): nothing to report
        except RedisError as exc:
            raise StreamUnavailable(f"cannot inspect consumer group {group!r}: {exc}") from exc
        row: Any = next((g for g in groups if _text(g.get("name")) == group), None)
        if row is None:
            return {}
        added = int(info.get("entries-added") or info.get("length") or 0)
        pending = int(row.get("pending") or 0)
        lag = row.get("lag")
        read = row.get("entries-read")
        read_n = int(read) if read is not None else max(0, added - int(lag or 0))
        lag_n = int(lag) if lag is not None else max(0, added - read_n)
        oldest = pending_summary.get("min") if isinstance(pending_summary, dict) else None
        oldest_ms = int(_text(oldest).split("-")[0]) if oldest else 0
        return {
            "added": added,
            "read": read_n,
            "pending": pending,
            "lag": lag_n,
            "acked": max(0, read_n - pending),
            "backlog": lag_n + pending,
            "oldest_pending_ms": oldest_ms,
            "length": int(info.get("length") or 0),
        }


def _event(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
