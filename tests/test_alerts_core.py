"""Alert rules, evaluation and payloads with raw inputs in and decisions out: no servers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import alertrules as ar
from collector.alerting import history_sql, parse_states, shape_history
from collector.alerts import (
    FIRING,
    INACTIVE,
    PENDING,
    RESOLVED,
    Alert,
    Observation,
    alert_rows,
    alert_view,
    badges,
    edge_span,
    evaluate,
    fingerprint,
    observe,
    order,
    rule_sql,
)
from collector.config import AlertConfig, CollectorConfig
from collector.histogram import histogram
from collector.notify import ZERO_TIME, payloads, redact, retryable
from meshcore.freshness import FLOWS, LIMITS
from meshcore.settings import SettingError

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0


def rule(kind: str = ar.EDGE_ERROR_PCT, extra: str = "", **keys: Any) -> ar.Rule:
    """One rule parsed from TOML (so every test also goes through the strict reader)."""
    body = {"id": "R", "kind": kind, "severity": "critical", "for": "1m", "window": "5m", **keys}
    if kind in (ar.EDGE_ERROR_PCT, ar.EDGE_P99_LAG_MS, ar.EDGE_RATE_DROP):
        body.setdefault("threshold", 5.0)
    if kind == ar.GROUP_LAG:
        body.setdefault("statuses", ["STALL"])
    lines = [f"{k} = {_toml(v)}" for k, v in body.items()]
    return ar.parse_rules("[[rule]]\n" + "\n".join(lines) + "\n" + extra)[0]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# ---- the rules file ----------------------------------------------------------------------------


def test_deploy_file_is_the_built_in_rules() -> None:
    assert ar.load_rules(str(ROOT / "deploy" / "alerts.toml")) == ar.default_rules() == ar.load_rules(None)


def test_defaults_match_the_prometheus_rules_where_both_exist() -> None:
    doc = yaml.safe_load((ROOT / "deploy" / "prometheus-rules.yml").read_text())
    prom = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    ours = {r.id: r for r in ar.default_rules()}
    both = set(prom) & set(ours)
    assert both == {
        "EdgeErrorRateHigh", "EdgeLagP99High", "EventRateDrop", "LinkDown", "PolicyOrSchemaRejections",
        "ConsumerLagGrowing", "ConsumerGroupStopped",
    }  # fmt: skip
    for name in both:
        assert ours[name].severity == prom[name]["labels"]["severity"], name
    assert ours["EdgeErrorRateHigh"].threshold == 5.0 and "0.05" in prom["EdgeErrorRateHigh"]["expr"]
    assert ours["EdgeLagP99High"].threshold == 2000.0 and "2000" in prom["EdgeLagP99High"]["expr"]
    assert ours["EventRateDrop"].threshold == 50.0 and "0.5 *" in prom["EventRateDrop"]["expr"]
    for name in (
        "EdgeErrorRateHigh", "EdgeLagP99High", "LinkDown", "PolicyOrSchemaRejections", "ConsumerLagGrowing",
        "ConsumerGroupStopped",
    ):  # fmt: skip
        assert ours[name].for_text == prom[name]["for"], name
    # Prometheus says "collector lag" where the dashboard holds its alerts back for stale input: past the
    # freshness table's limit for flow records, for as long as TelemetryStale waits
    stale_s = LIMITS[FLOWS].stale_s
    assert prom["CollectorLagHigh"]["expr"] == f"meshscope_collector_lag_seconds > {stale_s:g}"
    assert ours["TelemetryStale"].for_text == prom["CollectorLagHigh"]["for"]
    assert ours["EdgeErrorRateElevated"].threshold == 1.0 and ours["EdgeErrorRateElevated"].severity == "warning"
    groups = {r.statuses[0]: r.severity for r in ours.values() if r.kind == ar.GROUP_LAG}
    assert groups == {"WARN": "warning", "STALL": "critical", "STOP": "critical"}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nfitler = {src = 'x'}",
            r"rule\[0\] \(A\)\.fitler: unknown key",
        ),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nfilter = {topic = 'x'}",
            r"rule\[0\] \(A\)\.filter\.topic: unknown",
        ),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nthreshold = 3",
            r"\(A\)\.threshold: unknown key for a link_down",
        ),
        ("[[rule]]\nid = 'A'\nkind = 'edge_error_pct'\nfor = '1m'", r"\(A\)\.threshold: required"),
        ("[[rule]]\nid = 'A'\nkind = 'nope'", r"\(A\)\.kind: required, one of"),
        ("[[rule]]\nid = '1x'\nkind = 'link_down'", r"rule\[0\]\.id"),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nseverity = 'page'", r"\(A\)\.severity"),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '2 minutes'", r"\(A\)\.for: '2 minutes' is not a duration"),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{value.__class__}'",
            r"\(A\)\.summary: \{value\.__class",
        ),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{src[0]}'",
            r"summary: \{src\[0\]\} is not a template",
        ),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{secret}'",
            r"\{secret\} is not a template field",
        ),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{src:.1f}'",
            r"summary: the template does not render",
        ),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{src!r}'", r"no conversions"),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{value:999999999}'", r"widths over 999"),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\nsummary = '{value:{threshold}}'", r"nested fields"),
        ("[[rule]]\nid = 'A'\nkind = 'group_lag'\nfor = '1m'", r"\(A\)\.statuses: required"),
        ("[[rule]]\nid = 'A'\nkind = 'group_lag'\nfor = '1m'\nstatuses = ['LATE']", r"statuses: LATE not one of"),
        ("[[rule]]\nid = 'A'\nkind = 'rejections'\nfor = '1m'\nby = ['host']", r"\(A\)\.by: host not one of"),
        ("[[rule]]\nid = 'A'\nkind = 'rejections'\nfor = '1m'\nfilter = {topic = 'a.>.b'}", r"filter\.topic: pattern"),
        ("[[rule]]\nid = 'A'\nkind = 'edge_rate_drop'\nfor = '1m'\nthreshold = 150", r"threshold: out of range"),
        (
            "[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'\n[[rule]]\nid = 'A'\nkind = 'link_down'\nfor = '1m'",
            r"A is used twice",
        ),
        ("[[rule]]\nid = 'A'\nkind = 'link_down'", r"\(A\)\.for: required: how long the condition must hold"),
        ("[[rule]]\nid = 'A'\nkind = 'edge_error_pct'\nfor = '1m'\nthreshold = 1\nstatuses = ['ok']", r"ok not one of"),
        ("[[rule]]\nid = 'A'\nkind = 'telemetry_stale'\nfor = '1m'\nsources = ['logs']", r"logs not one of"),
        ("[rules]\nx = 1", r"rules: unknown key; a rules file holds \[\[rule\]\] tables only"),
        ("[[rule]\n", r"not valid TOML"),
    ],
)
def test_rules_file_is_strict(text: str, error: str) -> None:
    with pytest.raises(ar.AlertRuleError, match=error) as info:
        ar.parse_rules(text, "my.toml")
    assert str(info.value).startswith("my.toml: ")


def test_rules_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ar.AlertRuleError, match="cannot read the rules file"):
        ar.load_rules(str(tmp_path / "missing.toml"))


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), ("0s", 0), (45, 45), ("1d", 86400)],
)
def test_durations(value: Any, seconds: float) -> None:
    assert ar.parse_duration(value, "x")[0] == seconds


def test_templates_render_a_fixed_set_of_fields() -> None:
    assert ar.render("{src} -> {dst}: {value:.1f} %", {"src": "a", "value": 12.345}) == "a -> : 12.3 %"
    text = "{alertname} {region} {value:.0f} {value:>8.2f} {threshold:g} {src:<12} {value:,.1f}%"
    assert rule(summary=text).summary == text


# ---- each kind's question and answer -------------------------------------------------------------


def edge_row(src: str, dst: str, entered: int, errors: int, hist: dict[int, int] | None = None, **kw: Any) -> tuple:
    """A row of an edge rule's query: ``errors`` lost (delivery_failed), and ``refused`` policy denials."""
    statuses = {"delivery_failed": errors, "policy_denied": kw.get("refused", 0)}
    return (src, dst, kw.get("topic", ""), entered, kw.get("before", 0), statuses, hist or {})


