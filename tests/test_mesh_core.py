"""Pure parts of the mesh, table-driven: routes, frames, channels, applied state, breaker, auth. No servers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.auth import AuthConfigError, parse_principals, token_hash
from meshcore.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from meshcore.settings import whole_number
from meshcore.supervise import Supervisor
from router import frame as fr
from router.channel import Channel, Held
from router.dedup import DedupLog, DedupWindow, dedup_key, pack_keys, unpack_keys
from router.envelope import validate_event
from router.errors import FrameError
from router.origin import Claim, OriginState
from router.outbox import ranges_of
from router.routing import LinkStateTable, LocalInterest

A, B, C, D = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope", "aws:ap-northeast-1"
NOW = 1_800_000_000_000_000


def ad(region: str, links: dict[str, float], patterns: tuple[str, ...] = (), seq: int = NOW, transit: bool = True):
    return fr.LinkStateAd(region, seq, links, patterns, transit)


# ---- routes -----------------------------------------------------------------------------------


def table(own: dict[str, float], *ads: fr.LinkStateAd, hop_limit: int = 3) -> LinkStateTable:
    t = LinkStateTable(A, hop_limit, route_age_s=30, interest_age_s=3600)
    t.set_own_links(own)
    for a in ads:
        t.merge(a, NOW)
    return t


@pytest.mark.parametrize(
    ("own", "ads", "dst", "path"),
    [
        # the direct link wins whenever it is up, even when a detour would be faster
        ({B: 255, C: 85}, [ad(C, {B: 10})], B, (B,)),
        # direct link down: through the relay that reaches the destination
        ({C: 85}, [ad(C, {B: 160}), ad(B, {C: 160})], B, (C, B)),
        # the cheapest detour of two
        ({C: 85, D: 10}, [ad(C, {B: 160}), ad(D, {B: 50})], B, (D, B)),
        # a relay that offers no transit is never a detour
        ({C: 85, D: 10}, [ad(C, {B: 160}), ad(D, {B: 50}, transit=False)], B, (C, B)),
        # nobody reaches it
        ({C: 85}, [ad(C, {D: 10})], B, ()),
        # two transit hops, within the hop limit of 3
        ({C: 10}, [ad(C, {D: 10}), ad(D, {B: 10})], B, (C, D, B)),
    ],
)
def test_routes(own: dict[str, float], ads: list[fr.LinkStateAd], dst: str, path: tuple[str, ...]) -> None:
    route = table(own, *ads).route(dst)
    assert route.path == path
    assert route.next_hop == (path[0] if path else None)


def test_a_new_rtt_on_our_own_link_reprices_routes_without_counting_as_a_topology_change() -> None:
    t = table({C: 1.0, D: 1.0}, ad(C, {B: 50}), ad(D, {B: 60}))  # costs before the first pongs
    assert t.route(B).path == (C, B) and t.route(B).cost_ms == 51
    assert t.set_own_links({C: 120.0, D: 20.0}) is False  # same links: nothing to re-advertise at once
    route = t.route(B)
    assert route.path == (D, B) and route.cost_ms == 80  # the cached route did not outlive the new RTTs
    assert t.route(C).cost_ms == 120


def test_hop_limit_bounds_detours() -> None:
    t = table({C: 10}, ad(C, {D: 10}), ad(D, {B: 10}), hop_limit=2)
    assert not t.route(B).reachable


def test_stale_link_state_stops_routing_but_interest_is_kept() -> None:
    t = table({C: 10}, ad(C, {B: 10}, seq=NOW), ad(B, {}, ("orders.>",), seq=NOW))
    assert t.route(B).path == (C, B) and t.interested("orders.x") == (B,)
    later = NOW + 31_000_000
    assert t.refresh(later)
    assert not t.route(B).reachable  # C's links are too old to route by
    assert t.interested("orders.x") == (B,)  # but B still wants orders: hold them for it
    assert t.refresh(NOW + 3601_000_000) and t.interested("orders.x") == ()


def test_newer_link_state_wins_and_older_is_ignored() -> None:
    t = table({}, ad(B, {}, ("a.>",), seq=NOW + 5))
    assert not t.merge(ad(B, {}, ("b.>",), seq=NOW + 4), NOW)
    assert t.interested("a.x") == (B,)
    assert t.merge(ad(B, {}, ("b.>",), seq=NOW + 6), NOW)
    assert t.interested("a.x") == () and t.interested("b.x") == (B,)
    assert not t.merge(ad(A, {}, (">",)), NOW)  # our own advertisement coming back is ignored


def test_local_interest_is_reference_counted() -> None:
    interest = LocalInterest()
    assert interest.add(["orders.>"]) is True
    assert interest.add(["orders.>"]) is False  # a second subscriber on the same pattern
    assert interest.remove(["orders.>"]) is False  # one subscriber still there
    assert interest.patterns.matches("orders.x")
    assert interest.remove(["orders.>"]) is True
    assert not interest.patterns.matches("orders.x")


def test_dedup_marks_seen_only_after_commit() -> None:
    window = DedupWindow(2)
    key = dedup_key("tester", "/src", "1")
    assert window.state(key) == "new" and window.reserve(key)
    assert window.state(key) == "pending" and not window.reserve(key)
    window.release(key)  # the commit failed: a retry is new, not a duplicate
    assert window.state(key) == "new" and window.reserve(key)
    window.commit(key)
    assert window.state(key) == "seen"
    window.commit(dedup_key("tester", "/src", "2"))
    window.commit(dedup_key("tester", "/src", "3"))
    assert window.state(key) == "new"  # bounded: the oldest is forgotten
    assert window.state(dedup_key("other", "/src", "3")) == "new"  # another principal's event with the same id


def test_dedup_keys_name_principal_source_and_id_apart() -> None:
    keys = {
        dedup_key("a", "b", "c"),
        dedup_key("a", "bc", ""),
        dedup_key("ab", "", "c"),
        dedup_key("a", "b\x00", "c"),
        dedup_key("", "", ""),
    }
    assert len(keys) == 5 and {len(k) for k in keys} == {8}


@given(st.lists(st.binary(min_size=8, max_size=8), max_size=50), st.binary(max_size=7))
def test_stored_keys_read_back_as_written_and_a_torn_tail_is_left_out(keys: list[bytes], tail: bytes) -> None:
    assert unpack_keys(pack_keys(keys)) == keys
    assert unpack_keys(pack_keys(keys) + tail) == keys


def test_keys_loaded_after_a_restart_fill_the_window_newest_last() -> None:
    window = DedupWindow(3)
    keys = [dedup_key("p", "/s", str(i)) for i in range(5)]
    window.load(keys)
    assert [window.state(k) for k in keys] == ["new", "new", "seen", "seen", "seen"]


@pytest.mark.parametrize(
    ("writes", "now_ms", "want"),
    [
        ([], 100_000, 100_000 - 60_000 - 5_000),  # nothing written: the time window alone
        ([(50_000, 4), (60_000, 4)], 70_000, 70_000 - 60_000 - 5_000),  # fewer keys than the window holds
        ([(50_000, 6), (60_000, 6), (65_000, 6)], 70_000, 60_000 - 5_000),  # 10 keys: the oldest entry goes
        ([(1_000, 6), (65_000, 3)], 70_000, 70_000 - 60_000 - 5_000),  # older than the time window: gone
    ],
)
def test_the_stored_keys_are_trimmed_to_the_time_window_and_the_window_size(
    writes: list[tuple[int, int]], now_ms: int, want: int
) -> None:
    log = DedupLog(window_s=60, max_keys=10)
    for at_ms, n in writes:
        log.wrote(at_ms, n)
    assert log.min_id_ms(now_ms) == max(0, want)


# ---- frames -----------------------------------------------------------------------------------


def good_row(**over: Any) -> list[Any]:
    row = {
        "origin": A,
        "epoch": "0123456789abcdef",
        "seq": 5,
        "floor": 3,
        "high": 9,
        "dst": C,
        "path": [A],
        "span": "00f067aa0ba902b7",
        "sent": NOW,
        "published": NOW - 1000,
        "attempt": 1,
        "principal": "billing",
        "event": {"specversion": "1.0", "id": "x", "source": "/s", "type": "a.b"},
    }
    row.update(over)
    return list(row.values())


def items(*rows: Any, sender: str = A, receiver: str = C) -> tuple[list[fr.Item], list[fr.BadItem]]:
    return fr.items_of({"t": "EVENTS", "b": list(rows)}, sender, receiver, NOW, 3600_000_000, 300_000_000, 3)


@pytest.mark.parametrize(
    ("row", "says"),
    [
        (good_row(origin="evil<script>"), "origin"),
        (good_row(epoch="xyz"), "epoch"),
        (good_row(seq=0), "seq"),
        (good_row(seq=True), "seq"),
        (good_row(seq=2**64), "seq"),
        (good_row(floor=6), "floor"),
        (good_row(high=4), "high"),
        (good_row(dst="nowhere"), "dst"),
        (good_row(path=[]), "path"),
        (good_row(path=[C]), "path must start at the origin"),  # claims another origin's path
        (good_row(path=[A, B]), "end at the sending relay"),
        (good_row(path=[A, A]), "not repeat"),
        (good_row(path=[A, B, A]), "path"),
        (good_row(span="0" * 16), "span_id"),
        (good_row(span="XYZ"), "span_id"),
        (good_row(sent=NOW + 400_000_000), "sent_us"),
        (good_row(sent=NOW - 400_000_000), "sent_us"),
        (good_row(published=NOW - 4000_000_000), "published_us"),
        (good_row(attempt=0), "attempt"),
        (good_row(principal="a b"), "principal"),
        (good_row(event=[1, 2]), "event"),
        (good_row()[:12], "13 fields"),
        ([*good_row(), ["0123456789abcdef", 2], "more"], "13 fields"),
        ([*good_row(), "0123456789abcdef"], "lineage"),
        ([*good_row(), ["0123456789abcdef"]], "lineage"),
        ([*good_row(), ["XYZ", 2]], "epoch"),
        ([*good_row(), ["fedcba9876543210", 0]], "base"),
        ([*good_row(), ["fedcba9876543210", 11]], "base"),  # above high + 1
        ([*good_row(), ["0123456789abcdef", 2]], "continue itself"),
    ],
)
def test_bad_items_are_refused_with_the_reason(row: list[Any], says: str) -> None:
    good, bad = items(row, good_row(seq=6))
    assert [i.seq for i in good] == [6]  # one bad item does not cost the rest of the frame
    assert len(bad) == 1 and says in bad[0].reason


def test_a_refused_item_keeps_what_can_be_read_of_its_event_for_the_refusal_record() -> None:
    """A clock 400 s ahead fails the item's own checks: its event still names the refusal record."""
    _, (bad,) = items(good_row(sent=NOW + 400_000_000))
    assert bad.key == (A, "0123456789abcdef", 5) and bad.event is not None and bad.event["id"] == "x"
    assert bad.span_id == "00f067aa0ba902b7"
    _, (broken,) = items(good_row(span="XYZ", event="not an object"))
    assert (broken.event, broken.span_id) == (None, "")
    _, (short,) = items(good_row()[:12])
    assert (short.key, short.event) == (None, None)


