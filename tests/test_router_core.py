"""Pure parts of the relay, table-driven: no servers."""

from __future__ import annotations

import orjson
import pytest

from meshcore.backoff import backoff_s
from meshcore.flowrecord import FIELDS, FlowRecord, RecordDecodeError, pack, unpack
from meshcore.metrics import Registry
from meshcore.settings import SettingError, get_int, get_map_float
from meshcore.topic import PatternSet, matches, validate_pattern, validate_topic
from router import frame as fr
from router.envelope import decode_events, validate_event
from router.errors import EventTooLarge, FrameError, InvalidTopic, MalformedEvent
from router.regions import resolve
from router.routing import DedupWindow, InterestTable
from router.tracecontext import TraceParent, new_traceparent, parse_traceparent


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("orders.created", "orders.created", True),
        ("orders.created", "orders.updated", False),
        ("orders.*", "orders.created", True),
        ("orders.*", "orders.eu.created", False),
        ("orders.*", "orders", False),
        ("orders.>", "orders.created", True),
        ("orders.>", "orders.eu.created", True),
        ("orders.>", "orders", False),
        ("*.created", "orders.created", True),
        ("*.created", "payments.created", True),
        ("*.created", "orders.eu.created", False),
        ("*.*.created", "orders.eu.created", True),
        (">", "anything.at.all", True),
        (">", "one", True),
        ("*", "one", True),
        ("*", "one.two", False),
        ("orders.*.>", "orders.eu.created", True),
        ("orders.*.>", "orders.eu", False),
        ("orders", "orders.created", False),
    ],
)
def test_pattern_matching(pattern: str, topic: str, expected: bool) -> None:
    assert matches(pattern, topic) is expected
    assert PatternSet([pattern]).matches(topic) is expected


@pytest.mark.parametrize("topic", ["", "orders.", ".orders", "orders..x", "orders.*", "orders.>", "a b", "x" * 256])
def test_bad_topics_are_refused(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_topic(topic)


@pytest.mark.parametrize("pattern", ["orders.>.x", "orders.a*", "orders.>x", "", "a..b"])
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(InvalidTopic):
        validate_pattern(pattern)


@pytest.mark.parametrize("pattern", ["orders.>", "*.created", ">", "a.*.c"])
def test_good_patterns_pass(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


def test_interest_routes_only_to_interested_peers() -> None:
    table = InterestTable()
    table.set_peer("gcp:europe-west1", [], 0)
    table.set_peer("azure:westeurope", ["orders.>"], 0)
    route = table.route("orders.created")
    assert route.peers == ("azure:westeurope",)
    assert route.local is False
    assert table.route("payments.created").empty


def test_interest_generations_and_local_refcounts() -> None:
    table = InterestTable()
    assert table.add_local(["orders.>"]) is True
    assert table.add_local(["orders.>"]) is False  # a second subscriber on the same pattern
    assert table.route("orders.x").local
    assert table.remove_local(["orders.>"]) is False  # one subscriber still there
    assert table.remove_local(["orders.>"]) is True
    assert not table.route("orders.x").local
    assert table.set_peer("b", ["x.>"], 5)
    assert table.set_peer("b", ["y.>"], 4) is False  # stale generation ignored
    assert table.route("x.1").peers == ("b",)
    assert table.set_peer("b", ["y.>"], 6)
    assert table.route("x.1").peers == ()  # route cache was invalidated
    assert table.route("y.1").peers == ("b",)


def test_dedup_window_is_bounded() -> None:
    window = DedupWindow(2)
    assert window.seen("s", "1") is False
    assert window.seen("s", "1") is True
    assert window.seen("other", "1") is False  # (source, id) is the key
    window.seen("s", "2")
    assert len(window) == 2
    assert window.seen("s", "1") is False  # evicted


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"), [(0, 0.0, 0.05), (0, 1.0, 0.1), (3, 1.0, 0.8), (20, 1.0, 5.0)]
)
def test_backoff_grows_and_caps(attempt: int, jitter: float, expected: float) -> None:
    assert backoff_s(attempt, 0.1, 5.0, jitter) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01"),
        ),
        (
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
            TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "00"),
        ),
        (
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
            TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01"),
        ),
        ("00-00000000000000000000000000000000-b7ad6b7169203331-01", None),  # all-zero trace id
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", None),  # all-zero span id
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),  # upper case
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),  # forbidden version
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x", None),  # v00 has 4 fields
        ("00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01", None),
        ("garbage", None),
        (None, None),
        (42, None),
    ],
)
def test_traceparent_parsing(value: object, parsed: TraceParent | None) -> None:
    assert parse_traceparent(value) == parsed


def test_new_traceparent_round_trips() -> None:
    tp = new_traceparent()
    assert parse_traceparent(tp.format()) == tp
    assert tp.sampled