@pytest.mark.parametrize(
    ("entered", "errors", "threshold", "min_events", "active"),
    [
        (100, 10, 5.0, 1, True),
        (100, 4, 5.0, 1, False),
        (100, 5, 5.0, 1, True),
        (0, 3, 5.0, 1, True),
        (9, 1, 5.0, 20, False),
    ],
)
def test_edge_error_pct(entered: int, errors: int, threshold: float, min_events: int, active: bool) -> None:
    r = rule(threshold=threshold, min_events=min_events)
    (obs,) = observe(r, [edge_row("a", "b", entered, errors)], NOW)
    assert obs.active is active and obs.labels == {"src": "a", "dst": "b"}


def test_edge_errors_count_what_the_rule_says_failed_by_default_the_losses() -> None:
    rows = [edge_row("a", "b", 100, 1, refused=40)]
    (losses,) = observe(rule(threshold=5.0), rows, NOW)
    assert (losses.value, losses.active) == (1.0, False)  # the producers' refusals are not the edge's
    (refusals,) = observe(rule(threshold=5.0, statuses=["policy_denied", "delivery_failed"]), rows, NOW)
    assert (refusals.value, refusals.active) == (41.0, True)


def test_edge_filters_and_topics() -> None:
    rows = [
        edge_row("a", "b", 100, 20, topic="orders.created"),
        edge_row("a", "b", 100, 0, topic="orders.paid"),
        edge_row("a", "b", 100, 50, topic="billing.x"),
        edge_row("a", "c", 100, 50, topic="orders.created"),
    ]
    (one,) = observe(rule(extra='[rule.filter]\nsrc = "a"\ndst = "b"\ntopic = "orders.>"'), rows, NOW)
    assert one.value == pytest.approx(10.0)  # 20 errors of 200 events, billing.x left out
    per_topic = observe(rule(by_topic=True, extra='[rule.filter]\ntopic = "orders.*"'), rows, NOW)
    assert [(o.labels["dst"], o.labels["topic"], o.active) for o in per_topic] == [
        ("b", "orders.created", True),
        ("b", "orders.paid", False),
        ("c", "orders.created", True),
    ]


