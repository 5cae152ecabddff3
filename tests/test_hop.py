"""The hop record: what a flow record names of an event, from an accepted event or from hostile bytes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshcore import flowrecord as fk
from router.channel import Held
from router.envelope import validate_event
from router.hop import NOTHING, Hop, Subject, dropped, gap

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def event(**extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "e1", "source": "s", "type": "orders.created", "traceparent": TRACEPARENT,
            **extra}  # fmt: skip


def test_an_accepted_event_is_named_whole() -> None:
    ev = validate_event(event(dataschema="urn:x:1", data={"n": 1}))
    ev.published_us = 1_000_000
    s = Subject.of_event(ev)
    assert s == Subject("e1", "0af7651916cd43dd8448eb211c80319c", "orders.created", ev.size, 1_000_000, "urn:x:1", True)
    unsampled = validate_event(event(id="e2", traceparent=TRACEPARENT[:-2] + "00"))
    assert Subject.of_event(unsampled).sampled is False  # the producer's flag: no span at any relay
    rec = Hop(s, fk.DELIVER, "a" * 16, "b" * 16, "aws:us-east-1", "gcp:europe-west1", 1_250_000, 3.5).flow_record("r1")
    assert (rec.event_id, rec.topic, rec.trace_id, rec.kind, rec.relay) == (
        "e1", "orders.created", "0af7651916cd43dd8448eb211c80319c", fk.DELIVER, "r1",
    )  # fmt: skip
    assert rec.e2e_ms == 250.0 and rec.hop_ms == 3.5 and rec.status == fk.OK and rec.dataschema == "urn:x:1"


def test_what_can_still_be_read_of_a_refused_event() -> None:
    s = Subject.of_body(event(id="x" * 1000, type="t" * 1000), published_us=7)
    assert s.event_id == "x" * 256 and s.topic == "t" * 255
    assert s.trace_id == "0af7651916cd43dd8448eb211c80319c" and s.published_us == 7 and s.size == 0
    assert s.sampled  # a refusal of a sampled trace gets its (error) span


TABLE = [
    (None, NOTHING),
    ([1, 2], NOTHING),
    ({"id": 5, "type": ["a"], "traceparent": "garbage", "dataschema": {}}, NOTHING),
    ({"id": "only-an-id"}, Subject(event_id="only-an-id")),
    ({"type": "a.b", "traceparent": TRACEPARENT.upper()}, Subject(topic="a.b")),
]


def test_fields_of_the_wrong_type_are_left_out() -> None:
    for body, expected in TABLE:
        assert Subject.of_body(body) == expected, body


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)
    )
)
def test_any_json_gives_a_subject_of_bounded_strings(body: Any) -> None:
    s = Subject.of_body(body)
    assert all(type(v) is str for v in (s.event_id, s.trace_id, s.topic, s.dataschema))
    assert len(s.event_id) <= 256 and len(s.topic) <= 255 and len(s.dataschema) <= 2048
    assert s.trace_id == "" or len(s.trace_id) == 32


def test_gap_and_given_up_records() -> None:
    rec = gap("aws:us-east-1", "gcp:europe-west1", 5, 9).flow_record("r")
    assert (rec.kind, rec.status, rec.seq, rec.seq_end, rec.event_id) == (fk.DROP, fk.GAP, 5, 9, "")
    ev = validate_event(event())
    held = Held(12, ev, "c" * 16, "alice", 1, attempt=2)
    rec = dropped(held, "aws:us-east-1", "gcp:europe-west1", fk.EXPIRED, 99).flow_record("r")
    assert (rec.kind, rec.status, rec.seq, rec.attempt, rec.principal, rec.parent_span_id, rec.event_id) == (
        fk.DROP, fk.EXPIRED, 12, 2, "alice", "c" * 16, "e1",
    )  # fmt: skip
