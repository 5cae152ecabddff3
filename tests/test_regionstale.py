"""Whether a region's data can be vouched for, from its store's readings: raw inputs in, the judge's verdicts out."""

from __future__ import annotations

from typing import Any

import pytest

from dashboard import params as p
from dashboard import views
from dashboard.regionstale import FORGET_S, StoreReading, readings
from dashboard.timerange import span
from meshcore.freshness import ALL, FLOWS, LIMITS, RELAY, Assessment, LagReport, assess
from meshcore.viewstate import Thresholds

NOW = 1_800_000_000.0
A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"


def report(lag_s: float, ts: float = NOW, regions: tuple[str, ...] = (B,)) -> LagReport:
    return LagReport("meshscope:flows", regions, ts, lag_s)


def judged(*stores: StoreReading, now: float = NOW) -> Assessment:
    found, checks = [], []
    for store in stores:
        got, check = readings(store, now)
        found += got
        checks.append(check)
    return assess(found, now, checks)


@pytest.mark.parametrize(
    ("store", "stale", "cause", "no_data_s"),
    [
        # everything current: a report 1 s old, a record 1 s behind
        (StoreReading((B,), "", {B: NOW - 1}, [report(1)]), False, "", 0.0),
        (StoreReading((B,), "", {B: NOW - 2}, [report(0)]), False, "", 0.0),
        # the relays stopped reporting a minute ago
        (StoreReading((B,), "", {B: NOW - 60}, [report(0)]), True,
         "relay state 60 s behind — no report from its relays", 60.0),
        # telemetry held back: the oldest record not in ClickHouse was written 45 s ago
        (StoreReading((B,), "", {B: NOW - 1}, [report(45)]), True, "flow records 45 s behind — collector lag", 45.0),
        # the store stopped answering 30 s ago: its last readings age, and the store is the one cause
        (StoreReading((B,), "Connection refused", {B: NOW - 31}, [report(0, NOW - 30)]), True,
         f"Valkey of {B} unreachable from the dashboard: Connection refused", 31.0),
        # nobody collects the region's records
        (StoreReading((B,), "", {B: NOW - 1}, []), True, "flow records unknown — no collector reports its position",
         None),
        (StoreReading((B,), "", {}, [report(0)]), True, "relay state unknown — no report from its relays", None),
        # never answered at all: no time to name
        (StoreReading((B,), "timeout"), True, f"Valkey of {B} unreachable from the dashboard: timeout", None),
    ],
)  # fmt: skip
def test_a_regions_verdict(store: StoreReading, stale: bool, cause: str, no_data_s: float | None) -> None:
    verdict = judged(store).region(B)
    assert (verdict.stale, verdict.cause, verdict.no_data_s) == (stale, cause, no_data_s)


def test_the_limits_are_a_few_missed_reports_and_the_one_table_s() -> None:
    relay_s, flows_s = LIMITS[RELAY].stale_s, LIMITS[FLOWS].stale_s
    just = StoreReading((B,), "", {B: NOW - relay_s + 0.1}, [report(flows_s - 0.1)])
    assert not judged(just).region(B).stale
    assert judged(StoreReading((B,), "", {B: NOW - relay_s - 0.1}, [report(0)])).region(B).stale
    assert judged(StoreReading((B,), "", {B: NOW}, [report(flows_s + 0.1)])).region(B).stale
    assert relay_s <= 10  # relays report every 2 s: drawn stale within 10 s, with the feed's second on top


def test_a_collector_that_stopped_reporting_is_as_far_behind_as_it_said_plus_the_time_since() -> None:
    verdict = judged(StoreReading((B,), "", {B: NOW}, [report(2, NOW - 40)])).region(B)
    assert verdict.stale and verdict.no_data_s == 42 and "collector silent for 40 s" in verdict.cause


def test_a_store_speaks_only_for_its_own_regions() -> None:
    # B's store holds a relay report and a position that claim to be A's: they say nothing of A
    b = StoreReading((B,), "", {B: NOW, A: NOW}, [report(0), report(0, regions=(A,))])
    a = StoreReading((A,), "", {}, [])
    fresh = judged(a, b)
    assert not fresh.region(B).stale
    assert fresh.region(A).stale and "no collector reports its position" in fresh.region(A).cause
    # one store down: its regions unknown with it named, the others as they are
    down = judged(StoreReading((A,), "refused", {A: NOW - 3}, [report(0, NOW - 3, (A,))]), b)
    assert down.region(A).cause == f"Valkey of {A} unreachable from the dashboard: refused"
    assert not down.region(B).stale and down.banner == (f"Valkey of {A} unreachable from the dashboard: refused",)