def test_edge_p99_lag() -> None:
    slow = histogram([100.0] * 90 + [3000.0] * 10)
    fast = histogram([100.0] * 100)
    rows = [edge_row("a", "b", 100, 0, slow), edge_row("a", "c", 100, 0, fast), edge_row("a", "d", 5, 0, {})]
    obs = observe(rule(ar.EDGE_P99_LAG_MS, threshold=2000.0), rows, NOW)
    assert [(o.labels["dst"], o.active) for o in obs] == [("b", True), ("c", False)]  # no deliveries: no p99
    assert obs[0].value == pytest.approx(3000, rel=0.05)


@pytest.mark.parametrize(
    ("now", "before", "min_rate", "active", "drop"),
    [(60, 600, 1.0, True, 90.0), (300, 600, 1.0, False, 50.0), (0, 30, 1.0, False, 100.0), (0, 0, 0.0, False, 0.0)],
)
def test_edge_rate_drop(now: int, before: int, min_rate: float, active: bool, drop: float) -> None:
    r = rule(ar.EDGE_RATE_DROP, threshold=50.0, min_rate=min_rate, window="60s")
    (obs,) = observe(r, [edge_row("a", "b", now, 0, before=before)], NOW)
    assert obs.active is active and obs.value == pytest.approx(drop)
    assert obs.fields["previous_rate"] == pytest.approx(before / 60)


def test_edge_windows_pick_their_table() -> None:
    short = edge_span(rule(ar.EDGE_RATE_DROP, window="5m"), NOW)
    assert (short.table, short.end, short.mid, short.start) == ("edge_second", NOW - 2, NOW - 302, NOW - 602)
    long = edge_span(rule(window="2h"), NOW + 30)
    assert (long.table, long.end % 60, long.end - long.start) == ("pair_minute", 0, 7200)
    assert edge_span(rule(window="2h", by_topic=True), NOW).table == "edge_minute"
    sql = rule_sql(rule(), "db", NOW)
    assert "`db`.`edge_second`" in sql and "%" not in sql


