"""The event envelope at the edge: limits, nesting, both HTTP content modes, trace context; no servers.

Binary and structured mode are checked against the official CloudEvents
Python SDK, and the refusals are property-tested with Hypothesis: whatever
comes in, the envelope either raises one of the relay's InvalidInput errors
or returns an event within every limit that the mesh can forward.
"""

from __future__ import annotations

import base64
import datetime
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1.conversion import to_binary as legacy_to_binary
from cloudevents.v1.conversion import to_structured as legacy_to_structured
from cloudevents.v1.http import CloudEvent as LegacyCloudEvent
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from meshcore.topic import validate_topic
from router.envelope import DEFAULT_LIMITS, Event, EventLimits, decode_events, finish, validate_event
from router.errors import EventTooLarge, InvalidInput, MalformedEvent, UnsupportedMediaType
from router.httpbinding import BINARY, STRUCTURED, combine_headers, content_mode, decode_http, decode_http_steps
from router.tracecontext import header_context, parse_traceparent, parse_tracestate

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADER_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CE_HEADERS = {"ce-specversion": "1.0", "ce-id": "o-1", "ce-source": "/shop", "ce-type": "orders.created"}


def ce(**over: object) -> dict[str, Any]:
    base: dict[str, Any] = {"specversion": "1.0", "id": "e1", "source": "/p", "type": "orders.created"}
    base.update(over)
    return base


def nested(levels: int) -> object:
    """A value nesting ``levels`` containers (0: a scalar)."""
    value: object = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def refused(call: Callable[[], object]) -> MalformedEvent:
    with pytest.raises(MalformedEvent) as info:
        call()
    return info.value


# ---- limits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "attribute"),
    [
        ({"id": "i" * 257}, "id"),
        ({"source": "s" * 1025}, "source"),
        ({"subject": "s" * 1025}, "subject"),
        ({"dataschema": "d" * 2049}, "dataschema"),
        ({"datacontenttype": "t" * 257}, "datacontenttype"),
        ({"region": "r" * 1025}, "region"),
        ({"tracestate": "k=" + "v" * 1023}, "tracestate"),
        ({f"x{i}": i for i in range(33)}, "x32"),
        ({"obj": {"a": 1}}, "obj"),
        ({"arr": [1]}, "arr"),
        ({"ratio": 0.5}, "ratio"),
        ({"big": 2**31}, "big"),
        ({"small": -(2**31) - 1}, "small"),
        ({"subject": ""}, "subject"),
        ({"subject": 3}, "subject"),
        ({"subject": "line\nbreak"}, "subject"),
        ({"id": "nul\x00"}, "id"),
        ({"source": "c1\x85"}, "source"),
        ({"note": "\ufdd0"}, "note"),
        ({"note": "\ud800"}, "note"),
        ({"time": "2026-11-26T10:00:00." + "5" * 80 + "Z"}, "time"),
        ({"data_base64": "not base64!"}, "data_base64"),
        ({"data_base64": 12}, "data_base64"),
        ({"type": "orders.créé"}, "type"),
        ({"type": "orders.\x7f"}, "type"),
        ({"toolongextensionname1": "x"}, "toolongextensionname1"),
    ],
)
def test_every_limit_is_a_400_naming_the_attribute(over: dict[str, object], attribute: str) -> None:
    exc = refused(lambda: validate_event(ce(**over)))
    assert exc.attribute == attribute
    assert attribute in str(exc)


def test_values_at_the_limits_pass() -> None:
    event = ce(
        id="i" * 256,
        source="s" * 1024,
        subject="Euro € 😀 " + "s" * 1014,
        dataschema="https://d/" + "d" * 2038,
        datacontenttype="t/" + "t" * 254,
        region="r" * 1024,
        flag=True,
        count=-(2**31),
        top=2**31 - 1,
        type="a" * 255,
        **{f"x{i}": i for i in range(28)},
    )
    ev = validate_event(event)
    assert ev.body["subject"].startswith("Euro €") and ev.body["flag"] is True
    assert ev.size == len(ev.encoded or b"")


# ---- attribute grammars: RFC 3339, RFC 3986, RFC 2045, in ASCII ---------------------------------------

