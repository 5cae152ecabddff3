"""Delivery in this relay's own region: durable groups and live subscribers, for published and mesh events.

An event that arrived (published here, or applied from the mesh) is matched
against live subscribers and durable groups; each member's policy decides
what it may read. The group appends and the ``deliver`` record (or a ``drop``
naming why nobody got it) join the caller's commit; live subscribers get the
event only once that commit landed (``offer``), and one whose buffer is full
loses it with a ``backpressure`` record.
"""

from __future__ import annotations

import random
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import orjson

from meshcore import flowrecord as fk
from meshcore.flowrecord import FlowRecord
from meshcore.metrics import E2E_LATENCY_MS, HOP_LATENCY_MS
from router.committer import Ops
from router.envelope import Event, now_us
from router.hop import Hop, Subject
from router.subscription import Subscriber
from router.tracecontext import is_sampled, new_span_id

if TYPE_CHECKING:
    from router.relay import Relay


class Arrival(NamedTuple):
    """An event that reached its destination region here, and the hop that brought it."""

    event: Event
    parent: str  # the span of the hop that brought it (the publish span, or the sender's forward)
    src: str  # the origin region
    sent_us: int  # when the previous hop sent it (or when it was published here)
    attempt: int = 1
    seq: int = 0
    principal: str = ""
    via: str = ""  # the relay it came through, when that is not the origin

    def hop(self, region: str, kind: str, status: str, ts: int) -> Hop:
        """This arrival's hop at ``region``, ending at ``ts``."""
        return Hop(
            Subject.of_event(self.event),
            kind,
            new_span_id(),
            self.parent,
            self.src,
            region,
            ts,
            (ts - self.sent_us) / 1000,
            status,
            self.attempt,
            self.seq,
            self.principal,
            self.via,
        )


class LocalDelivery:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def deliver(self, a: Arrival, ops: Ops, records: list[FlowRecord]) -> list[Subscriber]:
        """Add the group appends and the deliver (or drop) record of one event; return its live subscribers."""
        r = self.relay
        ev = a.event
        ts = now_us()
        hop_ms = (ts - a.sent_us) / 1000
        region = r.region

        if r.config.failure_rate and random.random() < r.config.failure_rate:
            r.record(a.hop(region, fk.DROP, fk.DELIVERY_FAILED, ts), into=records)
            return []
        topic = ev.topic
        subs = []
        filtered = 0
        for s in r.wanted.match(topic):
            if s.gate is None or s.gate(topic):
                subs.append(s)
            else:
                filtered += 1
        groups = []
        for g in r.groups.matching(topic):
            gate = r.gate.group_gate(g)
            if gate is None or gate(topic):
                groups.append(g)
            else:
                filtered += 1
        if filtered:
            r.metrics.inc("policy_filtered_total", filtered)
        data = ev.encoded or orjson.dumps(ev.body)
        for group in groups:
            ops.xadd(r.groups.stream(group), {b"e": data})  # trimmed by the group keeper only
        if groups:
            ops.then.append(partial(r.group_sessions.wake, groups))  # members here read as soon as it landed
        if subs or groups:
            r.record(a.hop(region, fk.DELIVER, fk.OK, ts), into=records)
            # an exemplar only for a sampled trace: one a trace backend can have
            trace_id = ev.trace.trace_id if is_sampled(ev.trace.flags) else None
            r.metrics.observe(HOP_LATENCY_MS, hop_ms, trace_id, peer=a.src, topic=topic)
            if ev.published_us:
                r.metrics.observe(E2E_LATENCY_MS, (ts - ev.published_us) / 1000, trace_id, peer=a.src, topic=topic)
        elif not r.siblings.wants(topic):  # else another worker of the region delivers it, and records that
            r.record(a.hop(region, fk.DROP, fk.POLICY_DENIED if filtered else fk.NO_ROUTE, ts), into=records)
        return subs

    def offer(self, a: Arrival, subs: list[Subscriber]) -> None:
        """Hand a durable event to live subscribers; a full buffer costs that subscriber the event, recorded."""
        r = self.relay
        ev = a.event
        data = ev.encoded or orjson.dumps(ev.body)
        for sub in subs:
            if sub.id in r.subscribers and not sub.offer(data):
                r.record(a.hop(r.region, fk.DROP, fk.BACKPRESSURE, now_us()))