HELLO = {"t": "HELLO", "region": A, "relay": "r", "provider": "aws", "lat": 1.0, "lon": 2.0, "city": "x"}


@pytest.mark.parametrize(
    ("extra", "ts", "skew_s", "clock_ok"),
    [
        ({}, None, 0.0, True),  # a relay that says nothing of its clock
        ({"ts": NOW, "skew_s": 300, "clock_ok": False}, NOW, 300.0, False),
    ],
)
def test_hello_says_the_senders_clock_and_the_skew_it_accepts(
    extra: dict[str, Any], ts: int | None, skew_s: float, clock_ok: bool
) -> None:
    hello = fr.hello_of({**HELLO, **extra})
    assert (hello["ts"], hello["skew_s"], hello["clock_ok"]) == (ts, skew_s, clock_ok)


@pytest.mark.parametrize(
    "extra", [{"ts": -1}, {"ts": "now"}, {"ts": 1.5}, {"skew_s": -1}, {"skew_s": 1e12}, {"clock_ok": "yes"}]
)
def test_a_hello_with_a_bad_clock_field_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        fr.hello_of({**HELLO, **extra})


def test_a_pong_carries_the_answering_relays_clock() -> None:
    assert fr.pong_of({"t": "PONG", "ts": 5, "now": 9}) == (5, 9)
    assert fr.pong_of({"t": "PONG", "ts": 5}) == (5, None)
    with pytest.raises(FrameError):
        fr.pong_of({"t": "PONG", "ts": 5, "now": "later"})