ARABIC_INDIC = str.maketrans("0123456789", "".join(map(chr, range(0x660, 0x66A))))
FULLWIDTH = str.maketrans("0123456789", "".join(map(chr, range(0xFF10, 0xFF1A))))
DEVANAGARI_ONE = chr(0x967)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("time", "2024-13-45T99:99:99Z"),
        ("time", "2024-01-01T00:00:00Z".translate(ARABIC_INDIC)),
        ("time", "2024-01-01T00:00:00Z".translate(FULLWIDTH)),
        ("time", f"2024-01-0{DEVANAGARI_ONE}T00:00:00Z"),
        ("time", "2023-02-29T00:00:00Z"),
        ("time", "2024-04-31T00:00:00Z"),
        ("time", "2024-00-10T00:00:00Z"),
        ("time", "2024-01-00T00:00:00Z"),
        ("time", "2024-01-01T24:00:00Z"),
        ("time", "2024-01-01T23:60:00Z"),
        ("time", "2024-01-01T23:59:61Z"),
        ("time", "2024-01-01T12:00:60Z"),
        ("time", "2016-12-30T23:59:60Z"),
        ("time", "2024-01-01T00:00:00+24:00"),
        ("time", "2024-01-01T00:00:00+00:60"),
        ("time", "2024-01-01 00:00:00Z"),
        ("time", "2024-01-01T00:00:00"),
        ("time", "2024-01-01T00:00:00.Z"),
        ("time", "2024-1-01T00:00:00Z"),
        ("time", "+2024-01-01T00:00:00Z"),
        ("source", "/shop floor"),
        ("source", "/caf\u00e9"),
        ("source", "/100%"),
        ("source", "/%zz"),
        ("source", "https://[::zz]/x"),
        ("source", "1http://x/"),
        ("source", "a:b:c d"),
        ("source", "http://x/{y}"),
        ("source", "/x#a#b"),
        ("dataschema", "/relative/only"),
        ("dataschema", "schemas/order.json"),
        ("dataschema", "https://example.com/ü"),
        ("dataschema", "https://example.com/a b"),
        ("datacontenttype", "json"),
        ("datacontenttype", "application/"),
        ("datacontenttype", "application/json; charset"),
        ("datacontenttype", 'application/json;charset="utf-8'),
        ("datacontenttype", "application/jsön"),
        ("datacontenttype", "text/plain; a=b c"),
        ("data_base64", "AB=="),  # pad bits set: AA== is the one spelling of that byte
        ("data_base64", "AAB="),
        ("data_base64", "AA=="[:3]),
    ],
)
def test_attributes_must_follow_their_grammar_not_only_its_shape(attribute: str, value: str) -> None:
    exc = refused(lambda: validate_event(ce(**{attribute: value})))
    assert exc.attribute == attribute and attribute in str(exc)


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("time", "2024-02-29T00:00:00Z"),
        ("time", "2000-02-29T23:59:59.999999999+14:00"),
        ("time", "2026-11-26t10:00:00z"),
        ("time", "2026-11-26T10:00:00-00:00"),
        ("time", "2016-12-31T23:59:60Z"),
        ("time", "2016-12-31T15:59:60-08:00"),
        ("time", "2017-01-01T00:59:60+01:00"),
        ("time", "2015-06-30T23:59:60Z"),
        ("source", "/sim/aws:us-east-1"),
        ("source", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"),
        ("source", "https://user@[2001:db8::1]:8443/a/b?c=d#e"),
        ("source", "//cdn.example.com/x"),
        ("source", "orders/eu-1"),
        ("source", "/shop/floor%201"),
        ("source", "mailto:ops@example.com"),
        ("dataschema", "https://example.com/schemas/order.json"),
        ("dataschema", "urn:example:order:v1"),
        ("datacontenttype", "application/json"),
        ("datacontenttype", "application/vnd.shop+json; charset=utf-8"),
        ("datacontenttype", 'text/plain;format="flowed; x"'),
    ],
)
def test_attributes_in_their_grammar_pass_unchanged(attribute: str, value: str) -> None:
    assert validate_event(ce(**{attribute: value})).body[attribute] == value


def test_binary_mode_attributes_follow_the_same_grammars() -> None:
    for header, value in [("ce-time", "2024-13-45T99:99:99Z"), ("ce-source", "/shop%20floor")]:
        exc = refused(lambda h=header, v=value: decode_http({**CE_HEADERS, h: v}, b""))
        assert exc.attribute == header[3:]
    with pytest.raises(UnsupportedMediaType):
        decode_http({**CE_HEADERS, "content-type": 'text/plain; a="\xe9"'}, b"x")


