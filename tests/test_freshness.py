"""The pure judge of freshness and view states (meshcore.freshness): raw ages in, levels and states out."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore import freshness as f
from meshcore import viewstate as vs
from meshcore.freshness import (
    ALL,
    BEHIND,
    FLOWS,
    LINKS,
    LIVE,
    RELAY,
    STALE,
    UNKNOWN,
    Freshness,
    LagReport,
    Reading,
    StoreCheck,
)
from meshcore.viewstate import DEGRADED, DOWN, FAILING, HEALTHY, IDLE, Thresholds, Verdict

NOW = 1_800_000_000.0
A, B = "aws:us-east-1", "gcp:europe-west1"


@pytest.mark.parametrize(
    ("source", "age", "level"),
    [
        (FLOWS, 0.0, LIVE),
        (FLOWS, 5.0, LIVE),
        (FLOWS, 5.1, BEHIND),
        (FLOWS, 30.0, BEHIND),
        (FLOWS, 30.1, STALE),
        (FLOWS, 900.0, STALE),
        (FLOWS, -400.0, LIVE),  # a clock ahead of ours: age 0, never negative
        (LINKS, 9.0, BEHIND),
        (LINKS, 11.0, STALE),
        (RELAY, 4.0, LIVE),
        (f.GROUPS, 20.0, BEHIND),
        (f.GROUPS, 61.0, STALE),
        (f.FEED, 10.5, STALE),
    ],
)
def test_levels_by_age(source: str, age: float, level: str) -> None:
    judged = f.judge(Reading(source, A, NOW - age), NOW)
    assert judged.level == level
    assert judged.age_s == pytest.approx(max(0.0, age))
    assert (judged.cause == "") == (level == LIVE)


def test_nothing_known_is_unknown_with_the_shells_cause_or_a_default() -> None:
    assert f.judge(Reading(FLOWS, A, None), NOW) == Freshness(FLOWS, A, UNKNOWN, None, None, "no flow records yet")
    assert f.judge(Reading(LINKS, A, None, "relay gone"), NOW).cause == "relay gone"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (4.4, "4 s"), (99, "99 s"), (100, "2 min"), (900, "15 min"), (5400, "1.5 h"), (7200, "2 h"),
     (200_000, "2 d"), (-3, "0 s")],
)  # fmt: skip
def test_ages_read_as_people_say_them(seconds: float, text: str) -> None:
    assert f.age_text(seconds) == text


# ---- the collector's reports ---------------------------------------------------------------------


def report(lag_s: float, ts: float = NOW, regions: tuple[str, ...] = (ALL,), stream: str = "meshscope:flows") -> Any:
    return LagReport(stream, regions, ts, lag_s)


@pytest.mark.parametrize(
    ("reports", "region", "as_of", "cause"),
    [
        ([], A, None, "no collector reports its position"),
        ([report(0.5)], A, NOW - 0.5, "collector lag"),
        ([report(900)], A, NOW - 900, "collector lag"),
        # the collector went silent 40 s ago, 2 s behind: the history is 42 s old
        ([report(2, ts=NOW - 40)], A, NOW - 42, "collector silent for 40 s"),
        # per-region streams: each region is judged by its own, the worst when several hold it
        ([report(1, regions=(A,)), report(600, regions=(B,))], A, NOW - 1, "collector lag"),
        ([report(1, regions=(A,)), report(600, regions=(B,), ts=NOW - 30)], B, NOW - 630, "collector silent for 30 s"),
        ([report(1, regions=(A,)), report(50, regions=(A, B))], A, NOW - 50, "collector lag"),
        ([report(1, regions=(B,))], A, None, "no collector reports its position"),
    ],
)
def test_flow_history_is_as_complete_as_the_worst_collector_of_its_region(
    reports: list[LagReport], region: str, as_of: float | None, cause: str
) -> None:
    reading = f.flows_reading(reports, region, NOW)
    assert (reading.as_of, reading.cause) == (as_of, cause)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"stream": "s", "regions": [], "ts": 1, "lag_s": 0},
        {"stream": "s", "regions": ["*"], "ts": "1", "lag_s": 0},
        {"stream": "s", "regions": ["*"], "ts": 1, "lag_s": True},
        {"stream": "s", "regions": [1], "ts": 1, "lag_s": 0},
        {"stream": 3, "regions": ["*"], "ts": 1, "lag_s": 0},
        {"stream": "s", "regions": ["*"], "ts": float("nan"), "lag_s": 0},
    ],
)
def test_a_report_that_is_not_one_is_refused(data: dict[str, Any]) -> None:
    assert f.lag_from(data) is None


def test_a_report_round_trips_and_a_negative_lag_reads_as_none() -> None:
    r = LagReport("meshscope:flows", (A, B), NOW, 1.5, 10, 2, "c1")
    assert f.lag_from(r.to_json()) == r
    assert f.lag_from({**r.to_json(), "lag_s": -3}) == LagReport("meshscope:flows", (A, B), NOW, 0.0, 10, 2, "c1")


@given(st.dictionaries(st.text(max_size=8), st.none() | st.booleans() | st.integers() | st.floats() | st.text()
                       | st.lists(st.text() | st.integers(), max_size=3)))  # fmt: skip
def test_any_json_object_is_a_report_or_none_never_an_error(data: dict[str, Any]) -> None:
    out = f.lag_from(data)
    assert out is None or (isinstance(out, LagReport) and out.lag_s >= 0)


# ---- assessments ---------------------------------------------------------------------------------


def test_a_store_that_cannot_be_read_makes_its_regions_unknown_with_one_banner() -> None:
    readings = [Reading(s, r, NOW - 1) for r in (A, B) for s in (FLOWS, LINKS, RELAY)]
    store = StoreCheck((ALL,), "Error 111 connecting to 127.0.0.1:6390. Connection refused.")
    out = f.assess(readings, NOW, [store])
    assert {x.level for by in out.regions.values() for x in by.values()} == {UNKNOWN}
    assert out.banner == ("Valkey unreachable from the dashboard: Error 111 connecting to 127.0.0.1:6390. "
                          "Connection refused.",)  # fmt: skip
    assert out.problems() == list(out.banner)
    # a store of one region only: the other region is judged as usual
    one = f.assess(readings, NOW, [StoreCheck((B,), "refused"), StoreCheck((A,))])
    assert one.of(A, LINKS).level == LIVE and one.of(B, LINKS).level == UNKNOWN


def test_a_cause_shared_by_every_region_is_one_banner_line_and_others_stay_per_region() -> None:
    lag = f.flows_reading([report(900)], A, NOW)
    readings = [
        lag,
        f.flows_reading([report(900)], B, NOW),
        Reading(LINKS, A, NOW - 1),
        Reading(LINKS, B, NOW - 60, "no link report from the relays of gcp:europe-west1"),
    ]
    out = f.assess(readings, NOW)
    assert out.banner == ("flow records 15 min behind — collector lag",)
    assert out.problems() == [
        "flow records 15 min behind — collector lag",
        f"{B}: link samples 60 s behind — no link report from the relays of gcp:europe-west1",
    ]
    assert out.source(FLOWS) is not None and out.source(FLOWS).level == STALE  # type: ignore[union-attr]
    assert out.of("azure:westeurope", RELAY).level == UNKNOWN
    assert out.to_json()["sources"][LINKS]["level"] == STALE
    live = f.assess([Reading(FLOWS, A, NOW - 1)], NOW)
    assert live.banner == () and live.problems() == []


# ---- view states ---------------------------------------------------------------------------------

FRESH = Freshness(LINKS, A, LIVE, 0.5, NOW, "")
OLD = Freshness(LINKS, A, STALE, 40.0, NOW - 40, "no link report from the relays of aws:us-east-1")
GONE = Freshness(LINKS, A, UNKNOWN, None, None, "Valkey unreachable from the dashboard: refused")
SLIGHTLY = Freshness(LINKS, A, BEHIND, 7.0, NOW - 7, "link samples 7 s old")


@pytest.mark.parametrize(
    ("reported", "fresh", "clock", "error", "verdict"),
    [
        ("up", FRESH, "", "", Verdict(HEALTHY)),
        ("up", SLIGHTLY, "", "", Verdict(HEALTHY)),
        ("down", FRESH, "", "ConnectionRefusedError", Verdict(DOWN, "link down: ConnectionRefusedError")),
        ("connecting", FRESH, "", "", Verdict(DOWN, "link down")),
        ("draining", FRESH, "", "", Verdict(DEGRADED, "link draining")),
        ("up", FRESH, "clock 400 s ahead of B's", "", Verdict(FAILING, "clock 400 s ahead of B's")),
        # a relay that cannot report: unknown, never down, whatever it said last
        ("up", OLD, "", "", Verdict(UNKNOWN, "link samples 40 s behind — no link report from the relays of " + A)),
        ("down", OLD, "", "", Verdict(UNKNOWN, "link samples 40 s behind — no link report from the relays of " + A)),
        ("down", GONE, "", "", Verdict(UNKNOWN, "link samples unknown — " + GONE.cause)),
        ("<b>", FRESH, "", "", Verdict(UNKNOWN, "the relay reports a state meshscope does not know: '<b>'")),
    ],
)
def test_link_states(reported: str, fresh: Freshness, clock: str, error: str, verdict: Verdict) -> None:
    assert vs.link_view(reported, fresh, clock, error) == verdict


FLOWS_LIVE = Freshness(FLOWS, A, LIVE, 1.0, NOW - 1, "")
FLOWS_STALE = Freshness(FLOWS, A, STALE, 900.0, NOW - 900, "collector lag")


@pytest.mark.parametrize(
    ("traffic", "link", "flows", "held", "verdict"),
    [
        (HEALTHY, Verdict(HEALTHY), FLOWS_LIVE, 0, Verdict(HEALTHY)),
        (DEGRADED, None, FLOWS_LIVE, 0, Verdict(DEGRADED)),
        (IDLE, Verdict(HEALTHY), FLOWS_LIVE, 0, Verdict(IDLE)),
        # the link decides at once, whatever the history says
        (HEALTHY, Verdict(DOWN, "link down"), FLOWS_LIVE, 120, Verdict(FAILING, "link down; 120 events held for it")),
        (IDLE, Verdict(FAILING, "clock 400 s"), FLOWS_STALE, 0, Verdict(FAILING, "clock 400 s")),
        # stale figures are not vouched for
        (HEALTHY, Verdict(HEALTHY), FLOWS_STALE, 0, Verdict(UNKNOWN, "flow records 15 min behind — collector lag")),
        (HEALTHY, Verdict(UNKNOWN, "x"), FLOWS_LIVE, 0, Verdict(HEALTHY)),
        ("green", None, FLOWS_LIVE, 0, Verdict(UNKNOWN, "no verdict for 'green'")),
    ],
)
def test_edge_states(traffic: str, link: Verdict | None, flows: Freshness, held: int, verdict: Verdict) -> None:
    assert vs.edge_view(traffic, link, flows, held) == verdict


T = Thresholds(1.0, 5.0, 1000.0, 3000.0)


@pytest.mark.parametrize(
    ("entered", "lost", "p99", "state"),
    [
        (0, 0, None, IDLE),
        (1000, 0, 200.0, HEALTHY),
        (1000, 9, 200.0, HEALTHY),
        (1000, 10, 200.0, DEGRADED),
        (1000, 50, 200.0, FAILING),
        (1000, 0, 1000.0, DEGRADED),
        (1000, 0, 3000.0, FAILING),
        (0, 3, None, FAILING),  # losses with nothing entering: 100 %
    ],
)
def test_traffic_verdicts_count_losses_and_lag(entered: int, lost: int, p99: float | None, state: str) -> None:
    assert vs.traffic_view(entered, lost, p99, T) == state


def test_every_state_is_in_the_one_table() -> None:
    assert list(vs.STATES) == [HEALTHY, IDLE, DEGRADED, FAILING, DOWN, UNKNOWN]


@pytest.mark.parametrize(
    ("offset_ms", "accepted_s", "text"),
    [
        (None, 300.0, ""),
        (0.0, 300.0, ""),
        (298_000.0, 300.0, ""),
        (-400_000.0, 300.0, "clock 400 s ahead of B's, which accepts 300 s"),
        (400_000.0, 300.0, "clock 400 s behind B's, which accepts 300 s"),
        (299_500.0, 300.0, "clock 300 s behind B's, which accepts 300 s"),  # within the margin of the edge
        (400_000.0, 0.0, ""),  # a peer that says nothing of what it accepts
    ],
)
def test_clock_refusals(offset_ms: float | None, accepted_s: float, text: str) -> None:
    assert vs.clock_refusal(offset_ms, accepted_s, "B") == text