def test_an_item_carries_its_lineage_there_and_back() -> None:
    (item,), _ = items([*good_row(), ["fedcba9876543210", 10]])
    assert item.lineage == ("fedcba9876543210", 10)
    assert fr.encode_item(item) == orjson.dumps([*good_row(), ["fedcba9876543210", 10]])
    (plain,), _ = items(good_row())
    assert plain.lineage is None and len(orjson.loads(fr.encode_item(plain))) == 13


@pytest.mark.parametrize(
    ("notices", "ok"),
    [
        ([[A, "0123456789abcdef", 7]], True),
        ([], True),
        ("x", False),
        ([[A, "0123456789abcdef"]], False),
        ([[A, "0123456789abcdef", 0]], False),
        ([["nowhere", "0123456789abcdef", 7]], False),
        ([[A, "0123456789abcdeF", 7]], False),
    ],
)
def test_ack_notices_of_a_sequence_behind_are_checked(notices: Any, ok: bool) -> None:
    frame = {"t": "ACK", "a": [], "r": notices}
    if ok:
        assert fr.behind_of(frame) == [tuple(n) for n in notices]
    else:
        with pytest.raises(FrameError):
            fr.behind_of(frame)


def test_an_item_that_passed_through_the_receiver_is_refused() -> None:
    good, bad = items(good_row(path=[A, B]), sender=B, receiver=B)
    assert not good and "already passed" in bad[0].reason


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"v": 1, "t": "HELLO"}', b'{"v": 2, "t": "NOPE"}', b'{"t": "HELLO"}', b'{"v": 2}'],
)
def test_bad_frames_are_refused(data: bytes) -> None:
    with pytest.raises(FrameError):
        fr.decode(data)


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "EVENTS", "b": None},
        {"t": "EVENTS", "b": [good_row()] * (fr.MAX_ITEMS + 1)},
        {"t": "ACK", "a": [[A, "0123456789abcdef", 5, 4]]},
        {"t": "ACK", "a": "x"},
        {"t": "INTEREST", "lsa": {"region": A, "seq": 1, "links": {}, "patterns": ["a..b"]}},
        {"t": "INTEREST", "lsa": {"region": A, "seq": 1, "links": {"x": 1}, "patterns": []}},
        {"t": "ROUTES", "lsas": [{"region": A, "seq": -1, "links": {}, "patterns": []}]},
        {"t": "HELLO", "region": A, "relay": "r", "provider": "aws", "lat": 91, "lon": 0, "city": "x"},
    ],
)
def test_bad_frame_contents_are_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(FrameError):
        if frame["t"] == "EVENTS":
            fr.items_of(frame, A, C, NOW, 10**12, 10**9, 3)
        elif frame["t"] == "ACK":
            fr.acks_of(frame)
        elif frame["t"] == "HELLO":
            fr.hello_of(frame)
        else:
            fr.lsas_of(frame)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=5), c, max_size=5),
        max_leaves=30,
    )
)
def test_arbitrary_frames_never_raise_anything_but_frame_error(value: Any) -> None:
    for kind in ("EVENTS", "ACK", "ROUTES", "INTEREST", "HELLO"):
        frame = {"v": 2, "t": kind, "b": value, "a": value, "lsas": value, "lsa": value, "region": value}
        try:
            fr.decode(orjson.dumps(frame))
            if kind == "EVENTS":
                fr.items_of(frame, A, C, NOW, 10**12, 10**9, 3)
            elif kind == "ACK":
                fr.acks_of(frame)
            elif kind == "HELLO":
                fr.hello_of(frame)
            else:
                fr.lsas_of(frame)
        except FrameError:
            pass