def test_limits_are_one_frozen_config() -> None:
    tight = EventLimits(max_event_bytes=300, max_id_chars=4, max_extensions=1, max_extension_chars=60)
    assert refused(lambda: validate_event(ce(id="12345"), tight)).attribute == "id"
    assert refused(lambda: validate_event(ce(a="x", b="y"), tight)).attribute == "b"
    assert refused(lambda: validate_event(ce(a="x" * 61), tight)).attribute == "a"
    # traceparent and tracestate are the relay's own and do not count against max_extensions
    assert validate_event(ce(a="x", traceparent=TP, tracestate="k=v"), tight).body["tracestate"] == "k=v"
    with pytest.raises(EventTooLarge) as info:
        validate_event(ce(data="x" * 300), tight)
    assert info.value.limit == 300
    # the old call with a bare max_event_bytes still works
    assert validate_event(ce(), 1000).size < 1000
    with pytest.raises(EventTooLarge):
        validate_event(ce(data="x" * 1000), 1000)
    with pytest.raises(AttributeError):
        tight.max_depth = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [{"max_depth": 0}, {"max_depth": 251}, {"max_id_chars": -1}, {"max_extensions": 1.5}, {"max_extension_chars": 54}],
)
def test_limits_that_make_no_sense_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EventLimits(**bad)


def test_null_attributes_are_unset() -> None:
    ev = validate_event(ce(subject=None, region=None, data=None))
    assert "subject" not in ev.body and "region" not in ev.body
    assert ev.body["data"] is None  # an explicit null payload is data


# ---- nesting --------------------------------------------------------------------------------------------


def test_depth_is_limited_and_counted_from_the_event_object() -> None:
    assert depth(validate_event(ce(data=nested(31))).body) == 32
    exc = refused(lambda: validate_event(ce(data=nested(32))))
    assert exc.attribute == "data" and "nested deeper than 32 levels" in str(exc)
    assert depth(validate_event(ce(data=nested(5)), EventLimits(max_depth=6)).body) == 6
    assert refused(lambda: validate_event(ce(data=nested(6)), EventLimits(max_depth=6))).attribute == "data"


@pytest.mark.parametrize("levels", [300, 1000])
def test_a_deep_body_is_a_400_never_a_crash_later(levels: int) -> None:
    data = b"[" * levels + b"]" * levels
    body = b'{"specversion":"1.0","id":"d","source":"/p","type":"a.b","data":' + data + b"}"
    exc = refused(lambda: decode_events(body))
    assert (exc.attribute, "nested deeper than 32 levels" in str(exc)) == ("data", True)
    orjson.dumps(exc.event)  # the refused event still makes its drop record
    # the WebSocket path validates what orjson.loads gave it
    exc = refused(lambda: validate_event(orjson.loads(body)))
    assert exc.attribute == "data" and isinstance(exc.event, dict) and "data" not in exc.event


def test_wide_events_and_brackets_in_strings_are_not_deep() -> None:
    lines = [{"sku": f"s{i}", "price": {"amount": i, "tags": ["a"]}} for i in range(100)]
    assert len(validate_event(ce(data={"lines": lines})).body["data"]["lines"]) == 100
    assert validate_event(ce(data="{[" * 1000, note="[[[[")).body["note"] == "[[[["


def test_what_is_not_json_at_all_is_a_400() -> None:
    not_json: list[object] = [{1: "int key"}, 2**64, {"s": "\udc00"}, {"x": {1, 2}}]
    for data in not_json:
        exc = refused(lambda data=data: validate_event(ce(data=data)))  # type: ignore[misc]
        assert "cannot be encoded as JSON" in str(exc)
        orjson.dumps(exc.event)


