"""The relay's events in custody for other regions: stored, sent over the current route, acknowledged.

Every event accepted for another region joins that region's ``Channel`` and,
unless links are configured not to be durable, its Redis stream
``meshscope:out:<me>:<dst>``, with the channel's ``epoch``/``next``/``floor`` in
the hash ``meshscope:outmeta:<me>``. Both are written in the same commit that
acknowledges the publish, and a commit writes ONE stream entry per
destination holding all its events (numbers ``f``..``l``): one XADD per event
cost 12 µs an event, more than an fsync'd append-only file (bench/store.py),
one per commit costs a fraction of that. An entry is trimmed (by length: the
stream holds exactly the entries not yet wholly acknowledged) once the floor
passes its last number.

``dispatch`` sends what is waiting over the route of each destination: the
direct link when it is up, else the next hop of a detour; never over a link
whose peer refuses this relay's clock (``MeshLink.clock_refusal``), where
everything would be refused: it waits until the clocks agree. An item stays held
until the destination acknowledges it; a link that goes down, a route that
changes or an acknowledgement that is late sends the unacknowledged items
again (the destination's applied state makes that idempotent).

A relay on a detour (``transit``) passes items on without keeping them and
relays the destination's acknowledgements back to the relay it got them from;
if it dies, the origin still holds the items and sends them again.

A stored sequence that lost entries (Redis lost data) is reported at load as a
``drop``/``gap`` record naming the range; held items older than the maximum
age, or pushed out by the overflow policy, leave ``drop``/``expired`` records.

A store that went back. Each channel's state records the store's ``run_id``
(Valkey's, new at every start). At load, a channel written before the store
last restarted may have lost its last writes (Valkey's everysec sync allows a
second), numbers the destination already applied among them: unless commits
wait for the disk (``MESHSCOPE_STORE_WAIT``), it continues in a new epoch from
the stored next number (``Channel.continue_in``), with a ``drop``/``rolled_back``
record naming that number. A destination that finds the origin claiming less
than it applied says so (ACK ``r``), and the channel continues the same way.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from meshcore import flowrecord as fk
from meshcore import storekeys as sk
from meshcore.errors import StreamUnavailable
from meshcore.server import store_run_id
from router import frame as fr
from router.channel import Channel, Held, new_epoch
from router.committer import Ops
from router.config import RelayConfig
from router.envelope import Event, EventLimits, now_us, validate_event
from router.errors import InvalidInput
from router.hop import Hop, Subject, gap, rolled_back
from router.link import MeshLink
from router.recorder import Recorder
from router.routing import LinkStateTable
from router.tracecontext import new_span_id

log = logging.getLogger(__name__)

TRANSIT_MEMORY = 100_000  # transit items whose acknowledgement we can still relay upstream

AckSender = Callable[[list[list[Any]]], None]


DISPATCH_MAX_ITEMS = 500
"""Items one ``Outbox.dispatch`` sends at most (about 15 ms of work), so bulk sends never hold the loop long."""


class StoreFull(Exception):
    """A destination's store is full and the overflow policy is ``reject``: publishers get 503."""

    def __init__(self, dst: str, limit: int):
        super().__init__(f"the store for {dst} holds its limit of {limit} events; try again later")
        self.dst = dst


@dataclass(frozen=True)
class Dropped:
    """Held items given up (expired or overflowed), for drop records."""

    channel: Channel
    items: list[Held]
    status: str


def ranges_of(keys: list[tuple[str, str, int]]) -> list[list[Any]]:
    """(origin, epoch, seq) keys as ACK ranges [origin, epoch, first, last]."""
    out: list[list[Any]] = []
    for origin, epoch, seq in sorted(keys):
        if out and out[-1][0] == origin and out[-1][1] == epoch and out[-1][3] + 1 == seq:
            out[-1][3] = seq
        elif not (out and out[-1][0] == origin and out[-1][1] == epoch and out[-1][2] <= seq <= out[-1][3]):
            out.append([origin, epoch, seq, seq])
    return out


