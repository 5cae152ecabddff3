"""Hop spans as an OTLP receiver gets them: kinds, messaging attributes, names, resource, sampling, errors.

The relays export over real OTLP/HTTP (protobuf) to a receiver in this test,
which decodes every request with opentelemetry-proto. The mesh has no direct
link between A and B, so an event from A to B takes a detour through C.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meshcore import flowrecord as fk
from meshcore.server import bind
from router.spans import SHAPES, parse_resource_attributes, resource_attributes, shape_of
from router.tracecontext import new_root, ratio_sampled
from tests.conftest import CE_JSON, Mesh, cloud_event, eventually, write_principals

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"
TOPIC = "orders.created"
SAMPLED_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
UNSAMPLED_TRACE = "5cf92f3577b34da6a3ce929d0e0e4737"
PRODUCER_SPAN = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP trace receiver: every span of every request, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Span]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                assert self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            receiver.spans.extend((resource, span) for span in ss.spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_trace(self, trace_id: str) -> list[tuple[dict[str, Any], Span]]:
        with self.lock:
            return [(r, s) for r, s in self.spans if s.trace_id.hex() == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


def attrs(span: Span) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in span.attributes}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


async def detour_mesh(mesh: Mesh, receiver: Receiver) -> None:
    """A - C - B with no link between A and B; spans exported to ``receiver``."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "orders-mesh",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,service.name=overridden,team=pay%20ments",
        "MESHSCOPE_TRACE_SAMPLE_RATIO": "0",  # traces the relay starts: none sampled
    }
    socks = {r: bind() for r in (A, B, C)}
    url = {r: mesh.peer_url(r, s.getsockname()[1]) for r, s in socks.items()}
    mesh.regions = sorted((A, B, C))
    write_principals(mesh.auth_file, mesh.regions)  # every relay knows the others' tokens from the start
    for region, peers in ((C, (url[A], url[B])), (A, (url[C],)), (B, (url[C],))):
        await mesh.start_one(region, sock=socks[region], peers=peers, env=env)
    for region in (A, B, C):
        await eventually(lambda region=region: mesh.all_links_up(region), 10)