# ---- content modes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mode"),
    [
        ({"content-type": "application/cloudevents+json"}, STRUCTURED),
        ({"content-type": "Application/CloudEvents+JSON; charset=UTF-8"}, STRUCTURED),
        ({"content-type": "application/cloudevents-batch+json"}, STRUCTURED),
        ({"content-type": "application/cloudevents+json", "ce-specversion": "1.0"}, STRUCTURED),
        ({"content-type": "application/json"}, STRUCTURED),
        ({"content-type": "application/json", "ce-specversion": "1.0"}, BINARY),
        ({"content-type": "text/plain", "ce-specversion": "1.0"}, BINARY),
        ({"content-type": 'application/octet-stream; x="a;b"', "ce-specversion": "1.0"}, BINARY),
        ({"ce-specversion": "1.0"}, BINARY),
        ({"content-type": "application/cloudevents+avro"}, UnsupportedMediaType),
        ({"content-type": "application/cloudevents+xml", "ce-specversion": "1.0"}, UnsupportedMediaType),
        ({"content-type": "application/cloudevents+json; charset=latin-1"}, UnsupportedMediaType),
        ({"content-type": "application/json; charset=utf-16"}, UnsupportedMediaType),
        ({"content-type": "text/plain"}, UnsupportedMediaType),
        ({"content-type": "json"}, UnsupportedMediaType),
        ({"content-type": "application/json; charset"}, UnsupportedMediaType),
        ({"content-type": "application/json, text/plain", "ce-specversion": "1.0"}, UnsupportedMediaType),
        ({}, UnsupportedMediaType),
    ],
)
def test_content_mode_follows_the_http_binding(headers: dict[str, str], mode: object) -> None:
    if isinstance(mode, str):
        assert content_mode(headers) == mode
    else:
        with pytest.raises(UnsupportedMediaType):
            content_mode(headers)
        with pytest.raises(UnsupportedMediaType):
            decode_http(headers, b"{}")


def test_binary_application_json_is_no_longer_misread_as_structured() -> None:
    [ev] = decode_http({**CE_HEADERS, "content-type": "application/json"}, b'{"total": 12}')
    assert ev.body["data"] == {"total": 12} and ev.body["datacontenttype"] == "application/json"
    assert (ev.id, ev.source, ev.topic) == ("o-1", "/shop", "orders.created")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"total": 12}', {"data": {"total": 12}}),
        (b"[1, 2]", {"data": [1, 2]}),
        (b'"text"', {"data": "text"}),
        (b"12", {"data": 12}),
        (b"\x00\x01\xfe", {"data_base64": "AAH+"}),
        (b"{not json", {"data_base64": "e25vdCBqc29u"}),
        (b"", {}),
    ],
)
def test_binary_without_content_type_is_json_when_it_parses(body: bytes, expected: dict[str, Any]) -> None:
    """No datacontenttype means application/json (JSON event format 3.1): JSON is data, other bytes stay bytes."""
    [ev] = decode_http(dict(CE_HEADERS), body)
    assert "datacontenttype" not in ev.body
    assert {k: v for k, v in ev.body.items() if k in ("data", "data_base64")} == expected


def test_sdk_binary_without_datacontenttype_gives_the_structured_event() -> None:
    event = CloudEvent({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "orders.created"}, {"n": 1})
    binary = ce_http.to_binary(event, JSONFormat())
    assert not any(name.lower() == "content-type" for name in binary.headers)
    structured = ce_http.to_structured(event, JSONFormat())
    [from_binary] = decode_http({k.lower(): v for k, v in binary.headers.items()}, binary.body)
    [from_structured] = decode_http({k.lower(): v for k, v in structured.headers.items()}, structured.body)
    assert from_binary.body["data"] == {"n": 1} == from_structured.body["data"]
    assert "datacontenttype" not in from_binary.body


def sdk_events() -> list[CloudEvent]:
    attributes = {
        "specversion": "1.0",
        "id": "o-1",
        "source": "/shop/floor%201",
        "type": "orders.created",
        "time": datetime.datetime(2026, 11, 26, 10, 0, tzinfo=datetime.UTC),
        "subject": 'Euro € 😀 "quoted" 100%',
        "traceparent": TP,
        "tracestate": "rojo=1,congo=2",
        "region": "eu",
    }
    return [
        CloudEvent({**attributes, "datacontenttype": "application/json"}, {"total": 12, "lines": [{"n": 1}]}),
        CloudEvent({**attributes, "datacontenttype": "application/vnd.shop+json; charset=utf-8"}, {"a": [1, 2]}),
        CloudEvent({**attributes, "datacontenttype": "text/plain"}, "hello, wörld"),
        CloudEvent({**attributes, "datacontenttype": "application/xml"}, "<order total='12'/>"),
        CloudEvent({**attributes, "datacontenttype": "application/octet-stream"}, b"\x00\x01\xfe\xff"),
        CloudEvent(dict(attributes), None),
    ]


def same_event(a: Event, b: Event) -> None:
    assert a.body == b.body
    assert (a.id, a.source, a.topic, a.trace, a.size) == (b.id, b.source, b.topic, b.trace, b.size)
    assert orjson.loads(a.encoded or b"") == orjson.loads(b.encoded or b"")  # subscribers get the same JSON


