"""Where a relay's hops go: flow records (into a commit or the flow sink), counters and hop spans.

A record that must be durable with the event it describes (publish, deliver,
refusals made while accepting) goes ``into`` the commit's list; the others go
through the flow sink. Either way the hop is counted once here: events sent
per destination and topic, drops per reason, and a hop span when the event's
trace is sampled (the sampled flag of its ``traceparent``: ``router.spans``).
"""

from __future__ import annotations

from collections import Counter

from meshcore import flowrecord as fk
from meshcore.flowrecord import FlowRecord
from meshcore.metrics import Registry
from router.envelope import now_us
from router.flowsink import FlowSink
from router.hop import Hop, Subject
from router.spans import HopTracer, shape_of
from router.tracecontext import new_span_id


class Recorder:
    def __init__(self, region: str, relay: str, sink: FlowSink, metrics: Registry, tracer: HopTracer):
        self.region = region
        self.relay = relay
        self.sink = sink
        self.metrics = metrics
        self.tracer = tracer
        self._out: Counter[tuple[str, str]] = Counter()

    def __call__(self, hop: Hop, into: list[FlowRecord] | None = None) -> None:
        """Record one hop: into a commit's records when ``into`` is given, else through the sink."""
        rec = hop.flow_record(self.relay)
        if into is not None:
            into.append(rec)
        else:
            self.sink.add(rec)
        kind, status = hop.kind, hop.status
        if kind == fk.FORWARD:
            self._out[(hop.dst, rec.topic)] += 1
        elif kind == fk.DELIVER:
            self._out[("local", rec.topic)] += 1
        if status != fk.OK:
            self.metrics.inc("drops_total", reason=status)
        if not self.tracer.enabled:  # no exporter: nothing more to do per hop
            return
        subject = hop.subject
        if subject.sampled and subject.trace_id:
            self.tracer.hop(
                shape_of(kind, status, hop.src, hop.dst, self.region),
                subject.topic,
                subject.trace_id,
                hop.span_id,
                hop.parent,
                hop.ts - int(hop.hop_ms * 1000),
                hop.ts,
                {
                    "messaging.message.id": subject.event_id,
                    "messaging.message.body.size": subject.size,
                    "meshscope.kind": kind,
                    "meshscope.status": status,
                    "meshscope.src_region": hop.src,
                    "meshscope.dst_region": hop.dst,
                    "meshscope.attempt": hop.attempt,
                    "enduser.id": hop.principal,
                },
                "" if status == fk.OK else status,
            )

    def refused(self, subject: Subject, status: str, principal: str) -> None:
        """A drop record for an event refused at this relay's edge, or given up by one of its groups."""
        self(
            Hop(
                subject,
                fk.DROP,
                new_span_id(),
                "",
                self.region,
                self.region,
                now_us(),
                status=status,
                principal=principal,
            )
        )

    def flush_counts(self) -> None:
        """Move the events counted as sent since the last call into ``events_out_total``."""
        if self._out:
            self.metrics.inc_many("events_out_total", ("destination", "topic"), self._out)
            self._out.clear()
