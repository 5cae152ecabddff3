"""W3C Trace Context processing, table-driven, with the official test suite's cases.

The cases marked ``w3c`` are transcribed from w3c/trace-context ``test/test.py``
(commit acab820, "Fix tracestate key grammar tests (#584)"), which drives a
service over HTTP; here each case's request headers go straight through
``combine_headers`` and ``header_context``/``resolve_trace_context``, no network.
Assertions of that suite about the service's own outgoing span (a new
parent-id per callback) do not apply: the relay never rewrites an event's
``traceparent`` and makes its hop span ids elsewhere, so what is checked is
the suite's verdict on each input (keep the trace id or restart; which
``tracestate`` survives).
"""

from __future__ import annotations

import pytest

from router.httpbinding import combine_headers
from router.tracecontext import (
    ORIGIN_EVENT,
    ORIGIN_HEADER,
    ORIGIN_NEW,
    TraceContext,
    TraceParent,
    event_context,
    header_context,
    new_traceparent,
    parse_traceparent,
    parse_tracestate,
    resolve_trace_context,
    truncate_tracestate,
)

TID = "12345678901234567890123456789012"
SID = "1234567890123456"
TP = f"00-{TID}-{SID}-01"
TP00 = f"00-{TID}-{SID}-00"
KEEP, RESTART = "keep", "restart"


def context(pairs: list[tuple[str, str]]) -> TraceContext:
    """What the relay makes of a request with these header lines and an event without trace context."""
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]
    return resolve_trace_context({}, combine_headers(raw))