@pytest.mark.parametrize("event", sdk_events(), ids=lambda e: str(e.get_datacontenttype()))
def test_sdk_binary_and_structured_give_the_same_event(event: CloudEvent) -> None:
    binary = ce_http.to_binary(event, JSONFormat())
    structured = ce_http.to_structured(event, JSONFormat())
    assert "ce-specversion" in binary.headers and "ce-specversion" not in structured.headers
    [from_binary] = decode_http({k.lower(): v for k, v in binary.headers.items()}, binary.body)
    [from_structured] = decode_http({k.lower(): v for k, v in structured.headers.items()}, structured.body)
    same_event(from_binary, from_structured)
    assert from_binary.body["subject"] == 'Euro € 😀 "quoted" 100%'
    assert from_binary.body["traceparent"] == TP and from_binary.body["tracestate"] == "rojo=1,congo=2"
    data = event.get_data()
    if isinstance(data, bytes):
        assert from_binary.body["data_base64"] and "data" not in from_binary.body
    elif data is None:
        assert "data" not in from_binary.body and "data_base64" not in from_binary.body
    else:
        assert from_binary.body["data"] == data


@pytest.mark.parametrize(
    ("data", "content_type"), [({"total": 12}, "application/json"), (b"\x00\x01", "application/octet-stream")]
)
def test_legacy_sdk_api_gives_the_same_event(data: object, content_type: str) -> None:
    """The SDK's 1.x API (cloudevents.http, now cloudevents.v1) for what it encodes per the binding.

    It neither percent-encodes header values nor sends text data as text, so
    those cases are covered with the current API above.
    """
    attributes = {"type": "orders.created", "source": "/shop", "id": "o-1", "datacontenttype": content_type}
    attributes["traceparent"] = TP
    event = LegacyCloudEvent(attributes, data)
    (bh, bb), (sh, sb) = legacy_to_binary(event), legacy_to_structured(event)
    [from_binary] = decode_http({k.lower(): v for k, v in bh.items()}, bb)
    [from_structured] = decode_http({k.lower(): v for k, v in sh.items()}, sb)
    same_event(from_binary, from_structured)


def test_binary_extensions_arrive_as_strings() -> None:
    """Headers carry no types; a typed extension keeps its type only in structured mode."""
    [ev] = decode_http({**CE_HEADERS, "ce-count": "5", "ce-urgent": "true"}, b"")
    assert ev.body["count"] == "5" and ev.body["urgent"] == "true"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀"),
        ("Euro%20%e2%82%ac", "Euro €"),
        ("%41%42c", "ABc"),
        ('"a b" and "c\\"d"', 'a b and c"d'),
        ('"%25"', "%"),
        ("  padded\t", "padded"),
        ("plain space", "plain space"),
    ],
)
def test_binary_header_values_are_unquoted_then_percent_decoded(raw: str, value: str) -> None:
    [ev] = decode_http({**CE_HEADERS, "ce-subject": raw}, b"")
    assert ev.body["subject"] == value


@pytest.mark.parametrize(
    ("header", "raw"),
    [
        ("ce-subject", "%C0%A0"),  # an overlong encoding of a space
        ("ce-subject", "%ED%A0%80"),  # a surrogate
        ("ce-subject", "%FF"),
        ("ce-subject", "100%"),
        ("ce-subject", "%zz"),
        ("ce-subject", "caf\xe9"),  # raw non-ASCII: it must be percent-encoded
        ("ce-subject", '"unbalanced'),
        ("ce-subject", "%0A"),  # decodes to a control character
        ("ce-datacontenttype", "application/json"),
        ("ce-data", "x"),
        ("ce-bad_name", "x"),
        ("ce-", "x"),
        ("ce-specversion", "0.3"),
    ],
)
def test_bad_binary_headers_are_a_400_naming_the_attribute(header: str, raw: str) -> None:
    exc = refused(lambda: decode_http({**CE_HEADERS, header: raw}, b""))
    assert exc.attribute == header[3:]


@pytest.mark.parametrize(
    ("content_type", "body", "attribute"),
    [("application/json", b"{not json", "data"), ("text/plain", b"\xff\xfe", "data")],
)
def test_binary_bodies_that_break_their_content_type(content_type: str, body: bytes, attribute: str) -> None:
    assert refused(lambda: decode_http({**CE_HEADERS, "content-type": content_type}, body)).attribute == attribute