def test_link_down() -> None:
    rows = [
        ("a", "b", "up", (NOW - 2) * 1000, 0.0, 0.0),
        ("a", "c", "up", (NOW - 60) * 1000, 0.0, 0.0),
        ("b", "a", "down", (NOW - 1) * 1000, 0.0, 0.0),
        ("c", "a", "connecting", (NOW - 1) * 1000, 0.0, 0.0),
        ("d", "a", "up", (NOW - 1) * 1000, -400_000.0, 300.0),  # d's clock is 400 s ahead: refused
    ]
    obs = observe(rule(ar.LINK_DOWN, stale="30s"), rows, NOW)
    assert [(o.labels["src"], o.labels["dst"], o.active, o.fields["state"], bool(o.held)) for o in obs] == [
        ("a", "b", False, "healthy", False),
        ("a", "c", False, "unknown", True),  # its relay cannot report: not down, held back
        ("b", "a", True, "down", False),
        ("c", "a", True, "down", False),
        ("d", "a", True, "failing", False),
    ]
    assert obs[1].value == pytest.approx(60) and obs[1].held.startswith("link samples 60 s behind")
    assert obs[4].fields["cause"] == "clock 400 s ahead of a's, which accepts 300 s"


def test_rejections_by_labels() -> None:
    rows = [
        ("a", "orders.x", "p1", "policy_denied", 6),
        ("a", "orders.x", "p1", "schema_rejected", 3),
        ("a", "orders.y", "p2", "policy_denied", 1),
        ("b", "orders.x", "p1", "malformed", 9),
    ]
    r = rule(
        ar.REJECTIONS, threshold=2.0, window="3m", by=["region", "topic"], statuses=["policy_denied", "schema_rejected"]
    )
    obs = observe(r, rows, NOW)
    assert [(dict(o.labels), round(o.value, 3), o.active) for o in obs] == [
        ({"region": "a", "topic": "orders.x"}, 3.0, True),  # 9 in 3 minutes
        ({"region": "a", "topic": "orders.y"}, 0.333, False),
    ]
    only_p2 = observe(rule(ar.REJECTIONS, threshold=0.1, extra='[rule.filter]\nprincipal = "p2"'), rows, NOW)
    assert [dict(o.labels) for o in only_p2] == [
        {"region": "a", "topic": "orders.y", "principal": "p2", "status": "policy_denied"}
    ]
    assert "refusal_minute" in rule_sql(r, "db", NOW)


def group_rows(
    group: str, *samples: tuple[int, int, int], region: str = "r", probe: int = 0, age: float = 0.0
) -> list[tuple]:
    """(acked, backlog, consumers) every 5 s, newest last, as the query returns them (newest first)."""
    rows = [(region, group, (NOW - age - 5 * (len(samples) - i)) * 1000, a, b, 0.0, c, probe)
            for i, (a, b, c) in enumerate(samples)]  # fmt: skip
    return rows[::-1]


@pytest.mark.parametrize(
    ("samples", "statuses", "active", "status"),
    [
        ([(10, 5, 1), (20, 8, 1), (30, 12, 1)], ["WARN"], True, "WARN"),  # acknowledging, falling behind
        ([(10, 5, 1), (10, 8, 1), (10, 12, 1)], ["STALL"], True, "STALL"),  # committing nothing
        ([(10, 5, 1), (10, 8, 1), (10, 12, 1)], ["WARN"], False, "STALL"),
        ([(10, 5, 1), (10, 8, 0)], ["STOP"], True, "STOP"),  # nobody connected, entries wait
        ([(10, 5, 1), (20, 3, 1), (30, 4, 1)], ["WARN", "STALL", "STOP"], False, "OK"),
        ([(10, 5, 1), (10, 8, 1)], ["STALL"], False, "OK"),  # fewer samples than the window: no trend yet
    ],
)
def test_group_lag_burrow_statuses(
    samples: list[tuple[int, int, int]], statuses: list[str], active: bool, status: str
) -> None:
    r = rule(ar.GROUP_LAG, statuses=statuses, samples=3)
    (obs,) = observe(r, group_rows("g", *samples), NOW)
    assert (obs.active, obs.fields["status"], obs.labels) == (active, status, {"region": "r", "group": "g"})
    assert obs.value == samples[-1][1]


def test_probe_groups_never_alert_and_stale_samples_are_held_back() -> None:
    stopped = [(10, 5, 1), (10, 8, 0)]
    r = rule(ar.GROUP_LAG, statuses=["STOP"], samples=2)
    assert observe(r, group_rows("chaos1", *stopped, probe=1), NOW) == []  # meshscope chaos's own
    (old,) = observe(r, group_rows("g", *stopped, age=120), NOW)
    assert old.active and old.held.startswith("group samples 2 min behind")