def test_items_round_trip_through_a_frame() -> None:
    good, _ = items(good_row())
    data = fr.encode_events([fr.encode_item(good[0])])
    again, bad = fr.items_of(fr.decode(data), A, C, NOW, 3600_000_000, 300_000_000, 3)
    assert again == good and not bad


# ---- channels and applied state ---------------------------------------------------------------


def held(seq: int, accepted_us: int = NOW) -> Held:
    ev = validate_event({"specversion": "1.0", "id": f"e{seq}", "source": "/s", "type": "a.b"})
    return Held(seq, ev, "00f067aa0ba902b7", "p", accepted_us)


def channel_with(n: int) -> Channel:
    ch = Channel(A, B)
    for seq in ch.assign(n):
        ch.hold(held(seq))
    return ch


def test_channel_sends_in_order_and_resends_what_was_not_acknowledged() -> None:
    ch = channel_with(5)
    assert [h.seq for h in ch.take(3, 1.0, B)] == [1, 2, 3]
    assert [h.seq for h in ch.take(9, 1.0, B)] == [4, 5]
    assert ch.take(9, 1.0, B) == []
    assert [h.seq for h in ch.ack(1, 2)] == [1, 2] and ch.floor == 3
    assert ch.rewind(B) == 3  # the link went down: 3..5 go again
    again = ch.take(9, 2.0, C)
    assert [(h.seq, h.attempt, h.via) for h in again] == [(3, 2, C), (4, 2, C), (5, 2, C)]


