"""Pure parts of the relay, table-driven: no servers."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.backoff import backoff_s
from meshcore.flowrecord import FIELDS, KINDS, STATUSES, FlowRecord, RecordDecodeError, loose_rows, pack, unpack
from meshcore.metrics import Registry
from meshcore.settings import SettingError, get_int, get_map_float
from meshcore.topic import PatternSet, matches, validate_pattern, validate_topic
from router.envelope import decode_events, validate_event
from router.errors import EventTooLarge, InvalidTopic, MalformedEvent
from router.regions import resolve
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


@pytest.mark.parametrize(
    ("topic", "says"),
    [
        ("", "non-empty"),
        ("orders.", "empty token"),
        (".orders", "empty token"),
        ("orders..x", "empty token"),
        ("orders.*", "wildcard"),
        ("orders.>", "wildcard"),
        ("orders.a*", "wildcard"),
        ("a b", "printable ASCII"),
        ("a\tb", "printable ASCII"),
        ("a\x00b", "printable ASCII"),
        ("a\x7fb", "printable ASCII"),
        ("orders.créé", "printable ASCII"),
        ("x" * 256, "longer than 255"),
        (None, "non-empty string"),
        (["a"], "non-empty string"),
    ],
)
def test_bad_topics_are_refused(topic: str, says: str) -> None:
    with pytest.raises(InvalidTopic, match=says):
        validate_topic(topic)


@pytest.mark.parametrize(
    "topic", ["orders.created", "a", "x" * 255, "Orders.EU-1.created_v2", "a/b.c:d.#1.~!$%&'()+,;=?@[]^`{|}"]
)
def test_good_topics_pass(topic: str) -> None:
    assert validate_topic(topic) == topic


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("orders.>.x", "'>' must be the last token"),
        (">.x", "'>' must be the last token"),
        ("orders.a*", "whole token"),
        ("orders.>x", "whole token"),
        ("**", "whole token"),
        ("", "non-empty"),
        ("a..b", "empty token"),
        ("a.", "empty token"),
        ("a. b", "printable ASCII"),
        ("ünï.*", "printable ASCII"),
        ("*." * 128, "longer than 255"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, says: str) -> None:
    with pytest.raises(InvalidTopic, match=says):
        validate_pattern(pattern)


@pytest.mark.parametrize("pattern", ["orders.>", "*.created", ">", "a.*.c", "*", "*.*.>", "orders.created"])
def test_good_patterns_pass(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


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
        (  # a higher version keeps only the sampled bit
            "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff",
            TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01"),
        ),
        (  # version 00 keeps sampled and random, clears the reserved bits
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-ff",
            TraceParent("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "03"),
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
        (ce(subject=""), "subject"),
        (ce(id="i" * 257), "id"),
        (ce(region={"nested": True}), "region"),
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
    future = validate_event(ce(traceparent="cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"), 1000)
    assert future.body["traceparent"] == kept  # re-emitted as version 00
    fresh = validate_event(ce(traceparent="00-broken", tracestate="rojo=1"), 1000)
    assert fresh.body["traceparent"] != "00-broken" and "tracestate" not in fresh.body
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


def _row(**over: object) -> list[object]:
    return list(record()._replace(**over))


def test_flow_records_pack_and_unpack() -> None:
    records = [record(), record(kind="deliver", hop_ms=3, seq=9)]
    fields = pack(records)
    assert unpack(fields) == records
    assert unpack({k.decode(): v for k, v in fields.items()}) == records  # str keys from decode_responses clients
    assert len(FIELDS) == 20
    v2 = [record(principal="billing", via="gcp:europe-west1", seq_end=4, dataschema="meshscope:schema/a/1")]
    assert unpack(pack(v2)) == v2


def test_entries_hold_columns_and_version_2_rows_are_still_read() -> None:
    records = [record(), record(kind="deliver", hop_ms=3, seq=9)]
    fields = pack(records)
    assert fields[b"v"] == b"3"
    columns = orjson.loads(fields[b"r"])
    assert len(columns) == len(FIELDS) and columns[6] == ["publish", "deliver"]
    rows = {b"v": b"2", b"r": orjson.dumps([list(r) for r in records])}
    assert unpack(rows) == records
    assert loose_rows(fields) == loose_rows(rows) == [list(r) for r in records]
    assert unpack(pack([])) == []


def test_version_1_entries_are_still_read() -> None:
    row = [1, "e", "t", "s", "p", "a.b", "publish", "x", "y", "r", 1.0, 1.0, "ok", 1, 1, 0]
    (old,) = unpack({b"v": b"1", b"r": orjson.dumps([row])})
    assert (old.principal, old.via, old.seq_end, old.dataschema) == ("", "", 0, "")


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
        {b"v": b"1", b"r": orjson.dumps([[1, "e", "t", "s", "p", "a", "drop", "x", "y", "r", 1, 1, "bogus", 1, 1, 1]])},
        {b"v": b"2", b"r": orjson.dumps([[1, "e", "t", "s", "p", "a", "drop", "x", "y", "r", 1, 1, "ok", 1, 1, 1]])},
        {b"v": b"3", b"r": b"[[1],[2]]"},  # not one column per field
        {b"v": b"3", b"r": orjson.dumps([[1]] * 19 + [1])},  # a column that is not an array
        {b"v": b"3", b"r": orjson.dumps([[1, 2]] + [["a"]] * 19)},  # columns of different lengths
        {b"v": b"3", b"r": orjson.dumps([list(c) for c in zip(*[_row(kind="hop")], strict=True)])},
        {b"v": b"3", b"r": orjson.dumps([list(c) for c in zip(*[_row(status="bogus")], strict=True)])},
        {b"v": b"3", b"r": orjson.dumps([list(c) for c in zip(*[_row(ts="1")], strict=True)])},
        {b"v": b"3", b"r": orjson.dumps([list(c) for c in zip(*[_row(hop_ms="1")], strict=True)])},
        {b"v": b"3", b"r": orjson.dumps([list(c) for c in zip(*[_row(principal=None)], strict=True)])},
        {b"v": b"3", b"r": b"{}"},
    ],
)
def test_undecodable_entries_are_refused(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(RecordDecodeError):
        unpack(fields)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=25) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=60,
)


@given(version=st.sampled_from([b"1", b"2", b"3", b"4", b""]), body=_JSON)
@settings(max_examples=300, deadline=None)
def test_any_entry_is_either_records_or_refused_with_a_reason(version: bytes, body: object) -> None:
    fields = {b"v": version, b"r": orjson.dumps(body)}
    try:
        records = unpack(fields)
    except RecordDecodeError as exc:
        assert str(exc)
    else:
        assert all(r.kind in KINDS and r.status in STATUSES for r in records)
        assert pack(records)[b"v"] == b"3" and unpack(pack(records)) == records


def test_metrics_render_prometheus_text() -> None:
    reg = Registry()
    reg.describe("events_in_total", "counter", "Events received")
    reg.inc("events_in_total", topic="a.b", source="producer")
    reg.inc("events_in_total", 2, topic="a.b", source="producer")
    text = reg.render()
    assert "# TYPE meshscope_events_in_total counter" in text
    assert 'meshscope_events_in_total{source="producer",topic="a.b"} 3' in text
    assert reg.total("events_in_total", topic="a.b") == 3


def test_topic_labels_are_bounded() -> None:
    reg = Registry(topic_label_max=3)
    reg.describe("events_in_total", "counter", "Events received")
    for i in range(1000):
        reg.inc("events_in_total", topic=f"t{i}", source="producer")
    text = reg.render()
    assert text.count("meshscope_events_in_total{") == 4  # three topics and the rest
    assert 'topic="_other"} 997' in text


def test_regions_and_settings() -> None:
    assert resolve("aws:us-east-1").provider == "aws"
    onprem = resolve("onprem:dc1", 50.0, 8.0)
    assert (onprem.provider, onprem.lat) == ("onprem", 50.0)
    with pytest.raises(ValueError, match="latitude"):
        resolve("onprem:dc1")
    with pytest.raises(SettingError):
        get_int({"X": "abc"}, "X", 1)
    assert get_map_float({"D": "gcp:europe-west1=40,azure:westeurope=7.5"}, "D") == {
        "gcp:europe-west1": 40.0,
        "azure:westeurope": 7.5,
    }
    with pytest.raises(SettingError):
        get_map_float({"D": "nope"}, "D")