def test_group_lag_window_is_the_last_samples() -> None:
    # stalled long ago, keeping up in the last three samples
    samples = [(10, 5, 1), (10, 6, 1), (10, 7, 1), (20, 7, 1), (30, 6, 1), (40, 5, 1)]
    (obs,) = observe(rule(ar.GROUP_LAG, statuses=["STALL"], samples=3), group_rows("g", *samples), NOW)
    assert obs.fields["status"] == "OK"
    assert "LIMIT 3 BY region, `group`" in rule_sql(rule(ar.GROUP_LAG, samples=3), "db", NOW)


# ---- the state machine ---------------------------------------------------------------------------


def active(value: float = 10.0, **labels: str) -> Observation:
    return Observation(labels or {"src": "a", "dst": "b"}, value, True)


def quiet(value: float = 0.0, **labels: str) -> Observation:
    return Observation(labels or {"src": "a", "dst": "b"}, value, False)


def run(r: ar.Rule, steps: list[tuple[float, list[Observation] | None]]) -> list[list[tuple[str, float]]]:
    """Evaluate ``steps`` (time, observations) in turn; the transitions of each step as (state, ts)."""
    alerts: dict[str, Alert] = {}
    out = []
    for t, obs in steps:
        result = evaluate([r], {r.id: obs}, alerts, t)
        out.append([(tr.state, tr.ts) for tr in result.transitions])
        alerts = result.alerts
    return out


@pytest.mark.parametrize(
    ("for_s", "steps", "expected"),
    [
        # pending, held for `for`, firing, resolved once, then nothing
        (
            60,
            [(0, [active()]), (30, [active()]), (60, [active()]), (75, [active()]), (90, [quiet()]), (105, [quiet()])],
            [[(PENDING, 0)], [], [(FIRING, 60)], [], [(RESOLVED, 90)], []],
        ),
        # pending that never fires: inactive, not resolved
        (60, [(0, [active()]), (30, [quiet()]), (45, [active()])], [[(PENDING, 0)], [(INACTIVE, 30)], [(PENDING, 45)]]),
        # no `for`: fires at once
        (0, [(0, [active()]), (15, []), (30, [])], [[(FIRING, 0)], [(RESOLVED, 15)], []]),
        # a series that disappears (no traffic) is a false condition
        (0, [(0, [active()]), (15, [])], [[(FIRING, 0)], [(RESOLVED, 15)]]),
        # a failed query keeps the alert as it is, through the whole outage
        (60, [(0, [active()]), (30, None), (90, None), (100, [active()])], [[(PENDING, 0)], [], [], [(FIRING, 100)]]),
        (0, [(0, [active()]), (30, None), (45, [quiet()])], [[(FIRING, 0)], [], [(RESOLVED, 45)]]),
    ],
)
def test_transitions(for_s: float, steps: list[tuple[float, list[Observation] | None]], expected: list[Any]) -> None:
    assert run(rule(**{"for": f"{for_s}s"}), steps) == expected


def test_firing_alert_keeps_its_start_and_follows_its_value() -> None:
    r = rule(**{"for": "30s"}, summary="{src}->{dst} {value:.0f}%")
    first = evaluate([r], {"R": [active(10)]}, {}, 100)
    fired = evaluate([r], {"R": [active(12)]}, first.alerts, 130)
    later = evaluate([r], {"R": [active(20)]}, fired.alerts, 160)
    (alert,) = later.alerts.values()
    assert (alert.state, alert.active_at, alert.fired_at, alert.value, alert.summary) == (
        FIRING,
        100,
        130,
        20,
        "a->b 20%",
    )
    assert later.transitions == []
    done = evaluate([r], {"R": [quiet(1)]}, later.alerts, 190)
    (t,) = done.transitions
    assert (t.state, t.starts_at, t.ends_at, t.alert.value) == (RESOLVED, 130, 190, 1)
    assert done.alerts == {}


def test_alerts_are_per_label_set_and_rule() -> None:
    r = rule(**{"for": "0s"})
    result = evaluate([r], {"R": [active(src="a", dst="b"), active(src="a", dst="c"), quiet(src="b", dst="c")]}, {}, 0)
    labels = sorted((a.labels["src"], a.labels["dst"]) for a in result.alerts.values())
    assert labels == [("a", "b"), ("a", "c")]
    for fp, alert in result.alerts.items():
        assert fp == fingerprint(alert.labels) and re.fullmatch(r"[0-9a-f]{16}", fp)
        assert alert.labels["alertname"] == "R" and alert.labels["severity"] == "critical"
    assert fingerprint({"a": "1", "b": "2"}) == fingerprint({"b": "2", "a": "1"}) != fingerprint({"a": "1"})