def test_one_store_for_every_region_speaks_for_those_that_report_and_forgets_a_relay_gone_for_an_hour() -> None:
    store = StoreReading((), "", {A: NOW - 1, B: NOW - 40, C: NOW - FORGET_S - 1}, [report(0, regions=(ALL,))])
    fresh = judged(store)
    assert not fresh.region(A).stale and fresh.region(B).stale
    assert C not in fresh.regions and not fresh.region(C).stale  # taken out of the mesh, not a problem of today
    gone = judged(StoreReading((), "refused", {A: NOW - 1}, []))
    assert gone.banner == ("Valkey unreachable from the dashboard: refused",)


def region_row(rid: str) -> list[Any]:
    return [rid, rid.split(":")[0], 1.0, 2.0, rid, 0, 0]


def edge(src: str, dst: str) -> list[Any]:
    return [src, dst, 10, 10, 0, {}, 1000, {}, {}, 0, {}]


def topology(fresh: Assessment, end: float, live: bool = True) -> dict[str, Any]:
    rows = views.MapRows([edge(A, B), edge(B, A), edge(A, C)], [region_row(r) for r in (A, B, C)], [], [])
    return views.shape_topology(rows, span(300, int(end), live, NOW), p.Filters(), Thresholds(), fresh)


def test_a_stale_region_and_its_edges_are_marked_and_one_no_store_speaks_for_is_not_called_fresh() -> None:
    stores = (StoreReading((A,), "", {A: NOW - 1}, [report(0, regions=(A,))]),
              StoreReading((B,), "", {B: NOW - 60}, [report(0)]))  # fmt: skip
    out = topology(judged(*stores), NOW)
    by_id = {r["id"]: r for r in out["regions"]}
    assert by_id[B]["stale"] and not by_id[A]["stale"]
    assert by_id[B]["freshness"]["no_data_s"] == 60 and "no report from its relays" in by_id[B]["freshness"]["cause"]
    assert by_id[C]["stale"] and by_id[C]["freshness"]["level"] == "unknown"  # no store speaks for it
    assert {(e["src"], e["dst"]): (e["stale"], e["state"]) for e in out["edges"]} == {
        (A, B): (True, "unknown"),
        (A, C): (True, "unknown"),
        (B, A): (True, "unknown"),
    }


def test_a_window_that_ended_before_the_region_went_quiet_is_complete() -> None:
    stores = (StoreReading((A,), "", {A: NOW}, [report(0, regions=(A,))]),
              StoreReading((B,), "", {B: NOW - 60}, [report(0)]))  # fmt: skip
    past = topology(judged(*stores, now=NOW - 120), NOW - 120, live=False)
    assert not any(r["stale"] for r in past["regions"] if r["id"] != C)
    assert {(e["src"], e["dst"]) for e in past["edges"] if e["stale"]} == {(A, C)}
    recent = topology(judged(*stores, now=NOW - 30), NOW - 30, live=False)
    assert {r["id"] for r in recent["regions"] if r["stale"]} == {B, C}
    # a store gone now says nothing against a window it had answered for
    gone = (StoreReading((B,), "refused", {B: NOW - 60}, [report(0, NOW - 60)]),)
    assert not judged(*gone, now=NOW - 120).region(B).stale and judged(*gone).region(B).stale


def test_the_verdicts_of_every_region_go_out_with_the_freshness() -> None:
    out = judged(StoreReading((A, B), "", {A: NOW, B: NOW - 60}, [report(0, regions=(A, B))])).to_json()
    assert sorted(out["verdicts"]) == [A, B] and out["verdicts"][B]["stale"] and not out["verdicts"][A]["stale"]
    assert out["verdicts"][B] == {"level": "stale", "stale": True, "heard_at": NOW - 60, "no_data_s": 60.0,
                                  "cause": "relay state 60 s behind — no report from its relays"}  # fmt: skip


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
