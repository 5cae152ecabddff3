"""OTel SDK hop spans, head-sampled by trace id.

One SDK span costs 33-90 µs, so only a ``ratio`` of traces get one; the
decision hashes the trace id the way ``TraceIdRatioBased`` does, so every relay
samples the same traces and a sampled trace is whole. The span ids the relay
already chose for the flow records are handed to the SDK through ``HopIds``,
so an exported span and its flow record share one id.
"""

from __future__ import annotations

from opentelemetry import trace as api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags


class HopIds(IdGenerator):
    """Hands the SDK the span id the relay picked for the hop."""

    def __init__(self) -> None:
        self.next_span_id = 0

    def generate_span_id(self) -> int:
        return self.next_span_id

    def generate_trace_id(self) -> int:  # only used for root spans, which we never start
        raise RuntimeError("hop spans always have a parent")


class HopTracer:
    def __init__(
        self,
        region: str,
        relay: str,
        ratio: float,
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
    ):
        self.ratio = ratio
        self._bound = int(min(max(ratio, 0.0), 1.0) * (1 << 64))
        self.enabled = (exporter is not None or processor is not None) and ratio > 0
        self._ids = HopIds()
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": "meshscope-relay", "cloud.region": region, "meshscope.relay": relay}
            ),
            id_generator=self._ids,
        )
        if processor is not None:
            self._provider.add_span_processor(processor)
        elif exporter is not None:
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("meshscope.router")

    def sampled(self, trace_id: str) -> bool:
        return self.enabled and int(trace_id[16:], 16) < self._bound

    def hop(
        self,
        name: str,
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        start_us: int,
        end_us: int,
        attributes: dict[str, str | int | float],
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        """Record one finished hop span when its trace is sampled."""
        if not self.sampled(trace_id):
            return
        parent = SpanContext(int(trace_id, 16), int(parent_span_id, 16), is_remote=True, trace_flags=TraceFlags(1))
        self._ids.next_span_id = int(span_id, 16)
        span = self._tracer.start_span(
            name,
            context=api.set_span_in_context(NonRecordingSpan(parent)),
            kind=kind,
            attributes=attributes,
            start_time=start_us * 1000,
        )
        span.end(end_time=max(end_us, start_us) * 1000)

    def shutdown(self) -> None:
        self._provider.shutdown()


def otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
