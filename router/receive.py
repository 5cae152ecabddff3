"""The mesh receive path: an EVENTS frame from an authenticated peer, applied once, then acknowledged.

Items for this region are validated as strictly as a publish, checked against
what was already applied from their origin (``router.origin``: resends are
idempotent, gaps are named, and only the origin's own link moves its sequence
state; an item that came over a detour and would move it past what the origin
established is refused, and one whose origin's sequence went back is held back
and the origin told), and applied like a publish's local delivery:
group appends, deliver records and the receiver's applied state in one
commit. The batch is acknowledged only once that commit landed. Items bound
for other regions are passed on (``Outbox.transit``). An item refused for
good is acknowledged too, so it is not sent forever, and leaves a ``drop``
record naming what can still be read of it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from meshcore import flowrecord as fk
from meshcore.flowrecord import FlowRecord, pack
from router import frame as fr
from router.committer import Ops
from router.delivery import Arrival
from router.envelope import now_us, validate_event
from router.errors import InvalidInput
from router.hop import NOTHING, Hop, Subject, gap
from router.origin import Claim, OriginState
from router.outbox import ranges_of
from router.subscription import Subscriber
from router.tracecontext import new_span_id, parse_traceparent

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

Key = tuple[str, str, int]  # (origin, epoch, seq)


class MeshReceiver:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    async def receive(self, peer: str, frame: dict[str, Any], reply: Callable[[bytes], None]) -> None:
        """Apply an EVENTS frame from authenticated ``peer``; acknowledge once its durable steps landed."""
        r = self.relay
        config = r.config
        await r.ready.wait()
        if r.draining:
            return  # stopping: left unacknowledged, the sender sends it again (to us once we are back)
        r.committer.available()
        now = now_us()
        good, bad = fr.items_of(
            frame,
            peer,
            r.region,
            now,
            int(config.link_store_max_age_s * 1_000_000) + int(config.clock_skew_s * 1_000_000),
            int(config.clock_skew_s * 1_000_000),
            config.hop_limit,
        )
        acks: list[Key] = []
        records: list[FlowRecord] = []
        for b in bad:
            self._refuse(peer, b.reason, b.key, acks, records, bad=b)
        ops = Ops()
        lives: list[tuple[Arrival, list[Subscriber]]] = []
        rows: list[list[object]] = []  # for the live subscribers of the region's other workers
        onward: list[fr.Item] = []
        changed: set[str] = set()
        behind: dict[tuple[str, str], int] = {}
        topics: Counter[tuple[str, str]] = Counter()
        for item in good:
            key = (item.origin, item.epoch, item.seq)
            if item.dst != r.region:
                onward.append(item)
                continue
            tp = parse_traceparent(item.event.get("traceparent"))
            try:
                if tp is None:
                    raise InvalidInput("a mesh event must carry a valid traceparent")
                ev = validate_event(item.event, r.limits)
            except InvalidInput as exc:
                self._refuse(peer, f"event: {exc}", key, acks, records, item)
                continue
            state = r.origins.setdefault(item.origin, OriginState())
            claim = Claim(item.epoch, item.seq, item.floor, item.high, item.sent_us, item.lineage)
            admission = state.admit(claim, direct=peer == item.origin)
            changed.add(item.origin)
            for first, last in admission.gaps:
                log.error("events lost in transit", extra={"origin": item.origin, "first": first, "last": last})
                r.record(gap(item.origin, r.region, first, last), into=records)
            if admission.behind:
                # the origin claims less than was applied here: not applied, not acknowledged; it is told
                behind[(item.origin, item.epoch)] = admission.behind
                r.metrics.inc("mesh_items_held_back_total", origin=item.origin)
                continue
            if admission.refused:
                self._refuse(peer, f"sequence: {admission.refused}", key, acks, records, item)
                continue
            acks.append(key)
            if not admission.apply:
                r.metrics.inc("mesh_duplicates_total")
                continue
            ev.published_us = item.published_us
            topics[(item.origin, ev.topic)] += 1
            arrival = Arrival(
                ev,
                item.span_id,
                item.origin,
                item.sent_us,
                item.attempt,
                item.seq,
                item.principal,
                peer if peer != item.origin else "",
            )
            subs = r.delivery.deliver(arrival, ops, records)
            if subs:
                lives.append((arrival, subs))
            if r.siblings.wants(ev.topic):
                rows.append(r.siblings.row(arrival, False, True))
        r.siblings.add_events(ops, rows)
        for origin in changed:
            ops.hset(r.applied_key, origin, orjson.dumps(r.origins[origin].to_json()))
        if records:
            ops.xadd(r.flow_stream, pack(records))

        if behind:
            log.error(
                "an origin's sequence went back below what was applied here; its items are held back",
                extra={"peer": peer, "sequences": [[o, e, h] for (o, e), h in behind.items()]},
            )

        def landed() -> None:
            for arrival, subs in lives:
                r.delivery.offer(arrival, subs)
            if behind:
                notices = [[origin, epoch, high] for (origin, epoch), high in behind.items()]
                reply(fr.encode(fr.ACK, a=ranges_of(acks), r=notices))
            elif acks:
                reply(fr.encode(fr.ACK, a=ranges_of(acks)))

        ops.then.append(landed)
        if onward:
            r.outbox.transit(onward, lambda ranges: reply(fr.encode(fr.ACK, a=ranges)))
            r.metrics.inc("transit_total", len(onward))
        r.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        r.record.flush_counts()
        done = r.committer.submit(ops)
        if r.committer.backlog > 20:
            await done  # Redis is slow: stop reading this peer until it catches up

    def _refuse(
        self,
        peer: str,
        reason: str,
        key: Key | None,
        acks: list[Key],
        records: list[FlowRecord],
        item: fr.Item | None = None,
        bad: fr.BadItem | None = None,
    ) -> None:
        """Refuse one mesh item for good: logged, counted, and, when it can be named, a drop record.

        The record names the item by origin and sequence number (the origin's ``forward``
        record carries the same pair), and by what can still be read of its event (id, topic,
        trace id), whether the item failed its own checks or only its event did, so search
        and the trace view show where the event ended.
        """
        r = self.relay
        if item is not None:
            subject, parent = Subject.of_body(item.event, item.published_us), item.span_id
        elif bad is not None:
            subject, parent = Subject.of_body(bad.event), bad.span_id
        else:
            subject, parent = NOTHING, ""
        log.warning(
            "peer sent a malformed mesh item; refused",
            extra={"peer": peer, "reason": reason[:200], "event_id": subject.event_id, "trace_id": subject.trace_id},
        )
        r.metrics.inc("mesh_refused_items_total", peer=peer)
        if key is None:
            r.metrics.inc("drops_total", reason=fk.MALFORMED)
            return
        acks.append(key)  # refused for good: the sender must not send it forever
        origin, _, seq = key
        r.record(
            Hop(
                subject,
                fk.DROP,
                new_span_id(),
                parent,
                origin,
                r.region,
                now_us(),
                status=fk.MALFORMED,
                attempt=item.attempt if item else 1,
                seq=seq,
                principal=item.principal if item else "",
                via=peer if peer != origin else "",
            ),
            into=records,
        )
