"""The map API's pure parts, table-driven: parameters, table choice, SQL parameters, shapes, diff, live messages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard import groupview, relayhistory, views
from dashboard import params as p
from dashboard import queries as q
from dashboard.diff import changes, classify
from dashboard.livemessage import LinkChanges, edges_message, links_message
from dashboard.relaystate import document_view, governance_view, parse_states, routes_view, why
from dashboard.timerange import choose_table, rollup_span, span
from meshcore.freshness import ALL, FLOWS, LINKS, Assessment, Reading, StoreCheck, assess
from meshcore.topic import matches, validate_pattern
from meshcore.viewstate import Thresholds

NOW = 1_764_000_000.0  # a fixed "now" (2025-11-24), divisible by the cache interval
T = Thresholds()

# ---- parameters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"window": "7m"}, "window must be one of"),
        ({"window": "7d"}, "window must be one of"),  # only the timeline looks back a week
        ({"end": "yesterday"}, "end must be unix seconds"),
        ({"end": "-5"}, "end must be unix seconds between"),
        ({"end": "nan"}, "end must be unix seconds between"),
        ({"end": "1764000000000"}, "end must be unix seconds between"),  # milliseconds by mistake
        ({"end": "1"}, "end must be unix seconds between 946684800"),  # a window before any record
        ({"end": "1e-300"}, "end must be unix seconds between"),
        ({"end": "1.7e9"}, "end must be unix seconds between"),  # digits only
        ({"end": "\uff11\uff17\uff16\uff14\uff10\uff10\uff10\uff10\uff10\uff10"}, "end"),  # full-width digits
        ({"end": "1_764_000_000"}, "end"),
        ({"end": " 1764000000"}, "end"),
        ({"provider": "AWS"}, "provider: 'AWS' is not a provider"),
        ({"provider": "aws;drop"}, "provider"),
        ({"region": "us-east-1"}, "region: 'us-east-1' is not a region"),
        ({"region": "aws:us-east-1,aws:x' OR 1=1"}, "region"),
        ({"topic": "orders..created"}, "topic: pattern 'orders..created' has an empty token"),
        ({"topic": "orders.>.x"}, "topic: pattern 'orders.>.x': '>' must be the last token"),
        ({"topic": "orders x"}, "topic"),
        ({"provider": ",".join(f"p{i}" for i in range(65))}, "provider: at most 64 values"),
    ],
)
def test_bad_parameters_name_themselves(query: dict[str, str], says: str) -> None:
    with pytest.raises(p.BadRequest) as err:
        p.parse_map_query(query, NOW, 2.0)
    assert says in str(err.value)


def test_parameters_are_normalized_so_equal_questions_are_equal_keys() -> None:
    a = p.parse_map_query({"window": "1h", "provider": "gcp,aws,aws", "region": " aws:us-east-1 "}, NOW + 0.4, 2.0)
    b = p.parse_map_query({"window": "1h", "provider": "aws,gcp", "region": "aws:us-east-1"}, NOW + 1.9, 2.0)
    assert a == b and hash(a) == hash(b)
    assert (a.end_s, a.live, a.filters.providers) == (int(NOW), True, ("aws", "gcp"))
    assert p.parse_map_query({}, NOW + 2.0, 2.0).end_s == int(NOW) + 2  # the next interval asks anew


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (None, (int(NOW), True)),
        ("", (int(NOW), True)),
        (str(NOW - 3600.7), (int(NOW - 3600.7), False)),
        (str(NOW + 0.5), (int(NOW), True)),  # within the current interval: now
        (str(NOW + 86400), (int(NOW), True)),  # the future: now
    ],
)
def test_end(end: str | None, expected: tuple[int, bool]) -> None:
    assert p.parse_end(end, NOW + 0.5, 2.0) == expected


@pytest.mark.parametrize(
    ("compare_end", "end", "expected"),
    [(None, None, int(NOW) - 300), (str(NOW - 7200), None, int(NOW) - 7200), (str(NOW), str(NOW - 60), None)],
)
def test_compare_end(compare_end: str | None, end: str | None, expected: int | None) -> None:
    mq = p.parse_map_query({"window": "5m", "end": end or ""}, NOW, 2.0)
    if expected is None:
        with pytest.raises(p.BadRequest, match="compare_end must be earlier than end"):
            p.parse_compare_end(compare_end, mq)
    else:
        assert p.parse_compare_end(compare_end, mq) == expected


@pytest.mark.parametrize(
    ("text", "ok"),
    [("20", 20.0), ("", 20.0), ("12.5", 12.5), ("0", None), ("x", None), ("inf", None), ("\u00b2", None),
     ("1_0", None), ("\u0663", None), ("10001", None)],
)  # fmt: skip
def test_threshold_pct(text: str, ok: float | None) -> None:
    if ok is None:
        with pytest.raises(p.BadRequest, match="threshold_pct"):
            p.parse_threshold_pct(text)
    else:
        assert p.parse_threshold_pct(text) == ok


@pytest.mark.parametrize(
    ("pattern", "topic"),
    [
        ("orders.>", "orders.created"),
        ("orders.>", "orders.eu.created"),
        ("orders.>", "orders"),
        ("orders.*", "orders.created"),
        ("orders.*", "orders.eu.created"),
        ("*.created", "orders.created"),
        (">", "anything.at.all"),
        ("a+b.c", "a+b.c"),
        ("a+b.c", "aab.c"),
        ("x(y).z", "x(y).z"),
        ("orders.created", "orders.createdX"),
    ],
)
def test_topic_regex_matches_exactly_what_the_pattern_matches(pattern: str, topic: str) -> None:
    assert bool(re.fullmatch(p.topic_regex(pattern), topic)) == matches(pattern, topic)


# ---- which table, which buckets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window_s", "age_s", "per_topic", "table", "bucket_s"),
    [
        (60, 0, False, "edge_second", 1),
        (900, 0, False, "edge_second", 1),
        (900, 5400, False, "edge_second", 1),  # ends 90 min ago: still within edge_second's two hours
        (300, 3 * 3600, False, "pair_minute", 60),  # edge_second no longer holds it
        (300, 3 * 3600, True, "edge_minute", 60),
        (3600, 0, False, "pair_minute", 60),
        (3600, 0, True, "edge_minute", 60),
        (21600, 0, False, "pair_hour", 3600),
        (86400, 86400 * 30, False, "pair_hour", 3600),
        (86400, 0, True, "edge_minute", 60),  # topics have no hourly table
    ],
)
def test_table_by_window_length_and_age(window_s: int, age_s: int, per_topic: bool, table: str, bucket_s: int) -> None:
    assert choose_table(window_s, int(NOW) - age_s, NOW, per_topic) == (table, bucket_s)


def test_a_past_window_ends_on_a_bucket_boundary_and_holds_exactly_its_window() -> None:
    sp = span(300, int(NOW) - 3 * 3600 + 59, False, NOW)
    assert (sp.table, sp.start, sp.end, sp.stop, sp.seconds) == (
        "pair_minute", int(NOW) - 3 * 3600 - 300, int(NOW) - 3 * 3600, int(NOW) - 3 * 3600, 300
    )  # fmt: skip
    live = span(300, int(NOW), True, NOW)
    assert (live.table, live.start, live.stop, live.seconds) == ("edge_second", int(NOW) - 300, None, 300)
    assert "bucket <" not in q.topology_sql("db", live, p.Filters())[0]
    assert f"bucket < toDateTime({sp.stop})" in q.topology_sql("db", sp, p.Filters())[0]


def test_timelines_read_rollups_never_seconds() -> None:
    assert rollup_span(900, int(NOW), True, False)[0].table == "pair_minute"
    assert rollup_span(86400, int(NOW), True, False)[1] == 60
    assert rollup_span(7 * 86400, int(NOW), True, False)[0].table == "pair_hour"
    assert rollup_span(7 * 86400, int(NOW), False, True)[0].table == "edge_minute"


# ---- SQL carries values as parameters ----------------------------------------------------------------------


def test_filters_travel_as_parameters_never_in_the_statement() -> None:
    f = p.parse_filters({"provider": "aws", "region": "gcp:europe-west1", "topic": "orders.>"})
    sp = span(300, int(NOW), True, NOW, per_topic=True)
    for sql, bound in (q.topology_sql("db", sp, f), q.timeline_sql("db", sp, 60, f), q.refusals_sql("db", sp, f)):
        assert "gcp:europe-west1" not in sql and "orders" not in sql and "'aws'" not in sql
        assert bound["topic_re"] == r"^orders\..+$"
    with pytest.raises(ValueError, match="needs a table with topics"):
        q.topology_sql("db", span(3600, int(NOW), True, NOW), f)


def test_combined_queries_share_parameters_and_refuse_conflicts() -> None:
    sql, bound = q.combine([("SELECT 1 WHERE x = %(a)s", {"a": 1}), "SELECT 2", ("SELECT %(a)s", {"a": 1})])
    assert sql.count("groupArray(tuple(*))") == 3 and bound == {"a": 1}
    with pytest.raises(ValueError, match="bound to two values"):
        q.combine([("SELECT %(a)s", {"a": 1}), ("SELECT %(a)s", {"a": 2})])


# ---- shapes ------------------------------------------------------------------------------------------------

A, B, C = "aws:us-east-1", "gcp:europe-west1", "azure:westeurope"


def agg(
    entered: int, errors: int = 0, status: str = "backpressure", lost: int = 0, via: Any = None, hist: int = 800
) -> list[Any]:
    return [entered, entered - errors, errors, {status: errors} if errors else {}, entered * 100, {hist: entered},
            {hist: entered}, lost, via or {}]  # fmt: skip


MS_50 = 98  # the histogram bucket of ~50 ms


def fresh(flows_age: float = 1.0, links: dict[str, float] | None = None, store_error: str = "") -> Assessment:
    readings = [Reading(FLOWS, r, NOW - flows_age, "collector lag") for r in (A, B, C)]
    readings += [Reading(LINKS, r, NOW - age) for r, age in (links or {}).items()]
    return assess(readings, NOW, [StoreCheck((ALL,), store_error)])


def link_row(src: str, dst: str, state: str, age: float, depth: int = 0, **kw: Any) -> list[Any]:
    return [src, dst, state, 10.0, depth, 0, NOW - age, kw.get("security", "mtls"), "", kw.get("peer_gov", ""),
            kw.get("gov", ""), kw.get("offset", 0.0), kw.get("skew", 0.0)]  # fmt: skip


def test_topology_filters_edges_regions_and_links() -> None:
    edges = [[A, A, *agg(10)], [A, B, *agg(8, 1, lost=1, via={C: 2})], [A, C, *agg(5)], [B, C, *agg(3)]]
    regions = [[r, r.split(":")[0], 1.0, 2.0, r, 0, 0] for r in (A, B, C)]
    links = [link_row(A, B, "up", 1, peer_gov="2-b", gov="1-a"), link_row(B, C, "up", 30, security="")]
    groups = [[B, "billing", 1000 * (NOW - i), 5, 7 + i, 0.5, 1, "svc", ["orders.>"], 3, 4] for i in range(5)]
    sp = span(300, int(NOW), True, NOW)
    rows = views.MapRows(edges, regions, links, groups)
    out = views.shape_topology(rows, sp, p.Filters(regions=(B,)), T, fresh())
    assert [(e["src"], e["dst"]) for e in out["edges"]] == [(A, B), (B, C)]
    ab = out["edges"][0]
    assert (ab["lost"], ab["via"], ab["errors_by_status"], ab["alerts"]) == (1, {C: 2}, {"backpressure": 1}, 0)
    assert (ab["traffic"], ab["state"]) == ("failing", "failing")  # 1 of 8 lost
    regions_shown = {r["id"]: r for r in out["regions"]}
    assert list(regions_shown) == [A, C, B]  # B, and the other ends of its edges
    assert regions_shown[B]["groups"] == [{"group": "billing", "status": "STALL", "backlog": 7}]
    link = {(x["src"], x["dst"]): x for x in out["links"]}
    assert link[(A, B)]["governance_mismatch"] is True and link[(A, B)]["security"] == "mtls"
    assert link[(A, B)]["state"] == "healthy"
    # no sample for 30 s: its relay cannot report, so the link is unknown, never down
    assert (link[(B, C)]["state"], link[(B, C)]["reported_state"]) == ("unknown", "up")
    assert link[(B, C)]["cause"] == "link samples 30 s behind — no newer report"
    assert [s["state"] for s in out["states"]] == ["healthy", "idle", "degraded", "failing", "down", "unknown"]
    aws = views.shape_topology(rows, sp, p.Filters(providers=("azure",)), T, fresh())
    assert [(e["src"], e["dst"]) for e in aws["edges"]] == [(A, C), (B, C)]


def test_an_edge_whose_link_is_down_is_failing_at_once_with_what_waits_even_without_traffic() -> None:
    edges = [[A, B, *agg(100, hist=MS_50)], [B, A, *agg(100, hist=MS_50)]]
    regions = [[r, r.split(":")[0], 1.0, 2.0, r, 0, 0] for r in (A, B, C)]
    links = [link_row(A, B, "connecting", 0.5, depth=120), link_row(B, A, "up", 0.5), link_row(A, C, "down", 0.5, 40),
             link_row(C, A, "down", 0.5)]  # fmt: skip
    sp = span(300, int(NOW), True, NOW)
    out = views.shape_topology(views.MapRows(edges, regions, links, []), sp, p.Filters(), T, fresh())
    by = {(e["src"], e["dst"]): e for e in out["edges"]}
    assert (by[(A, B)]["traffic"], by[(A, B)]["state"]) == ("healthy", "failing")
    assert by[(A, B)]["cause"] == "link down; 120 events held for it" and by[(A, B)]["held"] == 120
    assert by[(B, A)]["state"] == "healthy"
    # no traffic in the window, but 40 events wait for a link that is down: the edge is drawn, failing
    assert by[(A, C)]["state"] == "failing" and by[(A, C)]["events"] == 0
    assert (C, A) not in by  # down, but nothing waits: no edge to draw


def test_figures_the_view_cannot_vouch_for_are_unknown_with_why() -> None:
    edges = [[A, B, *agg(100, hist=MS_50)]]
    regions = [[r, r.split(":")[0], 1.0, 2.0, r, 0, 0] for r in (A, B)]
    links = [link_row(A, B, "up", 0.5)]
    sp = span(300, int(NOW), True, NOW)
    rows = views.MapRows(edges, regions, links, [])
    behind = views.shape_topology(rows, sp, p.Filters(), T, fresh(flows_age=900))
    (ab,) = behind["edges"]
    assert (ab["traffic"], ab["state"], ab["cause"]) == (
        "healthy",
        "unknown",
        "flow records 15 min behind — collector lag",
    )
    assert ab["events"] == 100  # the last known figures, as they are
    assert behind["freshness"]["banner"] == ["flow records 15 min behind — collector lag"]
    assert {(r["stale"], r["freshness"]["level"]) for r in behind["regions"]} == {(True, "stale")}
    # Valkey unreachable: one banner; the link is unknown, not down, and says why
    gone = views.shape_topology(rows, sp, p.Filters(), T, fresh(links={A: 0.5}, store_error="refused"))
    (link,) = gone["links"]
    assert (link["state"], link["cause"]) == ("unknown", "Valkey unreachable from the dashboard: refused")
    assert gone["freshness"]["banner"] == ["Valkey unreachable from the dashboard: refused"]


def test_the_live_feed_overrides_an_older_sample_of_the_history() -> None:
    regions = [[r, r.split(":")[0], 1.0, 2.0, r, 0, 0] for r in (A, B)]
    links = [link_row(A, B, "up", 20)]
    live = links_message(orjson.dumps({"region": A, "links": [[int((NOW - 0.3) * 1e6), "r", A, B, "connecting", 0,
                                                                 7, 2, "", "", "", "", 0.0, 0.0]]}), NOW)  # fmt: skip
    assert live is not None
    sp = span(300, int(NOW), True, NOW)
    rows = views.MapRows([], regions, links, [], {(A, B): live["links"][0]})
    (link,) = views.shape_topology(rows, sp, p.Filters(), T, fresh())["links"]
    assert (link["state"], link["queue_depth"]) == ("down", 7)
    # a past window keeps the history's sample
    past = span(300, int(NOW) - 600, False, NOW)
    (old,) = views.shape_topology(rows, past, p.Filters(), T, fresh())["links"]
    assert old["reported_state"] == "up"


@pytest.mark.parametrize(
    ("samples", "status"),
    [
        ([(10, 0, 1)] * 5, "OK"),  # nothing waits
        ([(10 + i, 3, 1) for i in range(5)], "OK"),  # acknowledging, backlog steady
        ([(10 + i, 3 + i, 1) for i in range(5)], "WARN"),  # acknowledging, but falling behind
        ([(10, 3 + i, 1) for i in range(5)], "STALL"),  # members there, nothing acknowledged
        ([(10, 3, 0)] * 5, "STOP"),  # nobody there, entries wait
    ],
)
def test_group_status_from_the_latest_samples(samples: list[tuple[int, int, int]], status: str) -> None:
    rows = [[A, "g", 1000 * (NOW - 5 + i), acked, backlog, 0.0, n, "o", [], backlog, 0]
            for i, (acked, backlog, n) in enumerate(samples)]  # fmt: skip
    rows.reverse()  # newest first, as the query has them
    (group,) = groupview.shape_groups(rows, [], [], {}, None)["groups"]
    assert group["status"] == status


def lag_rows(region: str, group: str, newest_s: float, backlog: int, members: int, n: int = 5) -> list[list[Any]]:
    """``group_latest_sql`` rows of one group sampled every second up to ``newest_s``, newest first."""
    return [[region, group, int(1000 * (newest_s - i)), 10, backlog, 0.0, members, "o", [], 0, backlog]
            for i in range(n)]  # fmt: skip


def test_a_group_its_relay_stopped_sampling_is_gone_not_stop() -> None:
    rows = lag_rows(A, "deleted", NOW - 120, 7, 0) + lag_rows(A, "kept", NOW - 1, 7, 0)
    rows += lag_rows(C, "stale-region", NOW - 120, 7, 0)
    judged = assess([Reading(FLOWS, r, NOW - 1) for r in (A, B)] + [Reading(FLOWS, C, NOW - 600)], NOW)
    groups = {(g["region"], g["group"]): g for g in groupview.shape_groups(rows, [], [], {}, judged)["groups"]}
    assert set(groups) == {(A, "kept"), (C, "stale-region")}  # A still reports: "deleted" is no longer there
    assert groups[(A, "kept")]["status"] == "STOP"
    stale = groups[(C, "stale-region")]  # C's reports stopped: what its groups do is not known, not STOP
    assert stale["status"] == "unknown" and stale["cause"], stale
    brief = groupview.group_brief(rows, judged)
    assert brief[A] == [{"group": "kept", "status": "STOP", "backlog": 7}]
    assert brief[C] == [{"group": "stale-region", "status": "unknown", "backlog": 7}]
    # a collector 25 s behind (behind, not stale) has not read the samples since: nothing is gone for that
    behind = assess([Reading(FLOWS, r, NOW - 25) for r in (A, B)], NOW)
    late = lag_rows(A, "late", NOW - 31, 7, 1)
    (listed,) = groupview.shape_groups(late, [], [], {}, behind)["groups"]
    assert listed["group"] == "late" and listed["status"] != "unknown"
    # the relay's passes since left it out: gone within seconds, before it is old
    left_out = lag_rows(A, "kept", NOW - 1, 7, 0) + lag_rows(A, "just-deleted", NOW - 5, 7, 0)
    assert [g["group"] for g in groupview.shape_groups(left_out, [], [], {}, judged)["groups"]] == ["kept"]
    # sampled every 20 s: gone only after five of its own intervals
    slow = [[A, "slow", int(1000 * (NOW - 60 - 20 * i)), 10, 7, 0.0, 1, "o", [], 0, 7] for i in range(5)]
    assert [g["group"] for g in groupview.shape_groups(slow, [], [], {}, judged)["groups"]] == ["slow"]


def test_a_lagging_group_says_since_when_it_is_behind_and_without_members() -> None:
    rows = lag_rows(A, "stopped", NOW - 1, 7, 0) + lag_rows(A, "fine", NOW - 1, 0, 1)
    rows += lag_rows(A, "always", NOW - 1, 3, 2)
    since = [
        [A, "stopped", int(1000 * (NOW - 300)), int(1000 * (NOW - 3600)), int(1000 * (NOW - 240))],
        [A, "fine", int(1000 * (NOW - 1)), int(1000 * (NOW - 3600)), int(1000 * (NOW - 1))],
        [A, "always", 0, int(1000 * (NOW - 3600)), int(1000 * (NOW - 1))],  # never empty in the lookback
    ]
    groups = {g["group"]: g for g in groupview.shape_groups(rows, [], since, {}, None)["groups"]}
    stopped = groups["stopped"]
    assert stopped["status"] == "STOP" and stopped["oldest_age_s"] == 0.0
    assert stopped["behind_since"] == NOW - 300 and not stopped["behind_before"]
    assert stopped["no_member_since"] == NOW - 240 and not stopped["no_member_before"]
    assert groups["fine"]["behind_since"] is None and groups["fine"]["no_member_since"] is None
    always = groups["always"]
    assert always["behind_since"] == NOW - 3600 and always["behind_before"] and always["no_member_since"] is None


def sampled(src: str, dst: str, ts: float, via: str = "", gov: str = "3-aa", peer_gov: str = "3-aa") -> list[Any]:
    """A ``links_sql`` row: the newest sample of the link src -> dst at the moment asked."""
    return [src, dst, "up", 12.5, 0, 1, ts, "mtls", via, peer_gov, gov, 0.0, 0.0]


def test_routes_as_at_a_past_moment_come_from_the_link_samples() -> None:
    end = NOW - 3600
    rows = [sampled(A, B, end - 1), sampled(A, C, end - 1, via=B), sampled(C, A, end - 120)]
    relays = {r["region"]: r for r in relayhistory.routes_at(rows, end)["relays"]}
    assert {(x["dst"], x["next_hop"], tuple(x["path"]), x["direct"], x["cost_ms"]) for x in relays[A]["routes"]} == {
        (B, B, (B,), True, None),
        (C, B, (B, C), False, None),  # the detour the samples name; cost is not in the history
    }
    assert not relays[A]["stale"] and relays[C]["stale"] and relays[C]["age_s"] == 120
    assert sorted(link["peer"] for link in relays[A]["links"]) == sorted([B, C])


def test_governance_as_at_a_past_moment_is_the_version_then() -> None:
    end = NOW - 3600

    def doc(number: int, applied: float) -> bytes:
        at = datetime.fromtimestamp(applied, UTC).isoformat()
        return orjson.dumps({"version": number, "digest": f"d{number}", "author": "ops", "changed_at": at,
                             "policies": [{}] * number, "subjects": []})  # fmt: skip

    versions = {b"1": doc(1, end - 7200), b"2": doc(2, end - 60), b"3": doc(3, end + 60), b"x": b"not json"}
    rows = [sampled(A, B, end - 1, gov="2-d2", peer_gov="1-d1"), sampled(B, A, end - 1, gov="1-d1", peer_gov="2-d2")]
    gov = relayhistory.governance_at(rows, versions, end, [])
    assert gov["document"]["version"] == "2-d2" and gov["document"]["policies"] == 2  # not the later 3
    assert [(r["region"], r["version"]) for r in gov["relays"]] == [(A, "2-d2"), (B, "1-d1")]
    assert gov["mismatch"] and {(x["src"], x["dst"]) for x in gov["links"]} == {(A, B), (B, A)}
    assert relayhistory.document_at(versions, end - 10_000) is None  # nothing applied yet then


def test_timeline_counts_late_rows_in_the_last_step_and_fills_gaps() -> None:
    sp, step = rollup_span(300, int(NOW), True, False)
    rows = [[int(NOW) - 300, 60, 90, 9, 1], [int(NOW) + 60, 6, 6, 0, 0]]  # the second arrived after the rounded end
    points = views.shape_timeline(rows, sp, step)["points"]
    assert [pt["t"] for pt in points] == list(range(int(NOW) - 300, int(NOW), 60))
    assert points[0] == {"t": int(NOW) - 300, "events_per_s": 1.0, "error_pct": 10.0, "lost": 1}
    assert points[-1]["events_per_s"] == 0.1 and points[1]["events_per_s"] == 0.0


# ---- diff --------------------------------------------------------------------------------------------------


def e(events: int, error_pct: float = 0.0, p99: float | None = 50.0) -> dict[str, Any]:
    return {"events": events, "errors": round(events * error_pct / 100), "error_pct": error_pct, "e2e_p99": p99}


@pytest.mark.parametrize(
    ("before", "now", "change"),
    [
        (None, e(10), "new"),
        (e(0), e(10), "new"),
        (e(10), None, "gone"),
        (e(10), e(0), "gone"),
        (e(10, 0.5), e(10, 0.55), "same"),  # +10 % relative, below the 20 % threshold
        (e(10, 2.0), e(10, 3.0), "errors_up"),  # +50 % relative
        (e(10, 3.0), e(10, 2.0), "errors_down"),
        (e(10, 0.0), e(10, 0.05), "same"),  # from nothing, but under 0.1 points
        (e(10, 0.9), e(10, 1.0), "errors_up"),  # only 11 % more, but crosses amber (1 %)
        (e(10, 0.0, 100.0), e(10, 0.0, 130.0), "lag_up"),
        (e(10, 0.0, 100.0), e(10, 0.0, 110.0), "same"),
        (e(10, 0.0, 960.0), e(10, 0.0, 1040.0), "lag_up"),  # crosses the 1000 ms degraded threshold
        (e(10, 0.0, 3000.0), e(10, 0.0, 100.0), "lag_down"),
        (e(10, 2.0, 100.0), e(10, 4.0, 300.0), "errors_up"),  # errors first
        (e(10, 0.0, None), e(10, 0.0, 900.0), "same"),  # no lag measured before
    ],
)
def test_diff_classification(before: dict[str, Any] | None, now: dict[str, Any] | None, change: str) -> None:
    assert classify(before, now, 20.0, T) == change


def test_diff_lists_changed_edges_first() -> None:
    before = [{"src": A, "dst": B, **e(10)}, {"src": A, "dst": C, **e(10)}]
    now = [{"src": A, "dst": B, **e(10)}, {"src": B, "dst": C, **e(4)}]
    out = changes(before, now, 20.0, T)
    assert [(c["src"], c["dst"], c["change"]) for c in out] == [(B, C, "new"), (A, C, "gone"), (A, B, "same")]
    assert out[1]["now"] is None and out[0]["before"] is None


# ---- what the relays say, and live messages ----------------------------------------------------------------


def relay_state(region: str, age_s: float, **extra: Any) -> bytes:
    return orjson.dumps({"ts": int((NOW - age_s) * 1e6), "region": region, "relay": f"r-{region}",
                         "governance": "2-abc", **extra})  # fmt: skip


def test_relay_states_routes_why_and_governance() -> None:
    raw = {
        A.encode(): relay_state(
            A, 1, routes=[{"dst": C, "next_hop": B, "path": [B, C], "cost_ms": 80.5, "direct": False}],
            links=[{"peer": B, "state": "up", "gov": "3-new", "governance_mismatch": True}],
        ),
        C.encode(): relay_state(
            C, 2, subscriptions=[{"principal": "billing", "patterns": ["orders.>"], "subscribers": 2}],
            groups=[{"group": "audit", "owner": "ops", "patterns": ["*.created"], "members": 1}],
        ),
        B.encode(): relay_state(B, 60),
        b"broken": b"{not json",
    }  # fmt: skip
    states = parse_states(raw, NOW)
    assert list(states) == [A, C, B] and states[B]["stale"] is True and states[A]["stale"] is False
    assert [r["region"] for r in routes_view(states)["relays"]] == [A, C, B]
    out = why(states, A, C, ["orders.created", "payments.x"])
    assert out["route"] == {"dst": C, "next_hop": B, "path": [B, C], "cost_ms": 80.5, "direct": False, "stale": False}
    assert [(t["topic"], len(t["subscriptions"]), len(t["groups"])) for t in out["topics"]] == [
        ("orders.created", 1, 1), ("payments.x", 0, 0)
    ]  # fmt: skip
    gov = governance_view(states, None, [])
    assert gov["versions"] == ["2-abc"] and gov["mismatch"] is True
    assert gov["links"] == [{"src": A, "dst": B, "local_gov": "2-abc", "peer_gov": "3-new"}]


def test_governance_document_in_brief() -> None:
    doc = {"format": 1, "version": 7, "digest": "3fa2b1c9d0e1", "author": "alice",
           "changed_at": "2025-01-01T10:00:00+00:00", "policies": [{"id": "r1"}, {"id": "r2"}],
           "subjects": [{"subject": "orders.>", "compatibility": "backward", "versions": [{}, {}, {}]}]}  # fmt: skip
    assert document_view(orjson.dumps(doc)) == {
        "version": "7-3fa2b1c9d0e1", "number": 7, "digest": "3fa2b1c9d0e1", "author": "alice",
        "changed_at": "2025-01-01T10:00:00+00:00", "policies": 2, "subjects": [{"subject": "orders.>", "versions": 3}],
    }  # fmt: skip
    assert document_view(None) is None and document_view(b"[1]") is None


def test_live_messages_are_typed_and_links_forwarded_on_change() -> None:
    assert edges_message(b'{"v": 1, "ts": 5, "edges": [], "samples": []}') == {
        "type": "edges", "v": 1, "ts": 5, "edges": [], "samples": []
    }  # fmt: skip
    assert edges_message(b"[1, 2]") is None and edges_message(b"garbage") is None

    def sample(state: str, rtt: float = 10.0) -> bytes:
        return orjson.dumps({"region": A, "links": [[1, "r", A, B, state, rtt, 0, 1, "tls", "", "2-x", "1-y"],
                                                    ["too", "short"]]})  # fmt: skip

    up = links_message(sample("up"), 1.0)
    assert up == {"type": "links", "region": A, "links": [
        {"src": A, "dst": B, "state": "healthy", "cause": "", "reported_state": "up", "edge_state": None,
         "last_sample": 1e-6, "clock_offset_ms": 0.0, "peer_skew_s": 0.0, "rtt_ms": 10.0, "queue_depth": 0,
         "reconnects": 1, "security": "tls", "via": "", "gov": "2-x", "local_gov": "1-y", "governance_mismatch": True}
    ]}  # fmt: skip
    # a relay 400 s ahead of its peer, which accepts 300 s: the link is failing, and so is its edge
    skewed = orjson.dumps({"region": A, "links": [[1, "r", A, B, "up", 1.0, 0, 0, "mtls", "", "", "", 400_000.0,
                                                   300.0]]})  # fmt: skip
    (link,) = (links_message(skewed, 1.0) or {})["links"]
    assert (link["state"], link["edge_state"]) == ("failing", "failing")
    assert link["cause"] == f"clock 400 s behind {B}'s, which accepts 300 s"
    changed = LinkChanges(refresh_s=5.0)
    steps = [
        (0.0, "up", 10.0),
        (0.2, "up", 11.0),
        (0.4, "connecting", 0.0),
        (0.6, "connecting", 0.0),
        (5.7, "connecting", 0.0),
    ]
    forwarded = [changed.forward(links_message(sample(s, rtt), t) or {}, t) for t, s, rtt in steps]
    assert forwarded == [True, False, True, False, True]  # first, a change, and a refresh


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("aws:us-east-1", True),
        ('evil:<a href="javascript:alert(1)">x</a>', True),  # stored by someone: shown, so it may be asked back
        ("a" * 256, True),
        ("a" * 257, False),
        ("", False),
        ("a\x00b", False),
        ("line\nbreak", False),
    ],
)
def test_an_edge_names_any_region_the_map_shows(text: str, ok: bool) -> None:
    if ok:
        assert p.require_region(text, "src") == text
    else:
        with pytest.raises(p.BadRequest, match="src: a region is 1 to 256 characters"):
            p.require_region(text, "src")


# ---- properties: hostile query strings get a 400 that names them, or a normalized question -------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
_PARAM = st.sampled_from(["window", "end", "provider", "region", "topic", "compare_end", "threshold_pct"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_PARAM, _TEXT | st.sampled_from(["1h", "5m", "aws,gcp", "aws:us-east-1", "orders.>", "0"])))
def test_any_query_string_is_a_question_or_a_bad_request(query: dict[str, str]) -> None:
    try:
        parsed = p.parse_map_query(query, NOW, 2.0)
    except p.BadRequest as exc:
        assert str(exc)  # it says what is wrong
        return
    assert parsed.window_s in p.WINDOWS.values()
    assert all(p.PROVIDER.fullmatch(provider) for provider in parsed.filters.providers)
    assert all(p.REGION_ID.fullmatch(region) for region in parsed.filters.regions)
    if parsed.filters.topic is not None:
        validate_pattern(parsed.filters.topic)
    try:
        compare = p.parse_compare_end(query.get("compare_end"), parsed)
    except p.BadRequest:
        return
    assert compare < parsed.end_s


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_a_stored_region_is_taken_back_only_without_control_characters(text: str) -> None:
    clean = 1 <= len(text) <= 256 and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
    try:
        assert p.require_region(text, "src") == text and clean
    except p.BadRequest:
        assert not clean


_TOKEN = st.text(alphabet="abcxyz0+()[]$^|\\", min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_TOKEN | st.just("*"), min_size=1, max_size=4).map(".".join)
    | st.lists(_TOKEN, max_size=3).map(lambda tokens: ".".join([*tokens, ">"])),
    st.lists(_TOKEN, min_size=1, max_size=5).map(".".join),
)
def test_topic_regex_agrees_with_the_relays_matcher(pattern: str, topic: str) -> None:
    assert bool(re.fullmatch(p.topic_regex(pattern), topic)) == matches(pattern, topic)


@pytest.mark.parametrize(
    ("text", "ok"),
    [("", 50), ("7", 7), ("1000", 1000), ("0", None), ("1001", None), ("\u00b2", None), ("\u0663", None),
     ("0" * 4300 + "1", None), ("-1", None), (" 5", None)],
)  # fmt: skip
def test_limit_is_ascii_digits_within_its_range(text: str, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(p.BadRequest, match="limit must be a whole number from 1 to 1000"):
            p.parse_limit(text, 50, 1000)
    else:
        assert p.parse_limit(text, 50, 1000) == ok


def test_the_week_long_timeline_is_named_as_asked() -> None:
    sp, _ = rollup_span(7 * 86400, int(NOW) + 1234, live=True, per_topic=False)
    assert views.window_name(sp) == "7d"