def test_a_rule_removed_from_the_file_resolves_its_alerts() -> None:
    r = rule(**{"for": "0s"})
    fired = evaluate([r], {"R": [active()]}, {}, 0)
    other = rule(ar.LINK_DOWN, id="Other")
    result = evaluate([other], {"Other": []}, fired.alerts, 10)
    assert [(t.state, t.alert.alertname) for t in result.transitions] == [(RESOLVED, "R")] and result.alerts == {}


def test_states_round_trip_and_bad_ones_are_skipped() -> None:
    fired = evaluate([rule(**{"for": "0s"})], {"R": [active()]}, {}, 5)
    (alert,) = fired.alerts.values()
    import orjson

    raw = {alert.fingerprint.encode(): orjson.dumps(alert.to_json()), b"junk": b"{", b"bad": b'{"state": "x"}'}
    assert parse_states(raw) == {alert.fingerprint: alert}
    rows = alert_rows(fired.transitions)
    assert rows[0][:5] == [5000, "R", alert.fingerprint, FIRING, "critical"] and rows[0][-2:] == [5000, 0]


# ---- what the dashboard and the webhooks get -----------------------------------------------------


def test_views_order_and_badges() -> None:
    warn = rule(id="W", severity="warning", **{"for": "0s"})
    crit = rule(id="C", severity="critical", **{"for": "0s"})
    slow = rule(id="P", severity="critical", **{"for": "1h"})
    obs = {
        "W": [active(src="a", dst="b"), active(region="r", group="g")],
        "C": [active(src="a", dst="b"), active(src="c", dst="c")],
        "P": [active(src="x", dst="y")],
    }
    views = order([alert_view(a) for a in evaluate([warn, crit, slow], obs, {}, 50).alerts.values()])
    assert [(v["alertname"], v["state"]) for v in views][-1] == ("P", PENDING)
    assert [v["severity"] for v in views[:4]] == ["critical", "critical", "warning", "warning"]
    assert all(v["since"] == 50 for v in views)
    b = badges(views)
    assert b["edges"] == [{"src": "a", "dst": "b", "severity": "critical", "count": 2}]
    assert sorted(b["regions"], key=lambda x: x["region"]) == [
        {"region": "c", "severity": "critical", "count": 1},
        {"region": "r", "severity": "warning", "count": 1},
    ]


def test_history_sql() -> None:
    sql, params = history_sql("db", src="a", dst="b", since_s=100, limit=50)
    assert "src_region = %(src_region)s AND dst_region = %(dst_region)s" in sql and "LIMIT 50" in sql
    assert params == {"src_region": "a", "dst_region": "b"} and "toInt64(100000)" in sql
    sql, params = history_sql("db", region="r")
    assert "(src_region = %(region)s OR dst_region = %(region)s)" in sql and params == {"region": "r"}
    sql, params = history_sql("db", region="r", group="g", limit=10**9)
    assert "src_region = %(region)s" in sql and "`group` = %(group)s" in sql and "LIMIT 10000" in sql
    row = (5000, "R", "f" * 16, RESOLVED, "critical", {"src": "a"}, 1.5, "s", "d", 1000, 5000)
    (shaped,) = shape_history([row])
    assert (
        shaped["ts"] == 5 and shaped["starts_at"] == 1 and shaped["ends_at"] == 5 and shaped["labels"] == {"src": "a"}
    )
    assert shape_history([(*row[:-1], 0)])[0]["ends_at"] is None


