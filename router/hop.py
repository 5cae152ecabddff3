"""One hop of one event, as a record: the flow record, metrics and hop span are derived from it.

A hop is built once where it happens (publish, forward, transit, deliver,
drop) and handed on by name, instead of sixteen loose arguments. ``Subject``
is what a record can say of the event itself: everything for an accepted
``Event``, and for an item or a stored entry that could not be accepted,
what can still be read of it (id, topic, trace id), so that search and the
trace view show where it ended. Both are tuples: building one costs about
what a tuple does, on the relay's per-event path.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from meshcore import flowrecord as fk
from meshcore.flowrecord import FlowRecord
from router.channel import Held
from router.envelope import Event, now_us
from router.tracecontext import is_sampled, new_span_id, parse_traceparent

MAX_ID_CHARS = 256
MAX_TOPIC_CHARS = 255
MAX_DATASCHEMA_CHARS = 2048


class Subject(NamedTuple):
    """What a flow record names of the event: its id, trace, topic, size and when it was published.

    ``sampled`` is the sampled flag of the event's ``traceparent``: whether its hops get spans.
    """

    event_id: str = ""
    trace_id: str = ""
    topic: str = ""
    size: int = 0
    published_us: int = 0
    dataschema: str = ""
    sampled: bool = False

    @classmethod
    def of_event(cls, ev: Event) -> Subject:
        schema = ev.body.get("dataschema", "")
        trace = ev.trace
        # _make: a tuple without the keyword handling of the generated __new__ (this runs per hop)
        return cls._make(
            (
                ev.id,
                trace.trace_id,
                ev.topic,
                ev.size,
                ev.published_us,
                schema if type(schema) is str else "",
                is_sampled(trace.flags),
            )
        )

    @classmethod
    def of_body(cls, body: object, published_us: int = 0) -> Subject:
        """What can still be read of an event that was not accepted: each field only when it has its type."""
        if not isinstance(body, dict):
            return cls(published_us=published_us)
        tp = parse_traceparent(body.get("traceparent"))
        return cls(
            _text(body.get("id"), MAX_ID_CHARS),
            tp.trace_id if tp else "",
            _text(body.get("type"), MAX_TOPIC_CHARS),
            0,
            published_us,
            _text(body.get("dataschema"), MAX_DATASCHEMA_CHARS),
            tp.sampled if tp else False,
        )


NOTHING = Subject()
"""A record that names no event (a gap: a range of sequence numbers)."""


def _text(value: Any, limit: int) -> str:
    return value[:limit] if type(value) is str else ""


class Hop(NamedTuple):
    """One hop of one event at this relay: what happened (``kind``/``status``), between which regions, when."""

    subject: Subject
    kind: str
    span_id: str
    parent: str  # the span this hop continues: the publish span, or the previous relay's hop span
    src: str
    dst: str
    ts: int  # µs since the epoch, when the hop ended
    hop_ms: float = 0.0
    status: str = fk.OK
    attempt: int = 1
    seq: int = 0  # the origin's sequence number for ``dst`` (0 outside the mesh)
    principal: str = ""
    via: str = ""  # the next hop of a forward or transit, the previous hop of a delivery on a detour
    seq_end: int = 0  # the last number a gap stands for

    def flow_record(self, relay: str) -> FlowRecord:
        (subject, kind, span_id, parent, src, dst, ts, hop_ms, status, attempt, seq, principal, via, seq_end) = self
        event_id, trace_id, topic, size, published_us, dataschema, _ = subject
        e2e_ms = (ts - published_us) / 1000 if published_us else 0.0
        return FlowRecord._make(
            (
                ts,
                event_id,
                trace_id,
                span_id,
                parent,
                topic,
                kind,
                src,
                dst,
                relay,
                hop_ms,
                e2e_ms,
                status,
                size,
                attempt,
                seq,
                principal,
                via,
                seq_end,
                dataschema,
            )
        )


def dropped(held: Held, origin: str, dst: str, status: str, ts: int) -> Hop:
    """The drop record of an event held for ``dst`` and given up (expired, or pushed out by the overflow policy)."""
    return Hop(
        Subject.of_event(held.event),
        fk.DROP,
        new_span_id(),
        held.span_id,
        origin,
        dst,
        ts,
        0.0,
        status,
        held.attempt or 1,
        held.seq,
        held.principal,
    )


def trimmed(region: str, records: int, oldest_us: int) -> Hop:
    """The drop record of ``records`` flow records the region's full stream gave up, the oldest from ``oldest_us``."""
    subject = NOTHING._replace(published_us=oldest_us)
    return Hop(subject, fk.DROP, new_span_id(), "", region, region, now_us(), status=fk.TRIMMED, seq=records)


def rolled_back(src: str, dst: str, first: int) -> Hop:
    """The record of a sequence that went back: numbers from ``first`` that ``src`` had not sent may be lost."""
    return Hop(NOTHING, fk.DROP, new_span_id(), "", src, dst, now_us(), status=fk.ROLLED_BACK, seq=first)


def gap(src: str, dst: str, first: int, last: int) -> Hop:
    """The drop record of the sequence numbers ``first..last`` from ``src`` to ``dst`` that will never arrive."""
    return Hop(NOTHING, fk.DROP, new_span_id(), "", src, dst, now_us(), status=fk.GAP, seq=first, seq_end=last)
