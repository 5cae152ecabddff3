"""OTel SDK hop spans, following the messaging semantic conventions, sampled parent-based.

Sampling: one SDK span costs 33-90 µs, so only sampled traces get one, and
the decision is the producer's: an event whose ``traceparent`` has the
sampled flag gets a span at every relay it crosses, one without it gets none
(OpenTelemetry's ``ParentBased`` sampler). A trace the relay starts itself
(the producer sent no context) is its root: ``MESHSCOPE_TRACE_SAMPLE_RATIO``
of them are sampled, decided on the trace id as ``TraceIdRatioBased`` does,
and the decision is written into the event's ``traceparent`` flags
(``router.envelope``), so every later relay and consumer follows it.

Span shape (OpenTelemetry semantic conventions for messaging): a publish,
forward or transit hop is a ``PRODUCER`` span (``messaging.operation.type``
``send``), a delivery a ``CONSUMER`` span (``receive``); the name is
``{operation} {topic}``; ``messaging.system`` is ``meshscope``. A drop is
the operation it ended, with error status and ``error.type`` set to the
reason, so a backend's error rate counts it. The span ids the relay already
chose for the flow records are handed to the SDK through ``HopIds``, so an
exported span and its flow record share one id.

Resource: ``service.name`` defaults to ``meshscope-relay``; ``cloud.provider``
and ``cloud.region`` come from the region id (``aws:us-east-1`` is provider
``aws``, region ``us-east-1``); ``OTEL_RESOURCE_ATTRIBUTES`` and then
``OTEL_SERVICE_NAME`` override them, as every OpenTelemetry SDK does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote

from opentelemetry import trace as api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from meshcore import flowrecord as fk

MESSAGING_SYSTEM = "meshscope"
DEFAULT_SERVICE_NAME = "meshscope-relay"
SEND, RECEIVE = "send", "receive"


class SpanShape(NamedTuple):
    """How one hop appears as a span: its kind, ``messaging.operation.type`` and ``.name``."""

    kind: SpanKind
    operation_type: str
    operation: str


_PUBLISH = SpanShape(SpanKind.PRODUCER, SEND, "publish")
_FORWARD = SpanShape(SpanKind.PRODUCER, SEND, "forward")
_DELIVER = SpanShape(SpanKind.CONSUMER, RECEIVE, "deliver")
SHAPES: dict[str, SpanShape] = {
    fk.PUBLISH: _PUBLISH,
    fk.FORWARD: _FORWARD,
    fk.TRANSIT: SpanShape(SpanKind.PRODUCER, SEND, "transit"),
    fk.DELIVER: _DELIVER,
}
"""Each kind of hop that is not a drop, as a span."""
DELIVERY_LOSSES = frozenset((fk.DELIVERY_FAILED, fk.BACKPRESSURE, fk.EXPIRED))
"""Drop reasons that, in the event's destination region, end its delivery rather than its publish."""


def shape_of(kind: str, status: str, src: str, dst: str, region: str) -> SpanShape:
    """The span shape of a hop at a relay of ``region``; a drop takes the shape of the operation it ended.

    A drop bound for another region ends a forward; one that arrived from another region, or a
    delivery loss in this region, ends a delivery; the rest (duplicate, no route, refusals at the
    edge) end a publish.
    """
    if kind != fk.DROP:
        return SHAPES[kind]
    if dst != region:
        return _FORWARD
    if src != region or status in DELIVERY_LOSSES:
        return _DELIVER
    return _PUBLISH


def resource_attributes(
    region_id: str, relay: str, service_name: str | None = None, resource_attributes: str | None = None
) -> dict[str, str]:
    """The relay's resource: its defaults, then ``OTEL_RESOURCE_ATTRIBUTES``, then ``OTEL_SERVICE_NAME``."""
    provider, _, name = region_id.partition(":")
    out = {
        "service.name": DEFAULT_SERVICE_NAME,
        "service.instance.id": relay,
        "cloud.provider": provider,
        "cloud.region": name or region_id,
        "meshscope.region": region_id,
        "meshscope.relay": relay,
    }
    out.update(parse_resource_attributes(resource_attributes or ""))
    if service_name:
        out["service.name"] = service_name
    return out


def parse_resource_attributes(text: str) -> dict[str, str]:
    """``key1=value1,key2=value2`` (values percent-encoded), as the OTel SDK environment spec says.

    A member without ``=`` or with an empty key is skipped, as the SDKs do.
    """
    out: dict[str, str] = {}
    for member in text.split(","):
        key, sep, value = member.partition("=")
        key = key.strip()
        if sep and key:
            out[key] = unquote(value.strip())
    return out


class HopIds(IdGenerator):
    """Hands the SDK the span id the relay picked for the hop (and the trace id of a hop with no parent)."""

    def __init__(self) -> None:
        self.next_span_id = 0
        self.next_trace_id = 0

    def generate_span_id(self) -> int:
        return self.next_span_id

    def generate_trace_id(self) -> int:
        return self.next_trace_id


class HopTracer:
    def __init__(
        self,
        region: str,
        relay: str,
        ratio: float,
        exporter: SpanExporter | None = None,
        processor: SpanProcessor | None = None,
        resource: Mapping[str, str] | None = None,
    ):
        self.region = region
        self.ratio = ratio
        """Share of the traces this relay starts (no context from the producer) that are sampled."""
        self._bound = int(min(max(ratio, 0.0), 1.0) * (1 << 64))
        self.enabled = exporter is not None or processor is not None
        self._ids = HopIds()
        self._provider = TracerProvider(
            resource=Resource.create(dict(resource or resource_attributes(region, relay))),
            id_generator=self._ids,
            sampler=ALWAYS_ON,  # the decision is made before a span is started (Recorder), not by OTEL_TRACES_SAMPLER
        )
        if processor is not None:
            self._provider.add_span_processor(processor)
        elif exporter is not None:
            self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("meshscope.router")

    def sample_root(self, trace_id: str) -> bool:
        """Whether a trace this relay starts is sampled: ``ratio`` of trace ids, as ``TraceIdRatioBased``."""
        return int(trace_id[16:], 16) < self._bound

    def hop(
        self,
        shape: SpanShape,
        topic: str,
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        start_us: int,
        end_us: int,
        attributes: dict[str, str | int | float],
        error: str = "",
    ) -> None:
        """Record one finished hop span of a sampled trace; ``error`` (a drop reason) makes it an error span."""
        ids = self._ids
        ids.next_span_id = int(span_id, 16)
        if parent_span_id:
            parent = SpanContext(int(trace_id, 16), int(parent_span_id, 16), is_remote=True, trace_flags=_SAMPLED)
            context = api.set_span_in_context(NonRecordingSpan(parent))
        else:  # a refusal at the edge names the trace but no span of it: a root span in that trace
            ids.next_trace_id = int(trace_id, 16)
            context = api.set_span_in_context(api.INVALID_SPAN)
        attributes["messaging.system"] = MESSAGING_SYSTEM
        attributes["messaging.operation.type"] = shape.operation_type
        attributes["messaging.operation.name"] = shape.operation
        attributes["messaging.destination.name"] = topic
        if error:
            attributes["error.type"] = error
        span = self._tracer.start_span(
            f"{shape.operation} {topic}" if topic else shape.operation,
            context=context,
            kind=shape.kind,
            attributes=attributes,
            start_time=start_us * 1000,
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=max(end_us, start_us) * 1000)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every finished span now; False when the exporter did not finish in ``timeout_s``."""
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self._provider.shutdown()


_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