def test_out_of_order_acks_free_only_a_contiguous_prefix() -> None:
    ch = channel_with(4)
    ch.take(4, 1.0, B)
    assert ch.ack(3, 4) == [] and ch.floor == 1  # 1 and 2 not yet: nothing leaves the store
    assert ch.rewind() == 2  # only the unacknowledged ones are sent again
    assert [h.seq for h in ch.take(9, 1.0, B)] == [1, 2]
    assert [h.seq for h in ch.ack(1, 2)] == [1, 2, 3, 4] and ch.floor == 5 and ch.depth == 0


def test_floor_stays_below_numbers_whose_commit_has_not_landed() -> None:
    ch = channel_with(2)
    ch.take(2, 1.0, B)
    pending = ch.assign(1)  # a publish committing seq 3
    ch.ack(1, 2)
    assert ch.floor == 3  # not next_seq: seq 3 is assigned but not held yet
    ch.hold(held(pending.start))
    assert [h.seq for h in ch.take(9, 1.0, B)] == [3]


def test_a_number_held_after_a_send_is_sent_by_the_next_one() -> None:
    """Publishes commit while others are in flight: a send must not skip numbers not held yet."""
    ch = channel_with(1)
    pending = ch.assign(2)  # publishes committing seq 2 and 3
    assert [h.seq for h in ch.take(9, 1.0, B)] == [1]
    ch.hold(held(pending.start))
    assert ch.has_unsent()
    assert [h.seq for h in ch.take(9, 1.0, B)] == [2]  # now, not after the ack timeout's resend
    ch.hold(held(pending.start + 1))
    assert [h.seq for h in ch.take(9, 1.0, B)] == [3]
    assert ch.take(9, 1.0, B) == [] and not ch.has_unsent()


def test_overflow_and_age_drop_the_oldest() -> None:
    ch = Channel(A, B)
    for seq in ch.assign(5):
        ch.hold(held(seq, NOW + seq))
    assert [h.seq for h in ch.drop_oldest(2)] == [1, 2] and ch.floor == 3
    assert ch.expired(NOW + 10, 5) == 2  # accepted at NOW+3 and NOW+4 are older than 5 µs
    assert ch.depth == 3


@pytest.mark.parametrize(
    ("arrivals", "applied", "gaps"),
    [
        # (epoch, seq, floor, high) arrivals over the origin's own link; which were applied; gaps reported
        ([("e1", 1, 1, 3), ("e1", 2, 1, 3), ("e1", 2, 1, 3)], [True, True, False], []),
        ([("e1", 2, 1, 3), ("e1", 1, 1, 3), ("e1", 3, 1, 3)], [True, True, True], []),  # out of order
        # the origin expired 1..4 (and recorded them): the floor moves past them, no gap
        ([("e1", 1, 1, 9), ("e1", 6, 5, 9)], [True, True], []),
        # the origin lost its store (new epoch): 2..9 were announced and never arrived
        ([("e1", 1, 1, 9), ("e2", 1, 1, 1)], [True, True], [(2, 9)]),
        ([("e1", 1, 1, 5), ("e1", 3, 1, 5), ("e2", 1, 1, 1)], [True, True, True], [(2, 2), (4, 5)]),
    ],
)
def test_origin_state_applies_once_and_names_gaps(
    arrivals: list[tuple[str, int, int, int]], applied: list[bool], gaps: list[tuple[int, int]]
) -> None:
    state = OriginState()
    seen_applied, seen_gaps = [], []
    for sent_us, (epoch, seq, floor, high) in enumerate(arrivals):
        admission = state.admit(Claim(epoch, seq, floor, high, sent_us), direct=True)
        seen_applied.append(admission.apply)
        seen_gaps += admission.gaps
    assert (seen_applied, seen_gaps) == (applied, gaps)
    assert OriginState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), max_size=120))