class Outbox:
    def __init__(
        self,
        config: RelayConfig,
        client: aioredis.Redis,
        routes: LinkStateTable,
        links: dict[str, MeshLink],
        record: Recorder,
        limits: EventLimits,
    ):
        self.config = config
        self.me = config.region.id
        self.client = client
        self.routes = routes
        self.links = links  # next hop region -> our outbound link to it
        self.record = record
        self.limits = limits
        self.meta_key = sk.outmeta(self.me)
        self.channels: dict[str, Channel] = {}
        self.by_epoch: dict[str, Channel] = {}
        self.dirty: set[str] = set()
        self._writes: dict[str, list[tuple[int, bytes]]] = {}  # dst -> events appended, not yet in an Ops
        self.upstream: dict[tuple[str, str], OrderedDict[int, AckSender]] = {}
        self._upstream_size = 0
        self.transit_forwarded = 0
        self.transit_unroutable = 0
        self.store_run = ""  # the store's run_id when the channels were loaded ("" unknown)
        self.rolled_back = 0  # sequences continued in a new epoch

    def stream(self, dst: str) -> str:
        return sk.outbound(self.me, dst)

    def channel(self, dst: str) -> Channel:
        ch = self.channels.get(dst)
        if ch is None:
            ch = self.channels[dst] = Channel(self.me, dst)
            self.by_epoch[ch.epoch] = ch
        return ch

    @property
    def depth(self) -> int:
        return sum(ch.depth for ch in self.channels.values())

    # ---- load after a restart ---------------------------------------------------------------

    async def load(self) -> list[Dropped]:
        """Read the stored channels back; return what can no longer be delivered (too old)."""
        if not self.config.link_durable:
            return []
        try:
            self.store_run = await self._store_run()
            metas: Any = await self.client.hgetall(self.meta_key)
            loaded: dict[str, tuple[Any, Any]] = {}
            for key, raw in metas.items():
                dst = key.decode() if isinstance(key, bytes) else key
                loaded[dst] = (orjson.loads(raw), await self.client.xrange(self.stream(dst)))
        except RedisError as exc:
            raise StreamUnavailable(f"cannot load stored events: {exc}") from exc
        dropped: list[Dropped] = []
        for dst, (meta, entries) in loaded.items():
            ch = Channel(self.me, dst, str(meta.get("epoch") or new_epoch()))
            ch.next_seq = int(meta.get("next", 1))
            ch.floor = int(meta.get("floor", 1))
            if meta.get("base"):
                ch.prev, ch.base = str(meta.get("prev", "")), int(meta["base"])
            for _entry_id, fields in entries:
                first, last, items = self._unpack(fields)
                if last >= ch.floor:
                    ch.segments.append((first, last))
                for held in items:
                    if held.seq >= ch.floor:
                        ch.hold(held)
            if ch.held:
                first = next(iter(ch.held))
                ch.next_seq = max(ch.next_seq, next(reversed(ch.held)) + 1)
                if first > ch.floor:
                    # the store lost entries it should still hold: a gap we can name but not deliver
                    log.error("stored events missing", extra={"dst": dst, "first": ch.floor, "last": first - 1})
                    self.record(gap(self.me, ch.dst, ch.floor, first - 1))
                    ch.floor = first
            elif ch.floor < ch.next_seq:
                self.record(gap(self.me, ch.dst, ch.floor, ch.next_seq - 1))
                ch.floor = ch.next_seq
            ch.cursor = ch.floor
            ch.loaded_next = ch.next_seq
            self.channels[dst] = ch
            self.by_epoch[ch.epoch] = ch
            self.dirty.add(dst)
            written_on = str(meta.get("run", ""))
            if self.store_run and written_on and written_on != self.store_run and self.config.store_wait == "none":
                self.continue_epoch(ch, ch.next_seq, "the store restarted since this sequence was last written")
            log.info("stored events loaded", extra={"dst": dst, "held": ch.depth, "epoch": ch.epoch})
        dropped += self.expire(now_us())
        return dropped

    async def _store_run(self) -> str:
        """The store's run_id (a new one at every start of the server); empty where INFO is not allowed."""
        try:
            return await store_run_id(self.client, self.meta_key)
        except ResponseError:  # INFO refused (a managed store): whether it restarted cannot be known
            return ""

    def continue_epoch(self, ch: Channel, base: int, why: str) -> None:
        """Number from ``base`` on in a new epoch that continues the channel's (its numbering went back)."""
        old = ch.epoch
        ch.continue_in(new_epoch(), base)
        self.by_epoch[ch.epoch] = ch  # the old epoch stays mapped: acknowledgements of it may still come
        self.dirty.add(ch.dst)
        log.error(
            "sequence continued in a new epoch: numbers from base on that were not sent may be lost",
            extra={"dst": ch.dst, "epoch": old, "new_epoch": ch.epoch, "base": base, "why": why},
        )
        self.record(rolled_back(self.me, ch.dst, base))
        self.rolled_back += 1

    def behind(self, notices: list[tuple[str, str, int]], peer: str) -> int:
        """A destination applied more of a sequence than this relay claims: continue it in a new epoch."""
        moved = 0
        for origin, epoch, high in notices:
            ch = self.by_epoch.get(epoch) if origin == self.me else None
            if ch is None or ch.epoch != epoch or ch.dst != peer:
                continue  # an old epoch (already moved on), or a notice not from the destination itself
            base = ch.loaded_next or ch.floor
            self.continue_epoch(ch, base, f"{peer} applied up to {high}; this relay's sequence was at {ch.high}")
            moved += 1
        return moved

    def _unpack(self, fields: dict[bytes, bytes]) -> tuple[int, int, list[Held]]:
        """One stored entry: (first, last, its events); unreadable events are skipped with a log line."""
        try:
            first, last, rows = int(fields[b"f"]), int(fields[b"l"]), orjson.loads(fields[b"d"])
        except (KeyError, ValueError, TypeError) as exc:
            log.error("unreadable stored entry skipped", extra={"error": str(exc)[:200]})
            return 0, -1, []
        out = []
        for row in rows if isinstance(rows, list) else []:
            try:
                seq, accepted_us, span_id, principal, published_us, body = row
                ev = validate_event(body, self.limits)
            except (ValueError, TypeError, InvalidInput) as exc:
                log.error("unreadable stored event skipped", extra={"error": str(exc)[:200]})
                continue
            ev.published_us = int(published_us)
            out.append(Held(int(seq), ev, str(span_id), str(principal), int(accepted_us)))
        return first, last, out

    # ---- accepting ------------------------------------------------------------------------------

    def append(
        self, ops: Ops, dst: str, ev: Event, span_id: str, principal: str, accepted_us: int, extra: int = 0
    ) -> tuple[Held, list[Held]]:
        """Give ``ev`` the next number for ``dst`` and add its durable write to ``ops``.

        Returns the held item (hold it once ``ops`` is durable) and the items the overflow policy
        pushed out (their drop records are the caller's). ``extra``: items already appended to this
        channel in the same commit.
        """
        ch = self.channel(dst)
        overflow: list[Held] = []
        if ch.depth + extra + 1 > self.config.link_store_max:
            if self.config.link_overflow == "reject":
                raise StoreFull(dst, self.config.link_store_max)
            overflow = ch.drop_oldest(ch.depth + extra + 1 - self.config.link_store_max)
            self.dirty.add(dst)
        seq = ch.assign(1).start
        held = Held(seq, ev, span_id, principal, accepted_us)
        if self.config.link_durable:
            data = orjson.dumps([seq, accepted_us, span_id, principal, ev.published_us, ev.body])
            self._writes.setdefault(dst, []).append((seq, data))
        return held, overflow

    def discard(self) -> None:
        """Forget appends whose commit was abandoned (their numbers were given back)."""
        self._writes.clear()

    def persist(self, ops: Ops, dsts: set[str]) -> None:
        """Add the channel state of ``dsts`` (and any trims waiting) to ``ops``."""
        if not self.config.link_durable:
            self.dirty.clear()
            return
        for dst in dsts | self.dirty | set(self._writes):
            ch = self.channels.get(dst)
            if ch is None:
                continue
            writes = self._writes.pop(dst, None)
            if writes:
                first, last = writes[0][0], writes[-1][0]
                data = b"[" + b",".join(d for _, d in writes) + b"]"
                ops.xadd(self.stream(dst), {b"f": str(first).encode(), b"l": str(last).encode(), b"d": data})
                ch.segments.append((first, last))
            ops.hset(self.meta_key, dst, orjson.dumps({**ch.meta(), "run": self.store_run}))
            if ch.trimmed:
                ops.trim(self.stream(dst), len(ch.segments))
                ch.trimmed = 0
        self.dirty.clear()

    # ---- sending ------------------------------------------------------------------------------

    def dispatch(self) -> int:
        """Send what waits, over each destination's current route; returns how many items went out.

        At most ``DISPATCH_MAX_ITEMS`` per call (each costs an encoding and a flow record, ~30 µs):
        a caller that got that many calls again once the loop served everything else.
        """
        sent = 0
        now = time.monotonic()
        for dst, ch in self.channels.items():
            if not ch.held or sent >= DISPATCH_MAX_ITEMS:
                continue
            route = self.routes.route(dst)
            if not route.reachable:
                continue
            assert route.next_hop is not None
            link = self.links.get(route.next_hop)
            if link is None or link.clock_refusal:  # the peer would refuse them for our clocks: held
                continue
            if ch.held and any(item.via and item.via != route.next_hop for item in self._sent(ch, 1)):
                ch.rewind()  # the route changed: what went the old way is sent again this way
            if not ch.has_unsent():
                continue
            room = min(link.room, self.config.link_window - ch.in_flight(), DISPATCH_MAX_ITEMS - sent)
            if room <= 0:
                continue
            items = ch.take(room, now, route.next_hop)
            if not items:
                continue
            sent_us = now_us()
            encoded = []
            for held in items:
                fwd_span = new_span_id()
                item = fr.Item(
                    self.me,
                    ch.epoch,
                    held.seq,
                    ch.floor,
                    ch.high,
                    dst,
                    (self.me,),
                    fwd_span,
                    sent_us,
                    held.event.published_us,
                    held.attempt,
                    held.principal,
                    held.event.body,
                    ch.lineage,
                )
                encoded.append(fr.encode_item(item))
                hop_ms = (sent_us - held.accepted_us) / 1000 if held.attempt == 1 else 0.0
                self.record(
                    Hop(
                        Subject.of_event(held.event),
                        fk.FORWARD,
                        fwd_span,
                        held.span_id,
                        self.me,
                        dst,
                        sent_us,
                        hop_ms,
                        fk.OK,
                        held.attempt,
                        held.seq,
                        held.principal,
                        route.next_hop,
                    )
                )
            link.send(encoded)
            sent += len(items)
        return sent

    @staticmethod
    def _sent(ch: Channel, n: int) -> list[Held]:
        out: list[Held] = []
        for seq, item in ch.held.items():
            if seq >= ch.cursor or len(out) >= n:
                break
            if seq not in ch.acked_above:
                out.append(item)
        return out

    def link_down(self, peer: str) -> int:
        """Everything unacknowledged that went through ``peer`` is sent again."""
        return sum(ch.rewind(peer) for ch in self.channels.values())

    def overdue(self) -> int:
        """Rewind channels whose oldest unacknowledged item waited longer than the ack timeout."""
        now = time.monotonic()
        n = 0
        for ch in self.channels.values():
            if ch.overdue(now, self.config.link_ack_timeout_s):
                n += ch.rewind()
        return n

    def expire(self, now: int) -> list[Dropped]:
        """Give up held items older than the maximum age."""
        out = []
        max_age_us = int(self.config.link_store_max_age_s * 1_000_000)
        for dst, ch in self.channels.items():
            n = ch.expired(now, max_age_us)
            if n:
                out.append(Dropped(ch, ch.drop_oldest(n), fk.EXPIRED))
                self.dirty.add(dst)
        return out

    # ---- acknowledgements -----------------------------------------------------------------------

    def acked(self, ranges: list[tuple[str, str, int, int]]) -> int:
        """Take a destination's acknowledgements: ours free held items, others' go back upstream."""
        freed = 0
        upstream: dict[int, tuple[AckSender, list[tuple[str, str, int]]]] = {}
        for origin, epoch, first, last in ranges:
            if origin == self.me:
                ch = self.by_epoch.get(epoch)
                if ch is not None:
                    done = ch.ack(first, last)
                    if done:
                        freed += len(done)
                        self.dirty.add(ch.dst)
                continue
            senders = self.upstream.get((origin, epoch))
            if not senders:
                continue
            seqs = range(first, last + 1) if last - first < len(senders) else [s for s in senders if first <= s <= last]
            for seq in seqs:
                send = senders.pop(seq, None)
                if send is not None:
                    self._upstream_size -= 1
                    upstream.setdefault(id(send), (send, []))[1].append((origin, epoch, seq))
        for send, keys in upstream.values():
            send(ranges_of(keys))
        return freed

    # ---- transit --------------------------------------------------------------------------------

    def transit(self, items: list[fr.Item], upstream: AckSender) -> list[fr.Item]:
        """Pass on items bound for other regions; returns those that cannot go anywhere now."""
        stuck: list[fr.Item] = []
        sent_us = now_us()
        by_link: dict[str, list[bytes]] = {}
        for item in items:
            route = self.routes.route(item.dst)
            link = self.links.get(route.next_hop) if route.next_hop else None
            if (
                not self.config.transit
                or link is None
                or link.clock_refusal
                or route.next_hop in item.path
                or len(item.path) + 1 > self.config.hop_limit
                or link.room <= len(by_link.get(link.name, ()))
            ):
                stuck.append(item)
                continue
            assert route.next_hop is not None
            span = new_span_id()
            out = fr.Item(
                item.origin,
                item.epoch,
                item.seq,
                item.floor,
                item.high,
                item.dst,
                (*item.path, self.me),
                span,
                sent_us,
                item.published_us,
                item.attempt,
                item.principal,
                item.event,
                item.lineage,
            )
            by_link.setdefault(route.next_hop, []).append(fr.encode_item(out))
            self._remember(item, upstream)
            self.record(
                Hop(
                    Subject.of_body(item.event, item.published_us),
                    fk.TRANSIT,
                    span,
                    item.span_id,
                    item.origin,
                    item.dst,
                    sent_us,
                    (sent_us - item.sent_us) / 1000,
                    fk.OK,
                    item.attempt,
                    item.seq,
                    item.principal,
                    route.next_hop,
                )
            )
        for hop, encoded in by_link.items():
            self.links[hop].send(encoded)
            self.transit_forwarded += len(encoded)
        self.transit_unroutable += len(stuck)
        return stuck

    def _remember(self, item: fr.Item, send: AckSender) -> None:
        senders = self.upstream.setdefault((item.origin, item.epoch), OrderedDict())
        if item.seq not in senders:
            self._upstream_size += 1
        senders[item.seq] = send
        while self._upstream_size > TRANSIT_MEMORY:
            oldest_key = next(iter(self.upstream))
            oldest = self.upstream[oldest_key]
            if oldest:
                oldest.popitem(last=False)
                self._upstream_size -= 1
            if not oldest:
                del self.upstream[oldest_key]