def test_binary_mode_has_the_same_limits() -> None:
    with pytest.raises(EventTooLarge):
        decode_http({**CE_HEADERS, "content-type": "application/octet-stream"}, b"x" * 2000, 1000)
    deep = b"[" * 40 + b"]" * 40
    assert refused(lambda: decode_http({**CE_HEADERS, "content-type": "application/json"}, deep)).attribute == "data"
    assert refused(lambda: decode_http({**CE_HEADERS, "ce-id": "i" * 257}, b"")).attribute == "id"


def test_combine_headers_joins_repeats_and_lowercases() -> None:
    raw = [(b"TraceState", b"a=1"), (b"tracestate", b"b=2"), (b"Content-Type", b"application/json")]
    assert combine_headers(raw) == {"tracestate": "a=1, b=2", "content-type": "application/json"}


# ---- trace context -------------------------------------------------------------------------------------------


def test_http_trace_headers_are_used_when_the_event_has_no_context() -> None:
    headers = {"content-type": "application/cloudevents-batch+json", "traceparent": HEADER_TP, "tracestate": "k=v"}
    body = orjson.dumps([ce(id="a"), ce(id="b", traceparent=TP), ce(id="c", traceparent="broken", tracestate="x=1")])
    a, b, c = decode_http(headers, body)
    assert (a.body["traceparent"], a.body["tracestate"]) == (HEADER_TP, "k=v")
    assert (b.body["traceparent"], "tracestate" in b.body) == (TP, False)  # its own context, whole
    assert (c.body["traceparent"], c.body["tracestate"]) == (HEADER_TP, "k=v")


def test_binary_ce_traceparent_is_the_events_and_traceparent_the_requests() -> None:
    headers = {**CE_HEADERS, "ce-traceparent": TP, "traceparent": HEADER_TP, "tracestate": "k=v"}
    [own] = decode_http(headers, b"")
    assert own.body["traceparent"] == TP and "tracestate" not in own.body
    [borrowed] = decode_http({**CE_HEADERS, "traceparent": HEADER_TP, "tracestate": "k=v"}, b"")
    assert (borrowed.body["traceparent"], borrowed.body["tracestate"]) == (HEADER_TP, "k=v")
    [fresh] = decode_http({**CE_HEADERS, "traceparent": "ff-nope", "tracestate": "k=v"}, b"")
    assert fresh.trace.trace_id not in TP + HEADER_TP and "tracestate" not in fresh.body


def test_trace_context_is_normalized_in_the_event() -> None:
    future = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future-field"
    ev = validate_event(ce(traceparent=future, tracestate=" rojo=1 ,, congo=2,rojo=3"))
    assert ev.body["traceparent"] == TP and ev.trace == parse_traceparent(TP)
    assert ev.body["tracestate"] == "rojo=1,congo=2"
    assert "tracestate" not in validate_event(ce(traceparent=TP, tracestate="BAD=1")).body
    assert "tracestate" not in validate_event(ce(tracestate="rojo=1")).body  # a new trace drops it
    long_state = ",".join(f"k{i}=" + "v" * 200 for i in range(8))  # 1.6 KB from a header: cut to fit
    ev = validate_event(ce(), DEFAULT_LIMITS, header_context({"traceparent": HEADER_TP, "tracestate": long_state}))
    assert len(ev.body["tracestate"]) <= DEFAULT_LIMITS.max_extension_chars
    assert ev.body["tracestate"].startswith("k0=")


# ---- properties ------------------------------------------------------------------------------------------------

SMALL = EventLimits(
    max_event_bytes=1500,
    max_depth=6,
    max_id_chars=8,
    max_source_chars=12,
    max_subject_chars=12,
    max_dataschema_chars=12,
    max_datacontenttype_chars=24,
    max_extension_chars=60,
    max_extensions=3,
)
PROPERTY = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)  # what JSON carries: orjson refuses 1e999 and NaN
    | st.text(max_size=24)
)


def encodable(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits: not what a JSON body can hold anyway
        return b"[]"


json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=12,
)
deep_values = st.integers(min_value=0, max_value=40).map(nested)
short_text = st.text(max_size=16) | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=64)
attribute_values = short_text | scalars | st.sampled_from(["1.0", "orders.created", "a.b", TP, "2026-11-26T10:00:00Z"])
extension_names = st.from_regex(r"[a-z0-9]{1,21}", fullmatch=True) | st.text(max_size=4)
ascii_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=14)
topics = st.from_regex(r"[a-z]{1,5}(\.[a-z0-9_-]{1,5}){0,3}", fullmatch=True)