def test_every_number_is_applied_exactly_once_whatever_the_order(seqs: list[int]) -> None:
    state = OriginState()
    applied = [s for s in seqs if state.admit(Claim("e1", s, 1, 40), direct=True).apply]
    assert sorted(applied) == sorted(set(seqs))


def test_state_kept_before_sequences_were_per_epoch_still_reads() -> None:
    state = OriginState.from_json({"e": "e1", "w": 5, "a": [7], "h": 9})
    assert state.current == "e1" and state.sequences["e1"].confirmed
    assert not state.admit(Claim("e1", 7, 1, 9), direct=True).apply
    assert state.admit(Claim("e1", 6, 1, 9), direct=True).apply
    assert OriginState.from_json({"nonsense": 1}) == OriginState()


# ---- an origin's sequence over detours: only its own link moves it ------------------------------------


def direct(state: OriginState, epoch: str, seq: int, floor: int, high: int, sent_us: int = 0) -> Any:
    return state.admit(Claim(epoch, seq, floor, high, sent_us), direct=True)


def detour(state: OriginState, epoch: str, seq: int, floor: int, high: int) -> Any:
    return state.admit(Claim(epoch, seq, floor, high), direct=False)


def test_a_forged_huge_floor_over_a_detour_suppresses_no_later_event() -> None:
    state = OriginState()
    assert direct(state, "e1", 1, 1, 5, 1).apply
    forged = detour(state, "e1", 3, 3, fr.MAX_SEQ)  # floor may not exceed seq on the wire: it is at most 3
    assert forged.apply and not forged.gaps
    forged = detour(state, "e1", 10**12, 10**12, 10**12)
    assert forged.refused and not forged.apply  # far above what the origin established
    for seq in (2, 4, 5, 6, 7):  # the origin's own later events all arrive
        assert direct(state, "e1", seq, 1, 7, 2).apply, seq


def test_a_detour_floor_moves_no_watermark_the_origins_own_floor_does() -> None:
    state = OriginState()
    direct(state, "e1", 1, 1, 10, 1)
    detour(state, "e1", 12, 12, 12)  # claims 2..11 were acknowledged or expired
    sequence = state.sequences["e1"]
    assert sequence.watermark == 1 and sequence.above == {12}
    assert direct(state, "e1", 11, 11, 12, 2).apply  # the origin says 2..10 are done with
    assert sequence.watermark == 12 and not sequence.above


def test_a_forged_epoch_over_a_detour_ends_nothing_and_names_no_gap() -> None:
    state = OriginState()
    direct(state, "e1", 1, 1, 9, 1)
    forged = detour(state, "e9", 1, 1, fr.MAX_SEQ)
    assert forged.apply and not forged.gaps  # an event it carried, like any a transit relay carries
    assert state.current == "e1"
    for seq in range(2, 10):  # the genuine sequence goes on, nothing of it named lost
        admission = direct(state, "e1", seq, 1, 9, 2)
        assert admission.apply and not admission.gaps
    # the origin's own link moves to a new epoch: only what it announced itself is named
    assert direct(state, "e2", 1, 1, 1, 3).gaps == ()
    assert detour(state, "e7", 1, 1, 5).apply and detour(state, "e8", 1, 1, 5).apply
    assert detour(state, "e6", 1, 1, 5).refused  # sequences never confirmed are few


def test_a_new_epoch_seen_first_over_a_detour_is_applied_and_confirmed_later() -> None:
    state = OriginState()
    direct(state, "e1", 1, 1, 4, 1)
    assert detour(state, "e2", 1, 1, 3).apply  # the origin moved on while its link was down
    assert state.current == "e1"
    admission = direct(state, "e2", 2, 1, 3, 5)  # its own link confirms it
    assert admission.apply and admission.gaps == ((2, 4),)  # e1's 2..4, announced by the origin, never came
    assert not direct(state, "e2", 1, 1, 3, 6).apply  # applied already, over the detour


