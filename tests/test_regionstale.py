"""Whether a region's data can be vouched for, from its store's readings: raw inputs in, verdicts out."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard.regionstale import STALE_AFTER_S, StoreReading, freshness, mark_topology, regions_message

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("reading", "stale", "cause", "no_data_s"),
    [
        # everything current: the store answered now, a report 1 s old, a record 1 s behind
        (StoreReading(NOW, "", NOW - 1, NOW - 1, True), False, "", 0.0),
        (StoreReading(NOW, "", NOW - 2, None, True), False, "", 0.0),
        # the relays stopped reporting a minute ago
        (StoreReading(NOW, "", NOW - 60, None, True), True, "no report from its relays for 60 s", 60.0),
        # telemetry held back: the oldest record not in ClickHouse was written 45 s ago
        (StoreReading(NOW, "", NOW - 1, NOW - 45, True), True, "45 s behind on the way to ClickHouse", 45.0),
        # the store stopped answering 30 s ago: its last readings age
        (StoreReading(NOW - 30, "Connection refused", NOW - 31, None, True), True, "does not answer", 31.0),
        # nobody collects the region's records
        (StoreReading(NOW, "", NOW - 1, None, False), True, "no collector reads", 1.0),
        (StoreReading(NOW, "", None, None, True), True, "none of its relays reports", 0.0),
        # never answered at all: no time to name
        (StoreReading(0.0, "timeout", None, None, False), True, "has not answered yet: timeout", None),
    ],
)
def test_freshness(reading: StoreReading, stale: bool, cause: str, no_data_s: float | None) -> None:
    f = freshness(reading, NOW)
    assert f["stale"] is stale and cause in f["cause"] and f["no_data_s"] == no_data_s, f


def test_the_threshold_is_a_few_missed_reports() -> None:
    just = StoreReading(NOW, "", NOW - STALE_AFTER_S + 0.1, None, True)
    late = StoreReading(NOW, "", NOW - STALE_AFTER_S - 0.1, None, True)
    assert not freshness(just, NOW)["stale"] and freshness(late, NOW)["stale"]
    assert STALE_AFTER_S < 10  # drawn stale within 10 s, with the live feed's second on top


def topology(end: float) -> dict[str, Any]:
    return {
        "to": end,
        "regions": [{"id": "a"}, {"id": "b"}, {"id": "c"}],
        "edges": [{"src": "a", "dst": "b"}, {"src": "b", "dst": "a"}, {"src": "a", "dst": "c"}],
    }


def test_a_stale_region_and_its_edges_are_marked_and_an_unknown_one_is_not_called_fresh() -> None:
    fresh = {
        "a": freshness(StoreReading(NOW, "", NOW - 1, None, True), NOW),
        "b": freshness(StoreReading(NOW, "", NOW - 60, None, True), NOW),
    }
    out = mark_topology(topology(NOW), fresh)
    by_id = {r["id"]: r for r in out["regions"]}
    assert by_id["b"]["stale"] and not by_id["a"]["stale"]
    assert by_id["c"]["freshness"] is None and by_id["c"]["stale"] is False  # unknown: no store speaks for it
    assert [e["stale"] for e in out["edges"]] == [True, True, False]


def test_a_window_that_ended_before_the_region_went_quiet_is_complete() -> None:
    fresh = {"b": freshness(StoreReading(NOW, "", NOW - 60, None, True), NOW)}
    past = mark_topology(topology(NOW - 120), fresh)
    assert not any(r["stale"] for r in past["regions"]) and not any(e["stale"] for e in past["edges"])
    recent = mark_topology(topology(NOW - 30), fresh)
    assert {r["id"] for r in recent["regions"] if r["stale"]} == {"b"}


def test_the_live_message_names_every_region() -> None:
    fresh = {"b": freshness(StoreReading(NOW, "", NOW - 60, None, True), NOW), "a": {"stale": False}}
    message = regions_message(fresh, NOW)
    assert message["type"] == "regions" and [r["id"] for r in message["regions"]] == ["a", "b"]


def test_a_region_cut_off_with_an_older_governance_version_is_a_mismatch_while_it_lasts() -> None:
    import orjson

    from dashboard.relaystate import governance_view, parse_states

    def state(version: str, age_s: float, reachable: bool) -> bytes:
        authority = {"home": "a", "authority_reachable": reachable}
        return orjson.dumps({"ts": int((NOW - age_s) * 1e6), "relay": "r", "governance": version,
                             "governance_authority": authority})  # fmt: skip

    raw = {b"aws:a": state("3-000000000003", 1, True), b"gcp:b": state("2-000000000002", 40, False)}
    states = parse_states(raw, NOW)
    view = governance_view(states, None, [])
    assert view["mismatch"] and view["versions"] == ["2-000000000002", "3-000000000003"]
    assert {r["region"]: (r["stale"], r["cut_off"]) for r in view["relays"]} == {
        "aws:a": (False, False),
        "gcp:b": (True, True),
    }