def mostly(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid four times in five, so that the properties see accepted events too."""
    return st.integers(min_value=0, max_value=4).flatmap(lambda n: junk if n == 4 else valid)


events = st.builds(
    lambda base, optional, extensions: {**base, **optional, **extensions},
    st.fixed_dictionaries(
        {
            "specversion": mostly(st.just("1.0"), attribute_values),
            "id": mostly(ascii_text, attribute_values),
            "source": mostly(ascii_text, short_text),
            "type": mostly(topics, st.sampled_from(["a..b", "a.*", "ünï.code", "a b"]) | short_text),
        }
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "subject": attribute_values,
            "time": attribute_values,
            "datacontenttype": attribute_values,
            "dataschema": attribute_values,
            "data": json_values | deep_values,
            "data_base64": st.sampled_from(["AAE=", "", "x", "AA=="]) | attribute_values,
            "traceparent": attribute_values | st.sampled_from([TP, "cc-" + TP[3:] + "-x", TP[:-2] + "ff"]),
            "tracestate": attribute_values | st.sampled_from(["a=1,b=2", "a=1,a=2", "A=1", " , x=y "]),
        },
    ),
    st.dictionaries(extension_names, attribute_values | json_values, max_size=5),
)


def assert_within(ev: Event, limits: EventLimits) -> None:
    """Everything an accepted event promises."""
    body = ev.body
    for name, limit in [("id", limits.max_id_chars), ("source", limits.max_source_chars), ("type", 255)]:
        assert isinstance(body[name], str) and 0 < len(body[name]) <= limit
    assert body["specversion"] == "1.0" and validate_topic(body["type"]) == ev.topic
    for name, limit in [
        ("subject", limits.max_subject_chars),
        ("dataschema", limits.max_dataschema_chars),
        ("datacontenttype", limits.max_datacontenttype_chars),
    ]:
        assert name not in body or 0 < len(body[name]) <= limit
    extensions = [n for n in body if n not in ("specversion", "id", "source", "type", "subject", "time")]
    extensions = [n for n in extensions if n not in ("datacontenttype", "dataschema", "data", "data_base64")]
    assert len([n for n in extensions if n not in ("traceparent", "tracestate")]) <= limits.max_extensions
    for name in extensions:
        value = body[name]
        assert isinstance(value, str | bool | int) and value is not None
        assert not isinstance(value, str) or len(value) <= limits.max_extension_chars
        assert not isinstance(value, int) or -(2**31) <= value < 2**31
    assert not ("data" in body and "data_base64" in body)
    assert depth(body) <= limits.max_depth
    assert ev.encoded == orjson.dumps(body) and ev.size == len(ev.encoded) <= limits.max_event_bytes
    assert body["traceparent"] == ev.trace.format() and parse_traceparent(body["traceparent"]) == ev.trace
    assert "tracestate" not in body or parse_tracestate(body["tracestate"]) == body["tracestate"]
    # the mesh can forward it: orjson encodes it four levels down, as a mesh frame nests it
    assert orjson.loads(orjson.dumps({"b": [[1, body]]}))["b"][0][1] == body
    orjson.dumps([[[[body]]]])


@PROPERTY
@given(st.one_of(json_values, events), st.sampled_from([DEFAULT_LIMITS, SMALL]))
def test_validate_event_accepts_only_what_fits_and_refuses_only_with_invalid_input(
    obj: object, limits: EventLimits
) -> None:
    try:
        ev = validate_event(obj, limits)
    except InvalidInput:
        return
    assert_within(ev, limits)


@PROPERTY
@given(st.binary(max_size=200) | events.map(encodable) | st.lists(events, max_size=3).map(encodable))
def test_decode_events_refuses_only_with_invalid_input(body: bytes) -> None:
    try:
        accepted = decode_events(body, SMALL)
    except InvalidInput:
        return
    for ev in accepted:
        assert_within(ev, SMALL)


shapes = st.recursive(
    st.integers(0, 9) | st.text(alphabet="{[]}", max_size=3),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(alphabet="ab{[", max_size=2), kids, max_size=3),
    max_leaves=25,
)


@PROPERTY
@given(shapes, st.integers(min_value=2, max_value=6))
def test_the_depth_check_is_exact(data: object, max_depth: int) -> None:
    """Brackets in strings and wide containers never count; one level too many always does."""
    try:
        ev = validate_event(ce(data=data), EventLimits(max_depth=max_depth))
    except MalformedEvent as exc:
        assert exc.attribute == "data" and 1 + depth(data) > max_depth
    else:
        assert depth(ev.body) == 1 + depth(data) <= max_depth


header_names = st.sampled_from(
    [
        "content-type",
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-region",
        "ce-traceparent",
        "ce-tracestate",
        "ce-datacontenttype",
        "ce-data",
        "ce-",
        "ce-x_y",
        "traceparent",
        "tracestate",
    ]
) | st.text(max_size=12)
header_values = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=30) | st.sampled_from(
    [
        "1.0",
        "orders.created",
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents-batch+json; charset=utf-8",
        "text/plain; charset=utf-8",
        "application/octet-stream",
        "application/xml",
        TP,
        HEADER_TP,
        "rojo=1,congo=2",
        "%E2%82%AC",
        '"quoted value"',
    ]
)
requests = st.tuples(
    st.fixed_dictionaries({}, optional={**{k: st.just(v) for k, v in CE_HEADERS.items()}}).flatmap(
        lambda base: st.dictionaries(header_names, header_values, max_size=6).map(lambda extra: {**base, **extra})
    ),
    st.binary(max_size=120)
    | json_values.map(encodable)
    | deep_values.map(encodable)
    | events.map(encodable)
    | st.lists(events, max_size=2).map(encodable),
)


@PROPERTY
@given(requests, st.sampled_from([DEFAULT_LIMITS, SMALL]))
def test_decode_http_refuses_only_with_invalid_input(
    message: tuple[dict[str, str], bytes], limits: EventLimits
) -> None:
    headers, body = message
    try:
        accepted = decode_http(headers, body, limits)
    except InvalidInput:
        return
    assert accepted
    for ev in accepted:
        assert_within(ev, limits)


timestamps = st.from_regex(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})", fullmatch=True
)


@PROPERTY
@given(timestamps)
def test_a_time_passes_exactly_when_its_fields_make_a_real_instant(text: str) -> None:
    """The oracle is Python's own ISO 8601 reader; leap seconds and year 0 it cannot represent are set aside."""
    assume(text[17:19] != "60" and not text.startswith("0000"))
    try:
        datetime.datetime.fromisoformat(text)
        real = text[-2:] <= "59" or text.endswith("Z")  # fromisoformat reads +00:60 as an hour
    except ValueError:
        real = False
    try:
        validate_event(ce(time=text))
    except MalformedEvent as exc:
        assert not real and exc.attribute == "time"
    else:
        assert real


@PROPERTY
@given(
    st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: datetime.timezone(datetime.timedelta(minutes=m)))),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)