def test_alertmanager_payload() -> None:
    r = rule(**{"for": "0s"}, summary="{src}->{dst}", description="errors {value:.0f}%")
    fired = evaluate([r], {"R": [active(src="a", dst="b"), active(src="a", dst="c")]}, {}, 1_700_000_000.25)
    (message,) = payloads(fired.transitions, "https://ms.example", max_alerts=1)
    assert message["version"] == "4" and message["status"] == "firing" and message["receiver"] == "meshscope"
    assert message["groupKey"] == '{}:{alertname="R"}' and message["groupLabels"] == {"alertname": "R"}
    assert message["commonLabels"] == {"alertname": "R", "severity": "critical", "src": "a"}
    assert message["commonAnnotations"] == {"description": "errors 10%"}
    assert message["truncatedAlerts"] == 1 and len(message["alerts"]) == 1
    (alert,) = message["alerts"]
    assert alert["startsAt"] == "2023-11-14T22:13:20.250Z" and alert["endsAt"] == ZERO_TIME
    assert alert["generatorURL"] == f"https://ms.example/?alert={alert['fingerprint']}"
    done = evaluate([r], {"R": []}, fired.alerts, 1_700_000_060.0)
    (resolved,) = payloads(done.transitions)
    assert resolved["status"] == "resolved" and {a["status"] for a in resolved["alerts"]} == {"resolved"}
    assert resolved["alerts"][0]["endsAt"] == "2023-11-14T22:14:20.000Z" and resolved["externalURL"] == ""
    pending = evaluate([rule()], {"R": [active()]}, {}, 0)
    assert payloads(pending.transitions) == []  # nobody hears of a pending alert


def test_alertmanager_api_v2_body() -> None:
    """POST /api/v2/alerts takes a list of alerts: firing ones end four resends ahead, resolved ones when they did."""
    from collector.notify import alertmanager_alerts

    r = rule(**{"for": "0s"}, summary="{src}->{dst}", description="errors {value:.0f}%")
    fired = evaluate([r], {"R": [active(src="a", dst="b"), active(src="a", dst="c")]}, {}, 1_700_000_000.25)
    body = alertmanager_alerts(list(fired.alerts.values()), [], 1_700_000_010.0, 60.0, "https://ms.example")
    assert len(body) == 2 and set(body[0]) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    first = next(a for a in body if a["labels"]["dst"] == "b")
    assert first["labels"] == {"alertname": "R", "severity": "critical", "src": "a", "dst": "b"}
    assert first["annotations"] == {"summary": "a->b", "description": "errors 10%"}
    assert (first["startsAt"], first["endsAt"]) == ("2023-11-14T22:13:20.250Z", "2023-11-14T22:17:30.000Z")
    assert first["generatorURL"].startswith("https://ms.example/?alert=")
    done = evaluate([r], {"R": [active(src="a", dst="c")]}, fired.alerts, 1_700_000_060.0)
    body = alertmanager_alerts(list(done.alerts.values()), done.transitions, 1_700_000_060.0, 60.0)
    ended = next(a for a in body if a["labels"]["dst"] == "b")
    assert ended["endsAt"] == "2023-11-14T22:14:20.000Z" and ended["generatorURL"] == ""
    pending = evaluate([rule()], {"R": [active()]}, {}, 0)
    assert alertmanager_alerts(list(pending.alerts.values()), [], 0, 60) == []  # pending is not told


def test_webhook_helpers() -> None:
    assert redact("https://u:p@hooks.example:8443/x/y?token=s#f") == "https://hooks.example:8443/x/y"
    assert [retryable(s) for s in (0, 200, 400, 404, 408, 429, 500, 503)] == [
        True, False, False, False, True, True, True, True,
    ]  # fmt: skip


def test_alert_settings() -> None:
    env = {
        "MESHSCOPE_ALERT_WEBHOOKS": "http://a.example/hook, https://b.example/x",
        "MESHSCOPE_ALERT_WEBHOOK_TOKEN": "t1,",
        "MESHSCOPE_ALERT_INTERVAL_S": "5",
        "MESHSCOPE_ALERTS": "off",
    }
    c = CollectorConfig.from_env(env).alerts
    assert c.webhooks == ("http://a.example/hook", "https://b.example/x") and c.interval_s == 5 and not c.enabled
    assert (c.token_for(0), c.token_for(1)) == ("t1", "") and "t1" not in repr(c)
    one = AlertConfig.from_env({**env, "MESHSCOPE_ALERT_WEBHOOK_TOKEN": "shared"})
    assert one.webhook_tokens == ("shared", "shared")
    assert CollectorConfig.from_env({}).alerts == AlertConfig()
    with pytest.raises(SettingError, match="2 tokens for 1 webhooks"):
        AlertConfig.from_env({"MESHSCOPE_ALERT_WEBHOOKS": "http://a/", "MESHSCOPE_ALERT_WEBHOOK_TOKEN": "a,b"})
    with pytest.raises(SettingError, match="not an http"):
        AlertConfig.from_env({"MESHSCOPE_ALERT_WEBHOOKS": "ftp://a/"})
    am = AlertConfig.from_env(
        {"MESHSCOPE_ALERTMANAGERS": "http://am1:9093/, http://am2:9093", "MESHSCOPE_ALERT_RESEND_S": "30"}
    )
    assert am.alertmanagers == ("http://am1:9093", "http://am2:9093") and am.resend_s == 30
    assert am.alertmanager_tokens == ("", "") and AlertConfig().resend_s == 60
    with pytest.raises(SettingError, match="MESHSCOPE_ALERTMANAGER_TOKEN holds 3 tokens for 1 Alertmanagers"):
        AlertConfig.from_env({"MESHSCOPE_ALERTMANAGERS": "http://am/", "MESHSCOPE_ALERTMANAGER_TOKEN": "a,b,c"})