async def test_spans_of_a_detoured_event_follow_the_messaging_conventions(
    mesh: Mesh, http: httpx.AsyncClient, receiver: Receiver
) -> None:
    await detour_mesh(mesh, receiver)
    sub = mesh[B].relay.subscribe(["orders.>"])
    await eventually(lambda: B in mesh[A].relay.routes.interested(TOPIC), 10)
    route = mesh[A].relay.routes.route(B)
    assert route is not None and route.next_hop == C  # the detour
    url = f"{mesh[A].url}/v1/events"

    async def post(event: dict[str, Any]) -> httpx.Response:
        return await http.post(url, headers=CE_JSON, content=orjson.dumps(event))

    sampled_tp = f"00-{SAMPLED_TRACE}-{PRODUCER_SPAN}-01"
    unsampled_tp = f"00-{UNSAMPLED_TRACE}-{PRODUCER_SPAN}-00"
    assert (await post(cloud_event(TOPIC, "s-1", traceparent=sampled_tp))).status_code == 202
    assert (await post(cloud_event(TOPIC, "u-1", traceparent=unsampled_tp))).status_code == 202
    assert (await post(cloud_event(TOPIC, "n-1"))).status_code == 202  # no context: the relay's root, ratio 0
    # drops of the sampled trace: a duplicate, no route, and a malformed event refused at the edge
    assert (await post(cloud_event(TOPIC, "s-1", traceparent=sampled_tp))).json()["duplicates"] == ["s-1"]
    assert (await post(cloud_event("nobody.listens", "s-2", traceparent=sampled_tp))).status_code == 202
    bad = cloud_event(TOPIC, "s-3", traceparent=sampled_tp, time="yesterday")
    assert (await post(bad)).status_code == 400
    delivered = [await eventually(lambda: not sub.queue.empty() and sub.queue.get_nowait(), 10) for _ in range(3)]
    by_id = {ev["id"]: ev for ev in (orjson.loads(d) for d in delivered)}
    assert by_id["n-1"]["traceparent"].endswith("-02")  # the relay's own trace, not sampled, says so downstream

    def spans_in() -> list[tuple[dict[str, Any], Span]] | None:
        for region in (A, B, C):
            mesh[region].relay.tracer.flush()
        found = receiver.of_trace(SAMPLED_TRACE)
        return found if len(found) >= 7 else None

    found = await eventually(spans_in, 10)
    assert receiver.of_trace(UNSAMPLED_TRACE) == []
    assert [s for _, s in receiver.spans if attrs(s).get("messaging.message.id") == "n-1"] == []

    by_op: dict[tuple[str, str], list[tuple[dict[str, Any], Span]]] = {}
    for resource, span in found:
        a = attrs(span)
        by_op.setdefault((a["messaging.message.id"], a["meshscope.kind"]), []).append((resource, span))
        # required and recommended messaging attributes, and the name {operation} {destination}
        assert a["messaging.system"] == "meshscope"
        assert a["messaging.operation.type"] in ("send", "receive")
        assert span.name == f"{a['messaging.operation.name']} {a['messaging.destination.name']}"
        # the resource: OTEL_SERVICE_NAME wins over OTEL_RESOURCE_ATTRIBUTES, which adds to the defaults
        assert resource["service.name"] == "orders-mesh"
        assert resource["deployment.environment.name"] == "test" and resource["team"] == "pay ments"
        assert resource["cloud.provider"] + ":" + resource["cloud.region"] == resource["meshscope.region"]
    assert {(r["cloud.provider"], r["cloud.region"]) for r, _ in found} >= {("aws", "us-east-1")}

    (_, publish), (_, forward), (_, transit), (_, deliver) = (
        by_op[("s-1", kind)][0] for kind in ("publish", "forward", "transit", "deliver")
    )
    kinds = {name: span.kind for name, span in zip("pftd", (publish, forward, transit, deliver), strict=True)}
    assert kinds == {
        "p": Span.SPAN_KIND_PRODUCER,
        "f": Span.SPAN_KIND_PRODUCER,
        "t": Span.SPAN_KIND_PRODUCER,
        "d": Span.SPAN_KIND_CONSUMER,
    }
    assert publish.name == f"publish {TOPIC}" and deliver.name == f"deliver {TOPIC}"
    assert attrs(deliver)["messaging.operation.type"] == "receive"
    assert (
        attrs(transit)["meshscope.dst_region"] == B and by_op[("s-1", "transit")][0][0]["cloud.region"] == "westeurope"
    )
    # one trace, parent to child across the detour
    assert publish.parent_span_id.hex() == PRODUCER_SPAN
    assert forward.parent_span_id == publish.span_id
    assert transit.parent_span_id == forward.span_id
    assert deliver.parent_span_id == transit.span_id
    for span in (publish, forward, transit, deliver):
        assert span.status.code != Status.STATUS_CODE_ERROR

    # every drop is an error span naming its reason, shaped as the operation it ended
    drops = {attrs(s)["meshscope.status"]: s for _, s in found if attrs(s)["meshscope.kind"] == "drop"}
    assert set(drops) == {fk.DUPLICATE, fk.NO_ROUTE, fk.MALFORMED}
    for reason, span in drops.items():
        assert span.status.code == Status.STATUS_CODE_ERROR and span.status.message == reason
        assert attrs(span)["error.type"] == reason
        assert span.kind == Span.SPAN_KIND_PRODUCER and attrs(span)["messaging.operation.name"] == "publish"
    assert drops[fk.DUPLICATE].parent_span_id.hex() == PRODUCER_SPAN
    assert drops[fk.MALFORMED].parent_span_id == b""  # refused before it was an event: a root in its trace

    # Prometheus exemplars link only to traces that exist in a trace backend: the sampled one
    exposition = mesh[B].relay.metrics.render(openmetrics=True)
    assert f'trace_id="{SAMPLED_TRACE}"' in exposition
    assert UNSAMPLED_TRACE not in exposition and by_id["n-1"]["traceparent"][3:35] not in exposition


def test_new_traces_are_sampled_at_the_ratio_and_say_so_in_their_flags() -> None:
    assert ratio_sampled("0" * 16 + "0" * 16, 0.5) and not ratio_sampled("0" * 16 + "f" * 16, 0.5)
    assert ratio_sampled("f" * 32, 1.0) and not ratio_sampled("0" * 31 + "1", 0.0)
    flags = [new_root(0.25).flags for _ in range(4000)]
    assert set(flags) == {"02", "03"} and 0.2 < flags.count("03") / len(flags) < 0.3
    assert {new_root(1.0).flags for _ in range(50)} == {"03"} and {new_root(0.0).flags for _ in range(50)} == {"02"}