def ce(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"specversion": "1.0", "id": "e1", "source": "/p", "type": "orders.created"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize(
    ("event", "attribute"),
    [
        (ce(id=None), "id"),
        (ce(source=None), "source"),
        (ce(type=None), "type"),
        (ce(specversion=None), "specversion"),
        (ce(specversion="0.3"), "specversion"),
        (ce(id=""), "id"),
        (ce(id=5), "id"),
        (ce(type="orders.*"), "type"),
        (ce(type="orders..x"), "type"),
        (ce(time="yesterday"), "time"),
        (ce(subject=3), "subject"),
        (ce(data=1, data_base64="AA=="), "data_base64"),
        (ce(**{"Bad-Name": 1}), "Bad-Name"),
    ],
)
def test_invalid_events_name_the_attribute(event: dict[str, object], attribute: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        validate_event(event, 1000)
    assert info.value.attribute == attribute
    assert attribute in str(info.value)


def test_valid_event_keeps_or_adds_traceparent() -> None:
    kept = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ev = validate_event(ce(traceparent=kept, time="2026-11-26T10:00:00.5Z"), 1000)
    assert ev.trace.format() == kept and ev.body["traceparent"] == kept
    fresh = validate_event(ce(traceparent="00-broken"), 1000)
    assert fresh.body["traceparent"] != "00-broken"
    assert parse_traceparent(fresh.body["traceparent"]) == fresh.trace
    assert fresh.topic == "orders.created"


def test_batches_are_all_or_nothing_and_name_the_index() -> None:
    body = orjson.dumps([ce(id="a"), ce(id="b"), ce(id="c", source=None)])
    with pytest.raises(MalformedEvent) as info:
        decode_events(body, 1000)
    assert (info.value.index, info.value.attribute) == (2, "source")
    assert [e.id for e in decode_events(orjson.dumps([ce(id="a"), ce(id="b")]), 1000)] == ["a", "b"]
    for bad in (b"{", b"[]", b"42", b"[1]"):
        with pytest.raises(MalformedEvent):
            decode_events(bad, 1000)


def test_event_size_limit() -> None:
    with pytest.raises(EventTooLarge) as info:
        decode_events(orjson.dumps([ce(), ce(id="big", data="x" * 2000)]), 1000)
    assert info.value.index == 1


def test_frames_round_trip() -> None:
    batch = [fr.MeshEvent(7, "b7ad6b7169203331", 10, 5, 1, 30, {"id": "x", "type": "t"})]
    decoded = fr.decode(fr.encode_events(batch))
    assert decoded["t"] == fr.EVENTS
    assert fr.events_of(decoded) == batch
    hello = fr.decode(fr.encode(fr.HELLO, region="aws:us-east-1"))
    assert hello == {"v": fr.VERSION, "t": fr.HELLO, "region": "aws:us-east-1"}
    with pytest.raises(ValueError):
        fr.encode("NOPE")


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"v": 2, "t": "HELLO"}', b'{"v": 1, "t": "NOPE"}', b'{"t": "HELLO"}'],
)
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        fr.decode(data)


@pytest.mark.parametrize(
    "batch", [None, [[1, "s", 1, 1, 1]], [[1, "s", 1, 1, 1, "notadict"]], [["1", "s", 1, 1, 1, {}]]]
)
def test_bad_event_batches_are_refused(batch: object) -> None:
    with pytest.raises(FrameError):
        fr.events_of({"v": 1, "t": "EVENTS", "b": batch})


def record(**over: object) -> FlowRecord:
    values: dict[str, object] = dict(
        ts=1,
        event_id="e",
        trace_id="t" * 32,
        span_id="s" * 16,
        parent_span_id="p" * 16,
        topic="a.b",
        kind="publish",
        src_region="aws:us-east-1",
        dst_region="aws:us-east-1",
        relay="r",
        hop_ms=0.5,
        e2e_ms=1.0,
        status="ok",
        bytes=10,
        attempt=1,
        seq=0,
    )
    values.update(over)
    return FlowRecord(**values)  # type: ignore[arg-type]


def test_flow_records_pack_and_unpack() -> None:
    records = [record(), record(kind="deliver", hop_ms=3, seq=9)]
    fields = pack(records)
    assert unpack(fields) == records
    assert unpack({k.decode(): v for k, v in fields.items()}) == records  # str keys from decode_responses clients
    assert len(FIELDS) == 16


@pytest.mark.parametrize(
    "fields",
    [
        {b"v": b"9", b"r": b"[]"},
        {b"v": b"1"},
        {b"v": b"1", b"r": b"not json"},
        {b"v": b"1", b"r": b"{}"},
        {b"v": b"1", b"r": b"[[1,2]]"},
        {b"v": b"1", b"r": orjson.dumps([[1, "e", "t", "s", "p", "a", "hop", "x", "y", "r", 1, 1, "ok", 1, 1, 1]])},
        {
            b"v": b"1",
            b"r": orjson.dumps([["1", "e", "t", "s", "p", "a", "publish", "x", "y", "r", 1, 1, "ok", 1, 1, 1]]),
        },
    ],
)
def test_undecodable_entries_are_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(RecordDecodeError):
        unpack(fields)


def test_metrics_render_prometheus_text() -> None:
    reg = Registry()
    reg.describe("events_in_total", "counter", "Events received")
    reg.inc("events_in_total", topic="a.b", source="producer")
    reg.inc("events_in_total", 2, topic="a.b", source="producer")
    text = reg.render()
    assert "# TYPE meshscope_events_in_total counter" in text
    assert 'meshscope_events_in_total{source="producer",topic="a.b"} 3' in text
    assert reg.total("events_in_total", topic="a.b") == 3


def test_regions_and_settings() -> None:
    assert resolve("aws:us-east-1").provider == "aws"
    onprem = resolve("dc1", 50.0, 8.0)
    assert (onprem.provider, onprem.lat) == ("onprem", 50.0)
    with pytest.raises(ValueError, match="latitude"):
        resolve("dc1")
    with pytest.raises(SettingError):
        get_int({"X": "abc"}, "X", 1)
    assert get_map_float({"D": "gcp:europe-west1=40,azure:westeurope=7.5"}, "D") == {
        "gcp:europe-west1": 40.0,
        "azure:westeurope": 7.5,
    }
    with pytest.raises(SettingError):
        get_map_float({"D": "nope"}, "D")
