"""The publish path: events a producer hands to this relay, made durable, then routed.

Order of work: check duplicates (by principal, source and id), decide where
the event goes, then make it durable in ONE commit: local group appends, the
outbound store of every destination region, the events' duplicate keys (so a
retry is recognized after a restart too: ``router.dedup``), and the
publish/deliver/drop records that say so. Only once that commit landed is the
event marked as seen, handed to live subscribers and sent over the mesh, and
the publisher answered 202. When Redis fails the publisher gets 503 with
Retry-After and a retry is accepted, not called a duplicate; a stopping relay
answers 503 to new publishes and lets those in flight finish. (Validation,
policy and schema come before, in the HTTP and stream handlers and
``router.gate``.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshcore import flowrecord as fk
from meshcore.auth import Principal
from meshcore.flowrecord import FlowRecord, pack
from router.channel import Held
from router.committer import Ops, Unavailable
from router.dedup import dedup_key, pack_keys
from router.delivery import Arrival
from router.envelope import Event, now_us
from router.hop import Hop, Subject, dropped
from router.outbox import StoreFull
from router.subscription import Subscriber
from router.tracecontext import new_span_id

if TYPE_CHECKING:
    from router.relay import Relay


class InDoubt(Exception):
    """An earlier attempt of this event is still being made durable; the publisher retries later."""


CLOCK_RETRY_AFTER_S = 30.0


class ClockRefused(Unavailable):
    """The next hop to a destination refuses this relay's clock: its events would be refused there (503)."""


@dataclass
class PublishResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


PUBLISH_CHUNK = 1000
"""Events made durable by one commit of a large batch; between commits the relay serves everything else."""


class Publisher:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.in_flight = 0  # publishes between their first check and their answer

    async def publish_all(self, events: list[Event], principal: Principal) -> PublishResult:
        """``publish`` a batch of any size as commits of at most ``PUBLISH_CHUNK`` events, in order.

        Each chunk is routed, recorded and made durable as one ``publish``, and
        the loop serves everything else between them (health checks, mesh
        pings, other publishers), so 10,000 events never hold it for their
        whole. Refusals came before (a batch is refused whole); a 503 part way
        means the earlier chunks landed, and sending the batch again reports
        them as duplicates, as after any 503.
        """
        if len(events) <= PUBLISH_CHUNK:
            return await self.publish(events, principal)
        result = PublishResult()
        for start in range(0, len(events), PUBLISH_CHUNK):
            part = await self.publish(events[start : start + PUBLISH_CHUNK], principal)
            result.accepted += part.accepted
            result.duplicates += part.duplicates
        return result

    async def publish(self, events: list[Event], principal: Principal) -> PublishResult:
        """Make accepted events durable, then route them; raise Unavailable (503) when Redis fails."""
        r = self.relay
        if r.draining:
            raise Unavailable("the relay is stopping; publish again shortly (or to another relay of the region)", 1.0)
        if not r.ready.is_set():
            raise Unavailable("the relay is still loading its state from Redis", 1.0)
        r.committer.available()
        self.in_flight += 1
        try:
            return await self._publish(events, principal)
        finally:
            self.in_flight -= 1

    async def _publish(self, events: list[Event], principal: Principal) -> PublishResult:
        r = self.relay
        result = PublishResult()
        ops = Ops()
        records: list[FlowRecord] = []
        reserved: list[bytes] = []
        held: list[tuple[str, Held]] = []
        lives: list[tuple[Arrival, list[Subscriber]]] = []
        appended: Counter[str] = Counter()
        topics: Counter[tuple[str, str]] = Counter()
        region = r.region
        who = principal.name
        siblings = r.siblings
        handover = siblings.on and not siblings.owner  # worker 0 routes this worker's events to other regions
        rows: list[list[object]] = []
        if siblings.on:
            await siblings.catch_up()
        try:
            for ev in events:
                key = dedup_key(who, ev.source, ev.id)
                state = r.dedup.state(key)
                if state == "pending":
                    raise InDoubt(f"an earlier attempt of event {ev.id!r} is still being stored; retry shortly")
                start = ev.published_us = now_us()
                span, parent, subject = new_span_id(), ev.trace.span_id, Subject.of_event(ev)
                if state == "seen":
                    result.duplicates.append(ev.id)
                    r.record(Hop(subject, fk.DROP, span, parent, region, region, start, 0.0, fk.DUPLICATE, 1, 0, who))
                    continue
                r.dedup.reserve(key)
                reserved.append(key)
                result.accepted.append(ev.id)
                topics[("producer", ev.topic)] += 1
                local = r.local.patterns.matches(ev.topic)
                remote = () if handover else r.routes.interested(ev.topic)  # worker 0 routes a sibling's
                if r.clock_refused:
                    self._check_clocks(remote)
                if not local and not remote and not handover:
                    hop = Hop(subject, fk.DROP, span, parent, region, region, start, 0.0, fk.NO_ROUTE, 1, 0, who)
                    r.record(hop, into=records)
                    continue
                ts = now_us()
                r.record(
                    Hop(subject, fk.PUBLISH, span, parent, region, region, ts, (ts - start) / 1000, fk.OK, 1, 0, who),
                    into=records,
                )
                if local or handover:
                    arrival = Arrival(ev, span, region, ts, principal=who)
                    if local:
                        subs = r.delivery.deliver(arrival, ops, records)
                        if subs:
                            lives.append((arrival, subs))
                    if handover or siblings.wants(ev.topic):
                        rows.append(siblings.row(arrival, handover, local))
                for dst in remote:
                    item, overflow = r.outbox.append(ops, dst, ev, span, who, start, appended[dst])
                    appended[dst] += 1
                    held.append((dst, item))
                    for old in overflow:
                        r.record(dropped(old, region, dst, fk.EXPIRED, ts), into=records)
        except (InDoubt, StoreFull, ClockRefused):
            for reserved_key in reserved:
                r.dedup.release(reserved_key)
            for dst, n in appended.items():
                r.outbox.channels[dst].next_seq -= n
            r.outbox.discard()
            raise
        r.outbox.persist(ops, set(appended))
        siblings.add_events(ops, rows)
        if reserved and r.dedup_log is not None:
            now_ms = now_us() // 1000
            ops.xadd(r.dedup_stream, {b"k": pack_keys(reserved)}, min_id_ms=r.dedup_log.min_id_ms(now_ms))
            r.dedup_log.wrote(now_ms, len(reserved))
        if records:
            ops.xadd(r.flow_stream, pack(records))

        def landed() -> None:
            for key in reserved:
                r.dedup.commit(key)
            for dst, item in held:
                r.outbox.channel(dst).hold(item)
            for arrival, subs in lives:
                r.delivery.offer(arrival, subs)
            if held:
                r.wake()

        ops.then.append(landed)
        r.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        await r.committer.commit(ops, r.config.publish_timeout_s)
        r.record.flush_counts()
        return result

    def _check_clocks(self, remote: Sequence[str]) -> None:
        """Raise ClockRefused when the next hop to one of ``remote`` refuses this relay's clock."""
        r = self.relay
        for dst in remote:
            reason = r.clock_refused.get(r.routes.route(dst).next_hop or dst) or r.clock_refused.get(dst)
            if reason:
                raise ClockRefused(
                    f"events for {dst} would be refused there: {reason}; fix this relay's clock (or its peer's)",
                    CLOCK_RETRY_AFTER_S,
                )
