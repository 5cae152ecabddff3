"""The other relay processes of this region (``meshscope relay --workers N``): what they share, through the store.

Workers share the region's store and nothing else. What one worker knows that
the others must know goes through one region stream,
``meshscope:siblings:{<region>}``, that every worker tails:

- events (``k=e``): every event a worker published, and every mesh event it
  applied that a sibling's live subscriber wants, added to the commit that
  made it durable. Each worker hands the ones it did not write itself to its
  own live subscribers. Worker 0 also routes the events the others published
  to other regions: it alone holds the region's outbound links, its outbox and
  its sequences, so peers see one sender per region as before. It moves them
  into its outbox in one commit with its read position in the stream
  (``meshscope:siblings:{<region>}:routed``), so a worker 0 restarted half way
  routes each of them exactly once;
- interest (``k=i``): a worker's live subscribers' patterns. Each worker counts
  its siblings' patterns into its own ``LocalInterest``, so a publish on any
  worker sees the region's whole interest, and worker 0 advertises the union;
- groups (``k=g``): a durable group joined, changed or deleted; the others
  reload the registry;
- link state (``k=l``): worker 0's advertisement, which the others give to
  peers that dial them.

Duplicates: each worker keeps the keys of the events it accepted in its own
dedup stream (``router.dedup``); before a publish a worker reads what its
siblings added to theirs since it last looked, so a retry sent to another
worker after its answer is a duplicate there too.

Each worker writes a heartbeat to ``meshscope:workers:{<region>}`` every second;
``/healthz`` of any worker lists them all with their age.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from meshcore import flowrecord as fk
from meshcore import storekeys as sk
from meshcore.flowrecord import FlowRecord, pack
from meshcore.topic import PatternSet
from router import frame as fr
from router.committer import Ops, Unavailable
from router.dedup import unpack_keys
from router.delivery import Arrival
from router.envelope import now_us, validate_event
from router.errors import FrameError, InvalidInput
from router.hop import dropped
from router.meshstate import LSA_KEY
from router.origin import OriginState
from router.outbox import StoreFull

if TYPE_CHECKING:
    from router.channel import Held
    from router.relay import Relay

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
"""Entries the region stream keeps (each is one commit's events); worker 0 must read them before they go."""
HEARTBEAT_S = 1.0
ALIVE_S = 5.0
READ_COUNT = 200
ROW_FIELDS = 12  # an event in the region stream: see ``Siblings.row``


def worker_names(name: str, index: int, workers: int) -> list[str]:
    """The names of every worker of the region, given this one's name ``<base>-w<index>``."""
    base = name.removesuffix(f"-w{index}")
    return [f"{base}-w{i}" for i in range(workers)]


class Siblings:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        config = relay.config
        self.on = config.workers > 1 and config.worker >= 0
        self.owner = not self.on or config.worker == 0
        """This process holds the region's outbound links (a relay of its own always does)."""
        self.index = max(config.worker, 0)
        self.names = worker_names(relay.name, self.index, config.workers) if self.on else [relay.name]
        region = relay.region
        self.stream = sk.siblings(region)
        self.cursor_key = f"{self.stream}:routed"
        self.workers_key = sk.workers(region)
        self.restarts = int(os.environ.get("MESHSCOPE_RELAY_WORKER_RESTARTS", "0") or 0)
        self.started_us = now_us()
        self.interest: dict[str, list[str]] = {}  # sibling -> its live subscribers' patterns
        self.wanted = PatternSet()  # the union of those
        self._sent_interest: list[str] | None = None
        self.lsa: fr.LinkStateAd | None = None  # worker 0's newest advertisement (on the others)
        self._dedup_ids = {
            sk.dedup(region, n): "0-0" for n in self.names if n != relay.name
        }  # sibling dedup stream -> the last entry read
        self._dedup_lock = asyncio.Lock()
        self._groups_changed = asyncio.Event()
        self.workers: dict[str, dict[str, Any]] = {}  # the heartbeats last read, by worker name

    # ---- what this worker tells its siblings ------------------------------------------------------

    def wants(self, topic: str) -> bool:
        """A sibling's live subscriber wants ``topic``."""
        return self.on and self.wanted.matches(topic)

    def add_events(self, ops: Ops, rows: list[list[Any]]) -> None:
        """Add events (``row``) to a commit, for the siblings' live subscribers and worker 0's routing."""
        if rows:
            ops.xadd(self.stream, {b"w": self.relay.name.encode(), b"k": b"e", b"d": orjson.dumps(rows)}, STREAM_MAXLEN)

    @staticmethod
    def row(a: Arrival, route: bool, local: bool) -> list[Any]:
        """An event as the region stream carries it; ``route``: worker 0 routes it to other regions,
        ``local``: the region wanted it when it was published (else no region may, and it is recorded so)."""
        ev = a.event
        return [
            ev.topic,
            a.parent,
            a.principal,
            ev.published_us,
            a.sent_us,
            a.src,
            a.attempt,
            a.seq,
            a.via,
            route,
            local,
            ev.body,
        ]

    def _note(self, kind: bytes, data: bytes) -> None:
        r = self.relay
        ops = Ops()
        ops.xadd(self.stream, {b"w": r.name.encode(), b"k": kind, b"d": data}, STREAM_MAXLEN)
        if r.breaker.healthy:
            r.committer.submit(ops)

    def interest_changed(self) -> None:
        """This worker's live subscribers changed: tell the siblings (when their patterns did)."""
        if not self.on:
            return
        mine = sorted({p for sub in self.relay.subscribers.values() for p in sub.patterns.patterns})
        if mine != self._sent_interest:
            self._sent_interest = mine
            self._note(b"i", orjson.dumps(mine))

    def groups_changed(self) -> None:
        if self.on:
            self._note(b"g", b"")

    def advertised(self, ad: fr.LinkStateAd) -> None:
        """Worker 0 made a new advertisement: the others give it to peers that dial them."""
        if self.on and self.owner:
            self._note(b"l", orjson.dumps(ad.to_json()))

    # ---- duplicates -------------------------------------------------------------------------------

    async def catch_up(self) -> None:
        """Read the keys siblings accepted since the last look (before deciding what is a duplicate)."""
        if not self.on:
            return
        r = self.relay
        async with self._dedup_lock:
            try:
                streams: dict[Any, Any] = dict(self._dedup_ids)
                reply: Any = await r.redis.xread(streams, count=10_000)
            except RedisError as exc:
                raise Unavailable(f"cannot read the other workers' duplicate keys: {exc}", 1.0) from exc
            for stream, entries in reply or []:
                name = stream.decode() if isinstance(stream, bytes) else str(stream)
                for entry_id, fields in entries:
                    for key in unpack_keys(fields.get(b"k", b"")):
                        r.dedup.commit(key)
                    self._dedup_ids[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    # ---- start and the region stream ------------------------------------------------------------------

    async def load(self) -> None:
        """At start: where the siblings' dedup keys begin, worker 0's advertisement, the siblings' interest."""
        if not self.on:
            return
        r = self.relay
        window_ms = int(r.config.dedup_restart_s * 1000)
        start = f"{max(0, now_us() // 1000 - window_ms)}-0"
        for stream in self._dedup_ids:
            self._dedup_ids[stream] = start
        raw: Any = await r.redis.hget(LSA_KEY, r.region)
        if raw and not self.owner:
            try:
                self.lsa = fr.lsa_of(orjson.loads(raw))
            except (FrameError, ValueError):
                self.lsa = None
        beats: Any = await r.redis.hgetall(self.workers_key)
        for name, value in beats.items():
            try:
                beat = orjson.loads(value)
                if name.decode() != r.name and now_us() - int(beat["ts"]) < ALIVE_S * 1e6:
                    self._set_interest(name.decode(), [str(p) for p in beat.get("interest", [])])
            except (ValueError, KeyError, TypeError):
                continue

    async def run(self) -> None:
        """Tail the region stream: siblings' events to live subscribers here (and, on worker 0, to other regions)."""
        r = self.relay
        if not self.on:
            return
        await r.ready.wait()
        self.interest_changed()  # a restarted worker has no subscribers yet: what its siblings held goes
        live_from_ms = now_us() // 1000
        last = "$"
        if self.owner:
            stored: Any = await r.redis.hget(self.cursor_key, "routed")
            last = stored.decode() if stored else "0-0"
            await self._check_trimmed(last)
        while True:
            reply: Any = await r.redis.xread({self.stream: last}, count=READ_COUNT, block=1000)
            routes: list[tuple[Arrival, bool]] = []
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    live = int(last.split("-", 1)[0]) >= live_from_ms
                    self._entry(fields, live, routes)
            if self.owner and reply:
                await self._route(routes, last)

    async def _check_trimmed(self, cursor: str) -> None:
        """Worker 0 at start: whether the stream's bound removed entries it had not routed yet (logged, counted)."""
        r = self.relay
        if cursor == "0-0":
            return
        # the stream is trimmed from its oldest end: while the last entry routed is there, so is every later one
        if await r.redis.xrange(self.stream, cursor, cursor):
            return
        first: Any = await r.redis.xrange(self.stream, "-", "+", count=1)
        if first and _id(first[0][0].decode()) > _id(cursor):
            r.metrics.inc("sibling_events_lost_total")
            log.error(
                "the region stream was trimmed past what worker 0 had routed: events the other workers accepted "
                "for other regions while it was away may be lost",
                extra={"routed_to": cursor, "oldest_kept": first[0][0].decode()},
            )

    def _entry(self, fields: dict[bytes, bytes], live: bool, routes: list[tuple[Arrival, bool]]) -> None:
        r = self.relay
        writer = fields.get(b"w", b"").decode(errors="replace")
        kind = fields.get(b"k", b"")
        mine = writer == r.name
        if kind == b"e":
            if mine and not self.owner:
                return
            try:
                rows = orjson.loads(fields.get(b"d", b"[]"))
            except orjson.JSONDecodeError:
                log.error("unreadable region stream entry skipped", extra={"writer": writer})
                return
            for row in rows if isinstance(rows, list) else []:
                # decoded only when needed: another region wants it (worker 0), or a live subscriber here
                if not isinstance(row, list) or len(row) != ROW_FIELDS:
                    log.error("unreadable event in the region stream skipped", extra={"writer": writer})
                    continue
                topic, route, local = str(row[0]), row[9] is True, row[10] is True
                # worker 0 routes what a sibling published: to the regions that want it, or a no_route record
                wanted = self.owner and not mine and route and (bool(r.routes.interested(topic)) or not local)
                offer = live and not mine and any(s.patterns.matches(topic) for s in r.subscribers.values())
                if not (wanted or offer):
                    continue
                arrival = self._arrival(row)
                if arrival is None:
                    continue
                if wanted:
                    routes.append((arrival, local))
                if offer:
                    self._offer(arrival)
        elif mine:
            return
        elif kind == b"i":
            try:
                patterns = [str(p) for p in orjson.loads(fields.get(b"d", b"[]"))]
            except (orjson.JSONDecodeError, TypeError):
                return
            if self._set_interest(writer, patterns) and self.owner:
                r.mesh.advertise()
        elif kind == b"g":
            self._groups_changed.set()
        elif kind == b"l" and not self.owner:
            try:
                self.lsa = fr.lsa_of(orjson.loads(fields.get(b"d", b"")))
            except (FrameError, ValueError):
                return
            r.mesh.broadcast(fr.encode(fr.INTEREST, lsa=self.lsa.to_json()))

    def _arrival(self, row: list[Any]) -> Arrival | None:
        r = self.relay
        try:
            _, span, principal, published_us, sent_us, src, attempt, seq, via, _, _, body = row
            ev = validate_event(body, r.limits)
            ev.published_us = int(published_us)
            a = Arrival(ev, str(span), str(src), int(sent_us), int(attempt), int(seq), str(principal), str(via))
        except (ValueError, TypeError, InvalidInput) as exc:
            log.error("unreadable event in the region stream skipped", extra={"error": str(exc)[:200]})
            return None
        return a

    def _offer(self, a: Arrival) -> None:
        """A sibling's event to this worker's live subscribers, with this worker's deliver record."""
        r = self.relay
        topic = a.event.topic
        subs = [s for s in r.subscribers.values() if s.patterns.matches(topic) and (s.gate is None or s.gate(topic))]
        if not subs:
            return
        r.metrics.inc("sibling_events_total", path="delivered")
        r.record(a.hop(r.region, fk.DELIVER, fk.OK, now_us()))
        r.delivery.offer(a, subs)

    async def _route(self, routes: list[tuple[Arrival, bool]], last: str) -> None:
        """Worker 0: siblings' published events into the outbox, with the read position, in one commit."""
        r = self.relay
        ops = Ops()
        records: list[FlowRecord] = []
        held: list[tuple[str, Held]] = []
        appended: dict[str, int] = {}
        for a, local in routes:
            ev = a.event
            remote = r.routes.interested(ev.topic)
            if not remote and not local:
                r.record(a.hop(r.region, fk.DROP, fk.NO_ROUTE, now_us()), into=records)
            for dst in remote:
                try:
                    item, overflow = r.outbox.append(
                        ops, dst, ev, a.parent, a.principal, a.sent_us, appended.get(dst, 0)
                    )
                except StoreFull:
                    r.record(a.hop(dst, fk.DROP, fk.BACKPRESSURE, now_us()), into=records)
                    continue
                appended[dst] = appended.get(dst, 0) + 1
                held.append((dst, item))
                for old in overflow:
                    r.record(dropped(old, r.region, dst, fk.EXPIRED, now_us()), into=records)
        r.outbox.persist(ops, set(appended))
        ops.hset(self.cursor_key, "routed", last)
        if records:
            ops.xadd(r.flow_stream, pack(records))

        def landed() -> None:
            for dst, item in held:
                r.outbox.channel(dst).hold(item)
            r.metrics.inc("sibling_events_total", len(held), path="routed")
            if held:
                r.wake()

        ops.then.append(landed)
        await r.committer.submit(ops)

    def _set_interest(self, sibling: str, patterns: list[str]) -> bool:
        """A sibling's live interest is now ``patterns``; whether the region's changed."""
        r = self.relay
        old = self.interest.get(sibling, [])
        if old == patterns:
            return False
        self.interest[sibling] = patterns
        self.wanted = PatternSet(p for ps in self.interest.values() for p in ps)
        added = r.local.add(patterns)
        return r.local.remove(old) or added

    async def reload_groups(self) -> None:
        """Take the group registry as stored whenever a sibling says it changed."""
        while True:
            await self._groups_changed.wait()
            self._groups_changed.clear()
            await self.relay.group_keeper.reload()

    # ---- peers that dial a worker -------------------------------------------------------------------

    async def peer_joined(self, region: str) -> None:
        """A peer dialed this worker: what the region applied from it so far (another worker may have moved it)."""
        r = self.relay
        if not self.on or any(c.region == region for c in r.mesh.inbound.values()):
            return
        raw: Any = await r.redis.hget(r.applied_key, region)
        if raw:
            r.origins[region] = OriginState.from_json(orjson.loads(raw))

    def own_lsa(self, ad: fr.LinkStateAd) -> fr.LinkStateAd:
        """The advertisement this worker gives peers: worker 0's, on the others."""
        return self.lsa if not self.owner and self.lsa is not None else ad

    # ---- heartbeats ---------------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        r = self.relay
        if not self.on:
            return
        while True:
            beat = {
                "pid": os.getpid(),
                "index": self.index,
                "owner": self.owner,
                "started_us": self.started_us,
                "restarts": self.restarts,
                "ts": now_us(),
                "interest": self._sent_interest or [],
                "links": {link.peer_region or link.name: link.state for link in r.links},
                "inbound": sorted({c.region for c in r.mesh.inbound.values()}),
                "authority": self.owner and r.authority.in_contact(),
                "known": self.owner and r.authority.known(),
            }
            try:
                await r.redis.hset(self.workers_key, r.name, orjson.dumps(beat))
                raw: Any = await r.redis.hgetall(self.workers_key)
                self.workers = {k.decode(): orjson.loads(v) for k, v in raw.items() if k.decode() in self.names}
                now = now_us()
                quiet = [
                    n for n, beat in self.workers.items() if n != r.name and now - int(beat["ts"]) >= ALIVE_S * 1e6
                ]
                # a worker gone quiet has no subscribers left
                if any([self._set_interest(name, []) for name in quiet]) and self.owner:
                    r.mesh.advertise()
            except RedisError as exc:
                log.warning("cannot write this worker's heartbeat", extra={"error": str(exc)[:200]})
            except (ValueError, KeyError, TypeError) as exc:
                log.error("unreadable worker heartbeat in the store", extra={"error": str(exc)[:200]})
            await asyncio.sleep(HEARTBEAT_S)

    def owner_says(self, what: str) -> bool:
        """Whether worker 0's last heartbeat, while it is alive, says ``what`` is true."""
        beat = self.workers.get(self.names[0])
        return beat is not None and now_us() - int(beat.get("ts", 0)) < ALIVE_S * 1e6 and beat.get(what) is True

    def owner_links(self) -> dict[str, str] | None:
        """Worker 0's links as its last heartbeat said, while it is alive (None when not known)."""
        beat = self.workers.get(self.names[0])
        if beat is None or now_us() - int(beat.get("ts", 0)) >= ALIVE_S * 1e6:
            return None
        return {str(k): str(v) for k, v in dict(beat.get("links") or {}).items()}

    def health(self) -> dict[str, Any]:
        """The region's workers as the store last said: alive (a heartbeat within ``ALIVE_S``) or not."""
        now = now_us()
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            beat = self.workers.get(name)
            if beat is None:
                out[name] = {"state": "unknown", "why": "no heartbeat in the store yet"}
                continue
            age_s = round((now - int(beat.get("ts", 0))) / 1e6, 1)
            out[name] = {
                "state": "up" if age_s < ALIVE_S else "down",
                "heartbeat_age_s": age_s,
                "pid": beat.get("pid"),
                "links": bool(beat.get("owner")),
                "inbound": beat.get("inbound", []),
                "restarts": beat.get("restarts", 0),
            }
        return {"workers": len(self.names), "this": self.relay.name, "members": out, "checked_at": time.time()}


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