TRACEPARENT_CASES = [
    # (w3c test name, header lines, verdict on the trace id)
    ("test_both_traceparent_and_tracestate_missing", [], RESTART),
    ("test_traceparent_included_tracestate_missing", [("traceparent", TP)], KEEP),
    ("test_traceparent_duplicated", [("traceparent", f"00-{TID[:-1]}1-{SID}-01"), ("traceparent", TP)], RESTART),
    ("test_traceparent_header_name", [("trace-parent", TP)], RESTART),
    ("test_traceparent_header_name", [("trace.parent", TP)], RESTART),
    ("test_traceparent_header_name_valid_casing", [("TraceParent", TP)], KEEP),
    ("test_traceparent_header_name_valid_casing", [("TrAcEpArEnT", TP)], KEEP),
    ("test_traceparent_header_name_valid_casing", [("TRACEPARENT", TP)], KEEP),
    ("test_traceparent_version_0x00", [("traceparent", f"{TP}.")], RESTART),
    ("test_traceparent_version_0x00", [("traceparent", f"{TP}-what-the-future-will-be-like")], RESTART),
    ("test_traceparent_version_0xcc", [("traceparent", f"cc-{TID}-{SID}-01")], KEEP),
    ("test_traceparent_version_0xcc", [("traceparent", f"cc-{TID}-{SID}-01-what-the-future-will-be-like")], KEEP),
    ("test_traceparent_version_0xcc", [("traceparent", f"cc-{TID}-{SID}-01.what-the-future-will-be-like")], RESTART),
    ("test_traceparent_version_0xff", [("traceparent", f"ff-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_version_illegal_characters", [("traceparent", f".0-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_version_illegal_characters", [("traceparent", f"0.-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_version_too_long", [("traceparent", f"000-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_version_too_long", [("traceparent", f"0000-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_version_too_short", [("traceparent", f"0-{TID}-{SID}-01")], RESTART),
    ("test_traceparent_trace_id_all_zero", [("traceparent", f"00-{'0' * 32}-{SID}-01")], RESTART),
    ("test_traceparent_trace_id_illegal_characters", [("traceparent", f"00-.{TID[1:]}-{SID}-01")], RESTART),
    ("test_traceparent_trace_id_illegal_characters", [("traceparent", f"00-{TID[:-1]}.-{SID}-01")], RESTART),
    ("test_traceparent_trace_id_too_long", [("traceparent", f"00-{TID}3-{SID}-01")], RESTART),
    ("test_traceparent_trace_id_too_short", [("traceparent", f"00-{TID[:-1]}-{SID}-01")], RESTART),
    ("test_traceparent_parent_id_all_zero", [("traceparent", f"00-{TID}-{'0' * 16}-01")], RESTART),
    ("test_traceparent_parent_id_illegal_characters", [("traceparent", f"00-{TID}-.{SID[1:]}-01")], RESTART),
    ("test_traceparent_parent_id_illegal_characters", [("traceparent", f"00-{TID}-{SID[:-1]}.-01")], RESTART),
    ("test_traceparent_parent_id_too_long", [("traceparent", f"00-{TID}-{SID}7-01")], RESTART),
    ("test_traceparent_parent_id_too_short", [("traceparent", f"00-{TID}-{SID[:-1]}-01")], RESTART),
    ("test_traceparent_trace_flags_illegal_characters", [("traceparent", f"00-{TID}-{SID}-.0")], RESTART),
    ("test_traceparent_trace_flags_illegal_characters", [("traceparent", f"00-{TID}-{SID}-0.")], RESTART),
    ("test_traceparent_trace_flags_too_long", [("traceparent", f"00-{TID}-{SID}-001")], RESTART),
    ("test_traceparent_trace_flags_too_short", [("traceparent", f"00-{TID}-{SID}-1")], RESTART),
    ("test_traceparent_ows_handling", [("traceparent", f" {TP}")], KEEP),
    ("test_traceparent_ows_handling", [("traceparent", f"\t{TP}")], KEEP),
    ("test_traceparent_ows_handling", [("traceparent", f"{TP} ")], KEEP),
    ("test_traceparent_ows_handling", [("traceparent", f"{TP}\t")], KEEP),
    ("test_traceparent_ows_handling", [("traceparent", f"\t {TP} \t")], KEEP),
    ("test_multiple_requests_with_valid_traceparent", [("traceparent", TP)], KEEP),
    ("test_multiple_requests_with_illegal_traceparent", [("traceparent", f"00-{'0' * 32}-{SID}-01")], RESTART),
]


@pytest.mark.parametrize(("case", "pairs", "verdict"), TRACEPARENT_CASES, ids=[c[0] for c in TRACEPARENT_CASES])
def test_w3c_traceparent(case: str, pairs: list[tuple[str, str]], verdict: str) -> None:
    ctx = context(pairs)
    assert parse_traceparent(ctx.parent.format()) == ctx.parent  # always a valid version-00 header out
    assert ctx.parent.format().startswith("00-")
    if verdict == KEEP:
        assert (ctx.parent.trace_id, ctx.parent.span_id, ctx.origin) == (TID, SID, ORIGIN_HEADER)
    else:
        assert ctx.parent.trace_id != TID and ctx.origin == ORIGIN_NEW
        assert ctx.state is None


def test_w3c_restarted_traces_differ_each_time() -> None:
    """w3c test_multiple_requests_without_traceparent / _with_illegal_traceparent: a new id each time."""
    bad = [("traceparent", f"00-{'0' * 32}-{SID}-01")]
    ids = {context(bad).parent.trace_id for _ in range(3)} | {context([]).parent.trace_id for _ in range(3)}
    assert len(ids) == 6 and "0" * 32 not in ids


ALL_KEY = "".join(map(chr, range(0x61, 0x7B))) + "0123456789_-*/"
ALL_VALUE = "".join(map(chr, [*range(0x20, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)]))


def bars(first: int, last: int) -> str:
    return ",".join(f"bar{i:02d}={i:02d}" for i in range(first, last + 1))


BARS_32 = [bars(1, 10), bars(11, 20), bars(21, 30), bars(31, 32)]
BARS_33 = [bars(1, 10), bars(11, 20), bars(21, 30), bars(31, 33)]
KEYS_KEPT = ["z" * 256, "t" * 241 + "@" + "v" * 14, "t" * 242 + "@v", "t@" + "v" * 15]

TRACESTATE_CASES = [
    # (w3c test name, header lines besides a valid traceparent, the tracestate that survives)
    ("test_tracestate_included_traceparent_included", [("tracestate", "foo=1,bar=2")], "foo=1,bar=2"),
    ("test_tracestate_header_name", [("trace-state", "foo=1")], None),
    ("test_tracestate_header_name", [("trace.state", "foo=1")], None),
    ("test_tracestate_header_name_valid_casing", [("TraceState", "foo=1")], "foo=1"),
    ("test_tracestate_header_name_valid_casing", [("TrAcEsTaTe", "foo=1")], "foo=1"),
    ("test_tracestate_header_name_valid_casing", [("TRACESTATE", "foo=1")], "foo=1"),
    ("test_tracestate_empty_header", [("tracestate", "")], None),
    ("test_tracestate_empty_header", [("tracestate", "foo=1"), ("tracestate", "")], "foo=1"),
    ("test_tracestate_empty_header", [("tracestate", ""), ("tracestate", "foo=1")], "foo=1"),
    (
        "test_tracestate_multiple_headers_different_keys",
        [("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"), ("tracestate", "baz=3")],
        "foo=1,bar=2,rojo=1,congo=2,baz=3",
    ),
    # duplicates: the suite allows keeping them or one of them; we keep the leftmost (most recent)
    ("test_tracestate_duplicated_keys", [("tracestate", "foo=1,foo=1")], "foo=1"),
    ("test_tracestate_duplicated_keys", [("tracestate", "foo=1,foo=2")], "foo=1"),
    ("test_tracestate_duplicated_keys", [("tracestate", "foo=1"), ("tracestate", "foo=1")], "foo=1"),
    ("test_tracestate_duplicated_keys", [("tracestate", "foo=1"), ("tracestate", "foo=2")], "foo=1"),
    ("test_tracestate_all_allowed_characters", [("tracestate", f"{ALL_KEY}={ALL_VALUE}")], f"{ALL_KEY}={ALL_VALUE}"),
    (
        "test_tracestate_all_allowed_characters",
        [("tracestate", f"{ALL_KEY}@a-z0-9_-*/={ALL_VALUE}")],
        f"{ALL_KEY}@a-z0-9_-*/={ALL_VALUE}",
    ),
    ("test_tracestate_ows_handling", [("tracestate", "foo=1 \t , \t bar=2, \t baz=3")], "foo=1,bar=2,baz=3"),
    ("test_tracestate_ows_handling", [("tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3")], "foo=1,bar=2,baz=3"),
    ("test_tracestate_ows_handling", [("tracestate", " foo=1")], "foo=1"),
    ("test_tracestate_ows_handling", [("tracestate", "\tfoo=1")], "foo=1"),
    ("test_tracestate_ows_handling", [("tracestate", "foo=1 ")], "foo=1"),
    ("test_tracestate_ows_handling", [("tracestate", "foo=1\t")], "foo=1"),
    ("test_tracestate_ows_handling", [("tracestate", "\t foo=1 \t")], "foo=1"),
    ("test_tracestate_key_illegal_characters", [("tracestate", "foo =1")], None),
    ("test_tracestate_key_illegal_characters", [("tracestate", "FOO=1")], None),
    ("test_tracestate_key_illegal_characters", [("tracestate", "foo.bar=1")], None),
    ("test_tracestate_key_illegal_vendor_format", [("tracestate", "foo@=1,bar=2")], "foo@=1,bar=2"),
    ("test_tracestate_key_illegal_vendor_format", [("tracestate", "@foo=1,bar=2")], None),
    ("test_tracestate_key_illegal_vendor_format", [("tracestate", "foo@@bar=1,bar=2")], "foo@@bar=1,bar=2"),
    ("test_tracestate_key_illegal_vendor_format", [("tracestate", "foo@bar@baz=1,bar=2")], "foo@bar@baz=1,bar=2"),
    (
        "test_tracestate_member_count_limit",
        [("tracestate", part) for part in BARS_32],
        ",".join(BARS_32),
    ),
    ("test_tracestate_member_count_limit", [("tracestate", part) for part in BARS_33], None),
    *[
        ("test_tracestate_key_length_limit", [("tracestate", "foo=1"), ("tracestate", f"{key}=1")], f"foo=1,{key}=1")
        for key in KEYS_KEPT
    ],
    ("test_tracestate_key_length_limit", [("tracestate", "foo=1"), ("tracestate", "z" * 257 + "=1")], None),
    ("test_tracestate_value_illegal_characters", [("tracestate", "foo=bar=baz")], None),
    ("test_tracestate_value_illegal_characters", [("tracestate", "foo=,bar=3")], None),
]


@pytest.mark.parametrize(("case", "pairs", "state"), TRACESTATE_CASES, ids=[c[0] for c in TRACESTATE_CASES])
def test_w3c_tracestate(case: str, pairs: list[tuple[str, str]], state: str | None) -> None:
    ctx = context([("traceparent", TP00), *pairs])
    assert ctx.parent.trace_id == TID  # a bad tracestate never affects traceparent
    assert ctx.state == state


def test_w3c_tracestate_without_traceparent_is_not_parsed() -> None:
    """w3c test_tracestate_included_traceparent_missing: a new trace, and its tracestate discarded."""
    for pairs in ([("tracestate", "foo=1")], [("tracestate", "foo=1,bar=2")]):
        ctx = context(pairs)
        assert (ctx.origin, ctx.state) == (ORIGIN_NEW, None)


def test_w3c_level2_random_flag_propagates() -> None:
    """w3c TraceContext2Test.test_propagates_random_flag."""
    ctx = context([("traceparent", f"00-{TID}-{SID}-02")])
    assert ctx.parent.trace_id == TID and ctx.parent.random and not ctx.parent.sampled


@pytest.mark.parametrize(
    ("value", "emitted"),
    [
        (TP, TP),  # the fast path
        (f"cc-{TID}-{SID}-01", TP),  # a higher version is re-emitted as 00
        (f"cc-{TID}-{SID}-03-future", TP),  # from a higher version only the sampled bit is known
        (f"cc-{TID}-{SID}-fe", TP00),
        (f"00-{TID}-{SID}-ff", f"00-{TID}-{SID}-03"),  # reserved bits cleared, sampled and random kept
        (f"00-{TID}-{SID}-09", TP),
        (f"00-{TID}-{SID}-02", f"00-{TID}-{SID}-02"),
        (f" {TP}\t", TP),
        ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", None),  # upper case
        (f"00-{TID}-{SID}-0A", None),
        (f"FF-{TID}-{SID}-01", None),
        (f"cc-{TID}-{SID}", None),
        (f"{TP}\n", None),
        ("", None),
        (None, None),
        (b"00-x", None),
    ],
)
def test_traceparent_is_reemitted_as_version_00(value: object, emitted: str | None) -> None:
    parsed = parse_traceparent(value)
    assert (parsed.format() if parsed else None) == emitted


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        (["rojo=1", "congo=2"], "rojo=1,congo=2"),
        (" , rojo=1 ,, congo=2 , ", "rojo=1,congo=2"),
        ("k= leading space kept", "k= leading space kept"),
        ("k=" + "v" * 256, "k=" + "v" * 256),
        ("k=" + "v" * 257, None),
        ("k=a\x7f", None),
        ("k=a,k2=b\x00", None),
        ("1k=a", "1k=a"),
        ("_k=a", None),
        ("k", None),
        ("=a", None),
        (",,,", None),
        ("", None),
        (42, None),
        (["a=1", 2], None),
        ("a=1," * 70_000, None),  # refused before it is split
    ],
)
def test_tracestate_is_normalized_or_discarded(value: object, normalized: str | None) -> None:
    assert parse_tracestate(value) == normalized


def test_tracestate_truncation_drops_whole_members_big_ones_first() -> None:
    big = "big=" + "x" * 200
    state = f"a=1,{big},b=2,c=3"
    assert truncate_tracestate(state, len(state)) == state
    assert truncate_tracestate(state, 20) == "a=1,b=2,c=3"
    assert truncate_tracestate(state, 8) == "a=1,b=2"
    assert truncate_tracestate(big, 10) is None


def test_the_event_context_rule() -> None:
    """The event's own valid traceparent wins; else the request's headers; else a new trace."""
    own = f"00-{'a' * 32}-{'b' * 16}-01"
    headers = {"traceparent": TP, "tracestate": "rojo=1"}
    header = header_context(headers)
    assert header == TraceContext(TraceParent(TID, SID, "01"), "rojo=1", ORIGIN_HEADER)

    ctx = event_context({"traceparent": own, "tracestate": "congo=2"}, header)
    assert (ctx.parent.format(), ctx.state, ctx.origin) == (own, "congo=2", ORIGIN_EVENT)
    # the event's own context never borrows the header's tracestate
    assert event_context({"traceparent": own}, header).state is None
    # an invalid own traceparent falls back to the headers, own tracestate and all dropped
    assert event_context({"traceparent": "00-broken", "tracestate": "congo=2"}, header) == header
    assert resolve_trace_context({"traceparent": 7}, headers) == header
    fresh = event_context({"tracestate": "congo=2"}, None)
    assert (fresh.origin, fresh.state) == (ORIGIN_NEW, None)
    # an invalid header traceparent is no fallback; its tracestate is not even parsed
    assert header_context({"traceparent": "nope", "tracestate": "rojo=1"}) is None


def test_new_traces_are_random_and_sampled_as_asked() -> None:
    tp = new_traceparent()
    assert tp.sampled and tp.random and tp.flags == "03"
    assert parse_traceparent(tp.format()) == tp
    unsampled = new_traceparent(sampled=False)
    assert not unsampled.sampled and unsampled.random