def test_an_item_of_the_epoch_before_still_on_its_way_moves_nothing() -> None:
    state = OriginState()
    direct(state, "e1", 1, 1, 5, 10)
    direct(state, "e2", 1, 1, 1, 20)
    late = direct(state, "e1", 2, 1, 5, 15)  # sent before e2, arriving after it
    assert state.current == "e2" and not late.gaps
    assert direct(state, "e2", 2, 1, 2, 21).apply


# ---- a store that went back --------------------------------------------------------------------------------


def test_a_continued_epoch_keeps_the_old_numbers_below_base_and_names_what_was_lost_above() -> None:
    state = OriginState()
    for seq in range(1, 9):  # applied 1..8; the origin announced up to 10
        direct(state, "e1", seq, 1, 10, seq)
    # the store went back to next=6 holding 4..5 unacknowledged; e2 continues e1 from base 6
    resend = state.admit(Claim("e2", 4, 4, 7, 20, lineage=("e1", 6)), direct=True)
    assert not resend.apply  # 4 was applied under e1: the same event, sent again
    assert resend.gaps == ((9, 10),)  # e1's 9 and 10 were announced from base on and never came
    assert state.current == "e2"
    assert state.admit(Claim("e2", 6, 4, 7, 21, lineage=("e1", 6)), direct=True).apply  # a new event, not e1's 6
    assert state.admit(Claim("e2", 7, 4, 7, 22, lineage=("e1", 6)), direct=True).apply
    # once the origin holds nothing below base, e1 is forgotten
    state.admit(Claim("e2", 8, 6, 8, 23, lineage=("e1", 6)), direct=True)
    assert list(state.sequences) == ["e2"]
    assert OriginState.from_json(orjson.loads(orjson.dumps(state.to_json()))) == state


def test_the_first_item_of_a_continued_epoch_names_the_numbers_lost_from_base() -> None:
    state = OriginState()
    for seq in (1, 2, 3, 5):  # 4 never arrived; the origin announced up to 7
        direct(state, "e1", seq, 1, 7, seq)
    first = state.admit(Claim("e2", 3, 3, 3, 10, lineage=("e1", 3)), direct=True)
    assert first.gaps == ((4, 4), (6, 7))  # from base on, announced and never applied
    assert first.apply  # e2's 3 is a new event, whatever e1's 3 was


def test_an_origin_claiming_less_than_its_own_link_announced_before_is_behind() -> None:
    state = OriginState()
    for seq in range(1, 11):
        direct(state, "e1", seq, 1, 10, 100 + seq)
    went_back = direct(state, "e1", 6, 6, 6, 200)  # the same epoch, numbered again from 6
    assert went_back.behind == 10 and not went_back.apply
    stale = direct(state, "e1", 3, 1, 3, 50)  # an old item sent before: just a resend
    assert not stale.behind and not stale.apply
    # a detour cannot make it look behind
    assert not detour(state, "e1", 11, 1, 3).behind


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "e1"]), st.integers(1, 2**63 - 1), st.integers(1, 2**63 - 1)),
        max_size=30,
    ),
    st.lists(st.integers(0, 30), max_size=30),
)
def test_whatever_a_transit_relay_forges_the_origins_own_events_all_arrive_and_no_gap_exceeds_its_word(
    forged: list[tuple[str, int, int]], where: list[int]
) -> None:
    """Forged items (any epoch, number, floor, high) interleaved with the origin's own 1..30 over its link."""
    state = OriginState()
    genuine = list(range(1, 31))
    plan: list[tuple[str, Any]] = [("own", s) for s in genuine]
    for (epoch, seq, high), at in zip(forged, where, strict=False):
        plan.insert(min(at, len(plan)), ("forged", (epoch, seq, high)))
    applied_own, named = [], []
    for who, what in plan:
        if who == "own":
            admission = direct(state, "e1", what, 1, 30, what)
            if admission.apply:
                applied_own.append(what)
        else:
            epoch, seq, high = what
            admission = detour(state, epoch, seq, min(seq, high), max(seq, high))
        named += admission.gaps
    suppressed = [s for s in genuine if s not in applied_own]
    forged_e1 = {seq for epoch, seq, _ in forged if epoch == "e1"}
    assert set(suppressed) <= forged_e1  # only a number the forger used itself, each an event it delivered
    assert all(last <= 30 for _, last in named)


