"""Where a relay's hops go: flow records (into a commit or the flow sink), counters and hop spans.

A record that must be durable with the event it describes (publish, deliver,
refusals made while accepting) goes ``into`` the commit's list; the others go
through the flow sink. Either way the hop is counted once here: events sent
per destination and topic, drops per reason, and a hop span when its trace is
sampled.
"""

from __future__ import annotations

from collections import Counter

from meshcore import flowrecord as fk
from meshcore.flowrecord import FlowRecord
from meshcore.metrics import Registry
from router.envelope import now_us
from router.flowsink import FlowSink
from router.hop import Hop, Subject
from router.spans import HopTracer
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
        if self.tracer.enabled and rec.trace_id and hop.parent:
            self.tracer.hop(
                f"meshscope {kind}",
                rec.trace_id,
                hop.span_id,
                hop.parent,
                hop.ts - int(hop.hop_ms * 1000),
                hop.ts,
                {
                    "messaging.destination.name": rec.topic,
                    "meshscope.kind": kind,
                    "meshscope.status": status,
                    "meshscope.src_region": hop.src,
                    "meshscope.dst_region": hop.dst,
                    "messaging.message.id": rec.event_id,
                    "enduser.id": hop.principal,
                },
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