def test_every_timestamp_python_writes_passes(when: datetime.datetime, spec: str) -> None:
    text = when.isoformat(timespec=spec)
    assert validate_event(ce(time=text)).body["time"] == text


@PROPERTY
@given(st.binary(max_size=40))
def test_every_byte_string_base64_encodes_to_accepted_data(data: bytes) -> None:
    text = base64.b64encode(data).decode()
    assert validate_event(ce(data_base64=text)).body["data_base64"] == text


@PROPERTY
@given(st.text(max_size=40))
def test_any_text_percent_encoded_is_a_valid_source(text: str) -> None:
    source = "/" + urllib.parse.quote(text, safe="/")
    assume(len(source) <= DEFAULT_LIMITS.max_source_chars)
    assert validate_event(ce(source=source)).source == source


def test_a_large_batch_is_validated_in_steps_with_the_same_result() -> None:
    body = orjson.dumps([ce(id=f"s-{i}", traceparent=TP) for i in range(1234)])
    headers = {"content-type": "application/cloudevents-batch+json"}
    steps = decode_http_steps(headers, body, DEFAULT_LIMITS, 500)
    pauses = 0
    while True:
        try:
            next(steps)
            pauses += 1
        except StopIteration as done:
            events = done.value
            break
    assert pauses == 2  # after 500 and after 1000 events: the caller's loop serves others meanwhile
    assert [e.body for e in events] == [e.body for e in decode_http(headers, body)]
    bad = orjson.dumps([ce(id=f"s-{i}") for i in range(700)] + [ce(id="bad", type="a..b")])
    with pytest.raises(MalformedEvent) as refused:
        finish(decode_http_steps(headers, bad, DEFAULT_LIMITS, 500))
    assert refused.value.index == 700  # all or nothing, as before