def test_ack_ranges_are_compacted() -> None:
    keys = [(A, "e", 3), (A, "e", 1), (A, "e", 2), (A, "e", 7), (B, "f", 1), (A, "e", 2)]
    assert ranges_of(keys) == [[A, "e", 1, 3], [A, "e", 7, 7], [B, "f", 1, 1]]


# ---- breaker, supervisor, principals -------------------------------------------------------------


def test_circuit_breaker_opens_cools_down_and_closes() -> None:
    b = CircuitBreaker("redis", failure_threshold=2, cooldown_s=1.0, max_cooldown_s=4.0)
    b.failure(0.0, "refused")
    assert b.state == CLOSED and b.allow(0.0)
    b.failure(0.1, "refused")
    assert b.state == OPEN and not b.allow(0.5) and b.retry_after_s(0.5) == pytest.approx(0.6)
    assert b.allow(1.2) and b.state == HALF_OPEN
    b.failure(1.2, "still refused")
    assert b.state == OPEN and b.current_cooldown_s == 2.0  # doubles
    assert b.allow(3.3)
    b.success()
    assert b.state == CLOSED and b.healthy


async def test_supervisor_restarts_a_crashing_task_and_counts_it() -> None:
    runs: list[int] = []
    restarts: list[str] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        await asyncio.sleep(10)

    sup = Supervisor(on_restart=restarts.append, base_s=0.01, max_s=0.02)
    sup.spawn("flaky", flaky)
    for _ in range(200):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(runs) == 3 and restarts == ["flaky", "flaky"]
    assert sup.tasks["flaky"].running and "boom" in sup.tasks["flaky"].last_error
    assert any("crashed" in p for p in sup.problems())
    await sup.stop()


async def test_supervisor_stop_ends_a_task_that_swallows_one_cancellation_and_join_waits_for_an_ending() -> None:
    ended = asyncio.Event()

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as a client library can, inside a command
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    async def short() -> None:
        await ended.wait()

    sup = Supervisor(base_s=0.01)
    sup.spawn("stubborn", stubborn)
    sup.spawn("short", short, restart=False)
    await asyncio.sleep(0.01)
    assert not await sup.join("short", 0.05)
    ended.set()
    assert await sup.join("short", 1.0) and sup.tasks["short"].finished
    await asyncio.wait_for(sup.stop(cancel_wait_s=0.05), 2.0)
    assert sup.problems() == ["task stubborn is not running"]


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ({"users": {}}, "unknown top-level"),
        ({"principals": {"bad name": {}}}, "principal name"),
        ({"principals": {"a": {"token": "clear"}}}, "unknown key"),
        ({"principals": {"a": {"token_sha256": "abc"}}}, "64 lower-case hex"),
        ({"principals": {"a": {"roles": ["root"]}}}, "unknown role"),
        ({"principals": {"a": {"region": "mars"}}}, "region id"),
        ({"principals": {"a": {"token_sha256": "a" * 64}, "b": {"token_sha256": "a" * 64}}}, "also the token"),
    ],
)
def test_bad_principals_files_are_refused(doc: dict[str, Any], says: str) -> None:
    with pytest.raises(AuthConfigError, match=says):
        parse_principals(doc)


def test_tokens_are_looked_up_by_hash() -> None:
    auth = parse_principals({"principals": {"svc": {"token_sha256": token_hash("ms_secret"), "groups": ["g"]}}})
    assert auth.from_token("ms_secret").name == "svc"  # type: ignore[union-attr]
    assert auth.from_token("ms_other") is None and auth.from_token(None) is None
    relay = auth.from_certificate("region", A)
    assert relay is not None and relay.name == f"relay:{A}" and relay.region == A
    assert auth.from_certificate("region", "evil<>") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("7", 7), ("0", 0), ("100", 100), ("101", None), ("", None), ("-1", None), (" 7", None), ("1_0", None),
     ("\u00b2", None), ("\u0663", None), ("\uff17", None), ("0" * 19, None), ("7.0", None)],
)  # fmt: skip
def test_whole_numbers_from_outside_are_ascii_digits_within_bounds(text: str, value: int | None) -> None:
    assert whole_number(text, 0, 100) == value