@pytest.mark.parametrize(
    ("kind", "status", "src", "dst", "expected"),
    [
        (fk.PUBLISH, fk.OK, A, A, ("PRODUCER", "send", "publish")),
        (fk.FORWARD, fk.OK, A, B, ("PRODUCER", "send", "forward")),
        (fk.TRANSIT, fk.OK, A, B, ("PRODUCER", "send", "transit")),
        (fk.DELIVER, fk.OK, A, B, ("CONSUMER", "receive", "deliver")),
        (fk.DROP, fk.NO_ROUTE, A, A, ("PRODUCER", "send", "publish")),
        (fk.DROP, fk.SCHEMA_REJECTED, A, A, ("PRODUCER", "send", "publish")),
        (fk.DROP, fk.EXPIRED, A, B, ("PRODUCER", "send", "forward")),
        (fk.DROP, fk.LINK_DOWN, A, B, ("PRODUCER", "send", "forward")),
        (fk.DROP, fk.DELIVERY_FAILED, A, A, ("CONSUMER", "receive", "deliver")),
        (fk.DROP, fk.NO_ROUTE, B, A, ("CONSUMER", "receive", "deliver")),
        (fk.DROP, fk.GAP, B, A, ("CONSUMER", "receive", "deliver")),
        (fk.DROP, fk.MALFORMED, B, A, ("CONSUMER", "receive", "deliver")),  # a peer's item
        (fk.DROP, fk.MALFORMED, A, A, ("PRODUCER", "send", "publish")),  # refused at the edge
        (fk.DROP, fk.EXPIRED, A, A, ("CONSUMER", "receive", "deliver")),  # given up by a durable group
    ],
)
def test_each_hop_has_the_span_kind_of_its_operation(
    kind: str, status: str, src: str, dst: str, expected: tuple[str, str, str]
) -> None:
    shape = shape_of(kind, status, src, dst, A)
    assert (shape.kind.name, shape.operation_type, shape.operation) == expected


def test_every_kind_of_hop_has_a_shape() -> None:
    assert set(SHAPES) | {fk.DROP} == set(fk.KINDS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("a=1,b=2", {"a": "1", "b": "2"}),
        (" a = x%2Cy , ,=z,novalue", {"a": "x,y"}),
        ("cloud.region=eu,cloud.region=us", {"cloud.region": "us"}),
    ],
)
def test_resource_attributes_are_parsed_as_the_sdks_do(text: str, expected: dict[str, str]) -> None:
    assert parse_resource_attributes(text) == expected


def test_resource_defaults_split_the_region_and_yield_to_the_environment() -> None:
    assert resource_attributes("aws:us-east-1", "r1") == {
        "service.name": "meshscope-relay",
        "service.instance.id": "r1",
        "cloud.provider": "aws",
        "cloud.region": "us-east-1",
        "meshscope.region": "aws:us-east-1",
        "meshscope.relay": "r1",
    }
    mine = resource_attributes("aws:us-east-1", "r1", "svc", "service.name=x,cloud.region=here")
    assert mine["service.name"] == "svc" and mine["cloud.region"] == "here"


@pytest.mark.parametrize(
    ("env", "ratio"),
    [
        ({}, 0.01),
        ({"MESHSCOPE_TRACE_SAMPLE_RATIO": "0.2", "OTEL_TRACES_SAMPLER": "always_on"}, 0.2),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 0.25),
        ({"OTEL_TRACES_SAMPLER": "traceidratio"}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 0.0),
        ({"OTEL_TRACES_SAMPLER": " Always_On "}, 1.0),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER='jaeger_remote'"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"}, "is not a number"),
        ({"MESHSCOPE_TRACE_SAMPLE_RATIO": "2"}, "is over 1"),
    ],
)
def test_the_relays_own_traces_follow_the_opentelemetry_sampler_settings(
    env: dict[str, str], ratio: float | str
) -> None:
    from meshcore.settings import SettingError
    from router.config import RelayConfig

    base = {"MESHSCOPE_REGION": A}
    if isinstance(ratio, str):
        with pytest.raises(SettingError, match=re.escape(ratio)):
            RelayConfig.from_env({**base, **env})
    else:
        assert RelayConfig.from_env({**base, **env}).trace_sample_ratio == ratio
