"""The pure parts of governance across regions: ordering versions, and the frames that carry them.

A copy of the document from a peer is compared with the one held (newer, same, older, fork),
a change is a compare-and-set on the version it was made on, and GOV, GOVPROP and GOVRES frames
are checked field by field like every other frame: anything else is a FrameError, never a crash.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.document import InvalidDocument
from meshcore.governance import (
    FORK,
    NEWER,
    OLDER,
    SAME,
    GovernanceConflict,
    GovernanceContent,
    GovernanceDocument,
    check_base,
    compare,
    content_from_json,
    from_json,
    next_document,
    parse_content,
    to_json,
    version_number,
)
from router import frame as fr
from router.authority import document_frame
from router.errors import FrameError

A = "aws:us-east-1"
AT = datetime(2025, 1, 1, tzinfo=UTC)
RULES = {"policies": [{"id": "r1", "effect": "allow", "principals": ["*"], "actions": ["publish"], "topics": [">"]}]}


def doc(version: int, content: GovernanceContent | None = None) -> GovernanceDocument:
    content = content or parse_content({"policies": None})
    return GovernanceDocument(version, content.digest, "alice", AT, content)


def test_a_copy_is_newer_the_same_older_or_a_fork() -> None:
    other = parse_content(RULES)
    assert compare(doc(1), None) == NEWER
    assert compare(doc(3), doc(2)) == NEWER
    assert compare(doc(2), doc(2)) == SAME
    assert compare(doc(1), doc(2)) == OLDER
    assert compare(doc(2, other), doc(2)) == FORK  # one number, two contents: never settled silently


def test_a_change_made_on_an_older_version_is_refused() -> None:
    first = next_document(None, parse_content(RULES), "alice", AT)
    check_base(first, first.version_id)
    check_base(first, None)  # no base named: the transaction's own read is the base
    with pytest.raises(GovernanceConflict) as info:
        check_base(first, "none")
    assert info.value.current == first.version_id and "none" in str(info.value)
    with pytest.raises(GovernanceConflict):
        check_base(None, first.version_id)
    check_base(None, "none")


@pytest.mark.parametrize(
    ("version_id", "number"),
    [("none", 0), ("7-3fa2b1c9d0e1", 7), ("12-000000000000", 12), ("7-XYZ", 0), ("07-3fa2b1c9d0e1", 0), ("", 0)],
)
def test_version_numbers(version_id: str, number: int) -> None:
    assert version_number(version_id) == number


def test_content_sent_to_the_authority_is_read_as_strictly_as_a_document() -> None:
    assert content_from_json(orjson.dumps(RULES)).policies is not None
    for bad in (b'{"policies": null, "policies": []}', b"[1]", b'{"policies": NaN}', b'{"nope": 1}'):
        with pytest.raises(InvalidDocument):
            content_from_json(bad)


def test_a_document_round_trips_through_a_gov_frame() -> None:
    document = next_document(None, parse_content(RULES), "alice", AT)
    frame = fr.decode(document_frame(document))
    version_id, text = fr.document_of(frame)
    assert version_id == document.version_id and from_json(text) == document


def test_proposals_and_results_round_trip() -> None:
    proposal = fr.proposal_of(
        fr.decode(fr.encode(fr.GOVPROP, id="0123456789abcdef", base="none", author="alice", content="{}"))
    )
    assert proposal == fr.Proposal("0123456789abcdef", "none", "alice", "{}")
    result = fr.result_of(
        fr.decode(fr.encode(fr.GOVRES, id="0123456789abcdef", status=409, error="conflict", reasons=["a", "b"]))
    )
    assert result.status == 409 and result.reasons == ("a", "b") and result.version == ""


def test_a_hello_says_which_authority_it_follows_and_whether_it_is_cut_off() -> None:
    hello = {"region": A, "relay": "r", "provider": "aws", "lat": 1, "lon": 2, "city": "x", "gov": "none"}
    old = fr.hello_of(hello)
    assert old["gov_home"] == "" and old["gov_cut_off"] is False and old["replicates"] is False
    new = fr.hello_of({**hello, "gov_home": A, "gov_cut_off": True})
    assert new["gov_home"] == A and new["gov_cut_off"] is True and new["replicates"] is True


GOOD_PROPOSAL = {"t": "GOVPROP", "id": "0123456789abcdef", "base": "none", "author": "alice", "content": "{}"}
GOOD_RESULT = {"t": "GOVRES", "id": "0123456789abcdef", "status": 200, "version": "1-0123456789ab", "doc": "{}"}
GOOD_GOV = {"t": "GOV", "version": 1, "digest": "0123456789ab", "doc": "{}"}
HELLO = {"t": "HELLO", "region": A, "relay": "r", "provider": "aws", "lat": 1, "lon": 2, "city": "x"}


@pytest.mark.parametrize(
    ("frame", "says"),
    [
        ({**GOOD_GOV, "version": 0}, "GOV version"),
        ({**GOOD_GOV, "version": "1"}, "GOV version"),
        ({**GOOD_GOV, "digest": "0123456789AB"}, "digest"),
        ({**GOOD_GOV, "digest": "01234"}, "digest"),
        ({**GOOD_GOV, "doc": {"format": 1}}, "GOV doc"),
        ({**GOOD_PROPOSAL, "id": "0123"}, "id"),
        ({**GOOD_PROPOSAL, "id": None}, "id"),
        ({**GOOD_PROPOSAL, "base": "7"}, "base"),
        ({**GOOD_PROPOSAL, "base": "1-xyz"}, "base"),
        ({**GOOD_PROPOSAL, "author": "<script>"}, "author"),
        ({**GOOD_PROPOSAL, "author": ""}, "author"),
        ({**GOOD_PROPOSAL, "content": []}, "content"),
        ({**GOOD_RESULT, "status": 500}, "status"),
        ({**GOOD_RESULT, "status": True}, "status"),
        ({**GOOD_RESULT, "doc": ""}, "carries the version"),
        ({**GOOD_RESULT, "version": "x"}, "version"),
        ({**GOOD_RESULT, "reasons": "one"}, "reasons"),
        ({**GOOD_RESULT, "reasons": ["x"] * 101}, "reasons"),
        ({**GOOD_RESULT, "error": "x" * 1001}, "error"),
        ({**HELLO, "gov_home": "not a region"}, "gov_home"),
        ({**HELLO, "gov_cut_off": "yes"}, "gov_cut_off"),
    ],
)
def test_bad_governance_frames_are_refused_with_the_reason(frame: dict[str, Any], says: str) -> None:
    with pytest.raises(FrameError) as info:
        read(frame)
    assert says in str(info.value)


def read(frame: dict[str, Any]) -> Any:
    kind = frame["t"]
    if kind == "GOV":
        return fr.document_of(frame)
    if kind == "GOVPROP":
        return fr.proposal_of(frame)
    if kind == "GOVRES":
        return fr.result_of(frame)
    return fr.hello_of(frame)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=5),
        max_leaves=30,
    ),
    st.sampled_from(["id", "base", "author", "content", "status", "version", "doc", "digest", "reasons", "gov_home"]),
)
def test_arbitrary_governance_frames_never_raise_anything_but_frame_error(value: Any, field: str) -> None:
    for good in (GOOD_GOV, GOOD_PROPOSAL, GOOD_RESULT, HELLO):
        frame = {**good, field: value}
        try:
            fr.decode(orjson.dumps({"v": 2, **frame}))
            read(frame)
        except FrameError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_document_text_is_refused_as_invalid_never_taken(text: bytes | str) -> None:
    try:
        from_json(text)
    except InvalidDocument:
        return
    raise AssertionError("random bytes read as a governance document")


def test_a_gov_frame_whose_version_lies_about_its_document_is_caught() -> None:
    document = next_document(None, parse_content(RULES), "alice", AT)
    forged = {"t": "GOV", "version": 9, "digest": document.digest, "doc": to_json(document).decode()}
    version_id, text = fr.document_of(forged)
    assert version_id != from_json(text).version_id  # router.authority refuses such a frame (FrameError)