# ---- stale input: held back, and one alert that says so ---------------------------------------------


def test_an_alert_whose_input_is_stale_neither_fires_nor_resolves() -> None:
    r = rule(**{"for": "0s"})
    held = Observation({"src": "a", "dst": "b"}, 100.0, True, held="flow records 15 min behind — collector lag")
    steps: list[tuple[float, list[Observation] | None]] = [
        (NOW, [held]),  # nothing starts on stale input, however bad it looks
        (NOW + 15, [active()]),  # fresh: fires
        (NOW + 30, [replace_held(quiet())]),  # stale again: "rate fell" or "all good", it stays as it was
        (NOW + 45, [quiet()]),  # fresh and quiet: resolves
    ]
    assert run(r, steps) == [[], [(FIRING, NOW + 15)], [], [(RESOLVED, NOW + 45)]]


def replace_held(obs: Observation) -> Observation:
    from dataclasses import replace

    return replace(obs, held="flow records 15 min behind — collector lag")


def test_rules_read_their_regions_input_and_a_stale_one_holds_them_back() -> None:
    from collector.alertinputs import inputs
    from meshcore.freshness import LagReport

    behind = [LagReport("meshscope:flows", ("*",), NOW, 900.0)]
    fresh = inputs(behind, [("links", "a", (NOW - 1) * 1000)], NOW)
    (obs,) = observe(rule(threshold=5.0), [edge_row("a", "b", 0, 0, before=600)], NOW, fresh)
    assert obs.held == "flow records 15 min behind — collector lag"
    caught_up = inputs([LagReport("meshscope:flows", ("*",), NOW, 0.5)], [], NOW)
    (obs,) = observe(rule(ar.EDGE_RATE_DROP, threshold=50.0), [edge_row("a", "b", 0, 0, before=600)], NOW, caught_up)
    assert obs.active and obs.held == ""


def test_telemetry_stale_is_one_alert_per_cause_not_one_per_region_and_rule() -> None:
    from collector.alertinputs import inputs
    from meshcore.freshness import LagReport

    r = rule(ar.TELEMETRY_STALE)
    rows = [("links", "a", (NOW - 1) * 1000), ("links", "b", (NOW - 120) * 1000), ("groups", "b", (NOW - 999) * 1000)]
    one_stream = inputs([LagReport("meshscope:flows", ("*",), NOW, 900.0)], rows, NOW)
    obs = observe(r, [], NOW, one_stream)
    assert [(dict(o.labels), o.fields["cause"]) for o in obs] == [
        ({"source": "flows", "region": "*"}, "collector lag"),
        ({"source": "links", "region": "b"}, "no newer sample"),
    ]  # group samples are not among the rule's default sources
    assert [o.value for o in obs] == [900.0, 120.0] and all(o.active for o in obs)
    summary = ar.render(r.summary, {**obs[0].labels, **obs[0].fields})
    assert summary == "The flow records of every region are stale: collector lag"
    per_region = inputs([LagReport("f", ("a",), NOW, 0.5), LagReport("f2", ("b",), NOW, 600.0)], rows[:1], NOW)
    assert [dict(o.labels) for o in observe(r, [], NOW, per_region)] == [{"source": "flows", "region": "b"}]
    assert observe(r, [], NOW, inputs([LagReport("f", ("*",), NOW, 0.5)], rows[:1], NOW)) == []
