"""Alert evaluation with no I/O: what each rule kind asks ClickHouse, what the answers mean, and
the state machine every alert follows.

    inactive --condition true--> pending --true for `for`--> firing --false--> resolved (then gone)
                                 pending --false-----------> inactive (it never fired: nobody is told)

An alert is one rule and one label set; its fingerprint is a hash of its labels, so an edge
keeps the same alert across evaluations, restarts and a change of evaluator. A condition that
is false and a series that is no longer there (an edge with no traffic in the window) are the
same thing. A rule whose query failed (``None`` instead of observations) keeps its alerts as
they are: an outage of ClickHouse resolves nothing. Nor does stale input: an observation of
a series whose input is not fresh (``held``, from :mod:`collector.alertinputs`) keeps its
alert as it is and starts none; the rule ``telemetry_stale`` says why instead. Alerts of a rule that is no longer in the
rules file are resolved. Each transition becomes one row of the ``alerts`` table; those into
firing and resolved are also notified. Queries carry only numbers and the database name; the
rules' filters are applied here, to the rows, so a rules file never reaches SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from collector import alertrules as r
from collector.alertinputs import held_back, stale_series
from collector.grouplag import LagSample, status
from collector.histogram import quantile
from meshcore.freshness import FLOWS, GROUPS, LIMITS, LINKS, Assessment, Limits, Reading, judge
from meshcore.topic import matches
from meshcore.viewstate import DOWN, FAILING, clock_refusal, link_view

PENDING, FIRING, RESOLVED, INACTIVE = "pending", "firing", "resolved", "inactive"
STATES = (PENDING, FIRING, RESOLVED, INACTIVE)
SECOND_TABLE_MAX_S = 3600
"""Edge rules looking back at most this far read edge_second (kept 2 h); longer ones the minute tables."""
SETTLE_S = 2
"""The latest seconds are still being inserted: per-second windows end this far back."""
ALERT_COLUMNS = [
    "ts", "alertname", "fingerprint", "state", "severity", "labels", "value", "summary", "description",
    "starts_at", "ends_at",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Observation:
    """One series of a rule at one evaluation: its labels (beyond alertname and severity), value, verdict."""

    labels: Mapping[str, str]
    value: float
    active: bool
    fields: Mapping[str, Any] = field(default_factory=dict)
    """More template fields (``status``, ``state``, ``rate``, ...)."""
    held: str = ""
    """Why the input of this series is not fresh enough to decide on ('' when it is): the alert is held back."""


@dataclass(frozen=True, slots=True)
class Alert:
    """A pending or firing alert, as kept between evaluations (JSON in Redis)."""

    fingerprint: str
    alertname: str
    severity: str
    labels: Mapping[str, str]
    state: str
    active_at: float
    fired_at: float
    value: float
    summary: str
    description: str
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Alert:
        """The alert in ``data``; ValueError when it is not one."""
        try:
            labels = {str(k): str(v) for k, v in dict(data["labels"]).items()}
            alert = cls(
                str(data["fingerprint"]), str(data["alertname"]), str(data["severity"]), labels, str(data["state"]),
                float(data["active_at"]), float(data["fired_at"]), float(data["value"]), str(data["summary"]),
                str(data["description"]), float(data["updated_at"]),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an alert state: {exc}") from None
        if alert.state not in (PENDING, FIRING):
            raise ValueError(f"not an alert state: state {alert.state!r}")
        return alert

    @property
    def since(self) -> float:
        """When it started firing, or (while pending) when its condition became true."""
        return self.fired_at if self.state == FIRING else self.active_at


@dataclass(frozen=True, slots=True)
class Transition:
    """An alert entering ``state`` at ``ts``: one row of the ``alerts`` table."""

    alert: Alert
    state: str
    ts: float

    @property
    def starts_at(self) -> float:
        return self.alert.fired_at or self.alert.active_at

    @property
    def ends_at(self) -> float:
        return self.ts if self.state in (RESOLVED, INACTIVE) else 0.0


@dataclass(frozen=True, slots=True)
class Evaluation:
    alerts: dict[str, Alert]
    """Pending and firing alerts after the evaluation, by fingerprint."""
    transitions: list[Transition]


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable hash of the labels (16 hex digits, as Alertmanager's)."""
    text = "\x00".join(f"{k}\x01{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---- the questions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeSpan:
    table: str
    start: int
    mid: int
    end: int
    window_s: int
    per_topic: bool


def edge_span(rule: r.Rule, now_s: float) -> EdgeSpan:
    """The table and time range an edge rule reads: [start, mid) is the window before, [mid, end) the window."""
    windows = 2 if rule.kind == r.EDGE_RATE_DROP else 1
    per_topic = rule.by_topic or bool(rule.topic)
    if rule.window_s * windows + SETTLE_S <= SECOND_TABLE_MAX_S:
        window, end, table = max(1, round(rule.window_s)), int(now_s) - SETTLE_S, "edge_second"
    else:
        window, end = max(60, round(rule.window_s / 60) * 60), int(now_s) // 60 * 60
        table = "edge_minute" if per_topic else "pair_minute"
    return EdgeSpan(table, end - windows * window, end - window, end, window, per_topic)


def rule_sql(rule: r.Rule, db: str, now_s: float) -> str:
    """The query whose rows ``observe`` reads for ``rule`` at ``now_s``."""
    if rule.kind in r.EDGE_KINDS:
        sp = edge_span(rule, now_s)
        now, topic = f"bucket >= toDateTime({sp.mid})", "topic" if sp.per_topic else "''"
        return (
            f"SELECT src_region, dst_region, {topic} AS t, sumIf(entered, {now}), "
            f"sumIf(entered, NOT ({now})), sumMapIf(status_counts, {now}), sumMapIf(e2e_hist, {now}) "
            f"FROM `{db}`.`{sp.table}` "
            f"WHERE bucket >= toDateTime({sp.start}) AND bucket < toDateTime({sp.end}) "
            f"GROUP BY src_region, dst_region, t"
        )
    if rule.kind == r.LINK_DOWN:
        return (
            f"SELECT src_region, dst_region, argMax(state, ts), toUnixTimestamp64Milli(max(ts)), "
            f"argMax(clock_offset_ms, ts), argMax(peer_skew_s, ts) FROM `{db}`.`links` "
            f"WHERE ts >= toDateTime({int(now_s - rule.window_s)}) AND ts <= toDateTime({int(now_s) + 1}) "
            f"GROUP BY src_region, dst_region"
        )
    if rule.kind == r.REJECTIONS:
        end = int(now_s) // 60 * 60
        start = end - _minutes(rule) * 60
        return (
            f"SELECT src_region, topic, principal, status, sum(events) FROM `{db}`.`refusal_minute` "
            f"WHERE bucket >= toDateTime({start}) AND bucket < toDateTime({end}) "
            f"GROUP BY src_region, topic, principal, status"
        )
    if rule.kind == r.TELEMETRY_STALE:
        return "SELECT 1"  # judged on the evaluation's freshness alone (collector.alertinputs)
    return (
        f"SELECT region, `group`, toUnixTimestamp64Milli(ts), acked, pending + lag, oldest_age_s, consumers, probe "
        f"FROM `{db}`.`group_lag` WHERE ts >= toDateTime({int(now_s - rule.window_s)}) "
        f"AND ts <= toDateTime({int(now_s) + 1}) "
        f"ORDER BY region, `group`, ts DESC LIMIT {rule.samples} BY region, `group`"
    )


def _minutes(rule: r.Rule) -> int:
    return max(1, round(rule.window_s / 60))


def observe(
    rule: r.Rule, rows: Sequence[Sequence[Any]], now_s: float, fresh: Assessment | None = None
) -> list[Observation]:
    """What the rows of ``rule_sql`` say: one observation per series that passes the rule's filters.

    ``fresh``: how fresh each source of each region is (``collector.alertinputs``); the series whose
    input is not are held back. None: every input is taken as fresh.
    """
    if rule.kind == r.TELEMETRY_STALE:
        return [] if fresh is None else [Observation(*series) for series in stale_series(rule, fresh)]
    if rule.kind in r.EDGE_KINDS:
        out = _observe_edges(rule, rows, now_s)
    elif rule.kind == r.LINK_DOWN:
        return _observe_links(rule, rows, now_s)  # each link's own samples say how fresh it is
    elif rule.kind == r.REJECTIONS:
        out = _observe_rejections(rule, rows)
    else:
        return _observe_groups(rule, rows, now_s)  # likewise each group's
    if fresh is None:
        return out
    return [replace(o, held=held_back(fresh, FLOWS, _regions(o.labels))) for o in out]


def _regions(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels[k] for k in ("src", "dst", "region") if labels.get(k))


def error_pct(entered: int, errors: int) -> float:
    """Errors as a share of what entered the edge (errors with no events count as 100 %), as on the map."""
    if entered <= 0:
        return 100.0 if errors else 0.0
    return min(100.0, 100.0 * errors / entered)


def _observe_edges(rule: r.Rule, rows: Sequence[Sequence[Any]], now_s: float) -> list[Observation]:
    sp = edge_span(rule, now_s)
    sums: dict[tuple[str, str, str], list[Any]] = {}
    failed = set(rule.statuses) if rule.kind == r.EDGE_ERROR_PCT else set()
    for src, dst, topic, entered, before, statuses, hist in rows:
        if (rule.src and src != rule.src) or (rule.dst and dst != rule.dst):
            continue
        if rule.topic and not matches(rule.topic, topic):
            continue
        errors = sum(int(n) for status, n in (statuses or {}).items() if status in failed)
        acc = sums.setdefault((src, dst, topic if rule.by_topic else ""), [0, 0, 0, {}])
        acc[0], acc[1], acc[2] = acc[0] + int(entered), acc[1] + int(before), acc[2] + errors
        for bucket, count in (hist or {}).items():
            acc[3][int(bucket)] = acc[3].get(int(bucket), 0) + int(count)
    out = []
    for (src, dst, topic), (entered, before, errors, hist) in sorted(sums.items()):
        labels = {"src": src, "dst": dst, **({"topic": topic} if rule.by_topic else {})}
        if rule.kind == r.EDGE_ERROR_PCT:
            pct = error_pct(entered, errors)
            out.append(Observation(labels, pct, entered + errors >= rule.min_events and pct >= rule.threshold))
        elif rule.kind == r.EDGE_P99_LAG_MS:
            p99 = quantile(hist, 0.99)
            if p99 is not None:
                active = sum(hist.values()) >= rule.min_events and p99 >= rule.threshold
                out.append(Observation(labels, p99, active))
        else:
            rate, previous = entered / sp.window_s, before / sp.window_s
            drop = 100.0 * (1 - rate / previous) if previous > 0 else 0.0
            active = previous >= rule.min_rate and drop > rule.threshold
            out.append(Observation(labels, drop, active, {"rate": rate, "previous_rate": previous}))
    return out


def _observe_links(rule: r.Rule, rows: Sequence[Sequence[Any]], now_s: float) -> list[Observation]:
    """A link is down (or refused for its clock) by the view's own verdict; one whose latest sample is older
    than ``stale`` says nothing (its relay cannot report) and is held back."""
    limits = {LINKS: Limits(rule.stale_s, rule.stale_s, LIMITS[LINKS].name)}
    out = []
    for src, dst, state, last_ms, offset_ms, skew_s in sorted(rows, key=lambda row: (row[0], row[1])):
        if (rule.src and src != rule.src) or (rule.dst and dst != rule.dst):
            continue
        fresh = judge(Reading(LINKS, src, int(last_ms) / 1000), now_s, limits)
        clock = clock_refusal(float(offset_ms) if skew_s else None, float(skew_s), dst)
        verdict = link_view(str(state), fresh, clock)
        age_s = round(fresh.age_s or 0.0, 3)
        fields = {"state": verdict.state, "cause": verdict.cause or str(state)}
        active = verdict.state in (DOWN, FAILING)
        out.append(Observation({"src": src, "dst": dst}, age_s, active, fields, "" if fresh.trusted else fresh.says))
    return out


def _observe_rejections(rule: r.Rule, rows: Sequence[Sequence[Any]]) -> list[Observation]:
    sums: dict[tuple[tuple[str, str], ...], int] = {}
    for region, topic, principal, refusal, events in rows:
        if refusal not in rule.statuses or (rule.region and region != rule.region):
            continue
        if (rule.principal and principal != rule.principal) or (rule.topic and not matches(rule.topic, topic)):
            continue
        every = {"region": region, "topic": topic, "principal": principal, "status": refusal}
        key = tuple((name, every[name]) for name in rule.by)
        sums[key] = sums.get(key, 0) + int(events)
    out = []
    for key, events in sorted(sums.items()):
        per_minute = events / _minutes(rule)
        out.append(Observation(dict(key), per_minute, per_minute >= rule.threshold))
    return out


def _observe_groups(rule: r.Rule, rows: Sequence[Sequence[Any]], now_s: float) -> list[Observation]:
    """Probe groups never alert; a group whose latest sample is stale (its relay cannot report) is held back."""
    by_group: dict[tuple[str, str], list[LagSample]] = {}
    for region, group, ts_ms, acked, backlog, oldest_age_s, consumers, probe in rows:
        if (rule.region and region != rule.region) or (rule.group and group != rule.group) or probe:
            continue
        sample = LagSample(int(ts_ms) / 1000, int(acked), int(backlog), float(oldest_age_s), int(consumers))
        by_group.setdefault((region, group), []).append(sample)
    out = []
    for (region, group), samples in sorted(by_group.items()):
        samples.sort(key=lambda s: s.ts)
        verdict = status(samples[-rule.samples :], min_samples=rule.samples)
        backlog = float(samples[-1].backlog)
        fresh = judge(Reading(GROUPS, region, samples[-1].ts), now_s)
        held = "" if fresh.trusted else fresh.says
        out.append(
            Observation(
                {"region": region, "group": group}, backlog, verdict in rule.statuses, {"status": verdict}, held
            )
        )
    return out


# ---- the state machine -------------------------------------------------------------------------


def evaluate(
    rules: Sequence[r.Rule],
    observations: Mapping[str, Sequence[Observation] | None],
    previous: Mapping[str, Alert],
    now_s: float,
) -> Evaluation:
    """The alerts after one evaluation, and the transitions that led there.

    ``observations`` by rule id; a rule missing from it, or mapped to None, keeps its alerts.
    """
    ids = {rule.id for rule in rules}
    alerts: dict[str, Alert] = {}
    transitions = [_end(a, None, now_s) for a in previous.values() if a.alertname not in ids]
    for rule in rules:
        mine = {fp: a for fp, a in previous.items() if a.alertname == rule.id}
        seen = observations.get(rule.id)
        if seen is None:
            alerts.update(mine)
            continue
        inactive: dict[str, Observation] = {}
        for obs in seen:
            labels = {**obs.labels, "alertname": rule.id, "severity": rule.severity}
            fp = fingerprint(labels)
            if fp in alerts:
                continue
            if obs.held:  # its input is stale: the alert, if any, stays as it was; none starts
                if fp in mine:
                    alerts[fp] = mine[fp]
                continue
            if not obs.active:
                inactive[fp] = obs
                continue
            values = {
                **labels, **obs.fields, "value": obs.value, "threshold": rule.threshold,
                "window": rule.window_text, "for": rule.for_text,
            }  # fmt: skip
            summary, description = r.render(rule.summary, values), r.render(rule.description, values)
            was = mine.get(fp)
            if was is None:
                firing = rule.for_s <= 0
                alert = Alert(
                    fp, rule.id, rule.severity, labels, FIRING if firing else PENDING, now_s,
                    now_s if firing else 0.0, obs.value, summary, description, now_s,
                )  # fmt: skip
                transitions.append(Transition(alert, alert.state, now_s))
            else:
                alert = replace(was, value=obs.value, summary=summary, description=description, updated_at=now_s)
                if was.state == PENDING and now_s - was.active_at >= rule.for_s:
                    alert = replace(alert, state=FIRING, fired_at=now_s)
                    transitions.append(Transition(alert, FIRING, now_s))
            alerts[fp] = alert
        for fp, was in mine.items():
            if fp not in alerts:
                transitions.append(_end(was, inactive.get(fp), now_s))
    return Evaluation(alerts, transitions)


def _end(alert: Alert, obs: Observation | None, now_s: float) -> Transition:
    value = obs.value if obs is not None else alert.value
    ended = replace(alert, value=value, updated_at=now_s)
    return Transition(ended, RESOLVED if alert.state == FIRING else INACTIVE, now_s)


def alert_rows(transitions: Sequence[Transition]) -> list[list[Any]]:
    """Rows for the ``alerts`` table (ALERT_COLUMNS; times in milliseconds)."""
    return [
        [
            round(t.ts * 1000), t.alert.alertname, t.alert.fingerprint, t.state, t.alert.severity, dict(t.alert.labels),
            float(t.alert.value), t.alert.summary, t.alert.description, round(t.starts_at * 1000),
            round(t.ends_at * 1000),
        ]
        for t in transitions
    ]  # fmt: skip


# ---- what the dashboard reads --------------------------------------------------------------------

SEVERITY_RANK = {severity: i for i, severity in enumerate(r.SEVERITIES)}


def alert_view(alert: Alert) -> dict[str, Any]:
    """One current alert for the API: labels, value, state and since (Unix seconds)."""
    return {
        "fingerprint": alert.fingerprint,
        "alertname": alert.alertname,
        "severity": alert.severity,
        "state": alert.state,
        "labels": dict(alert.labels),
        "value": alert.value,
        "since": alert.since,
        "active_at": alert.active_at,
        "summary": alert.summary,
        "description": alert.description,
        "updated_at": alert.updated_at,
    }


def order(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Firing before pending, then the most severe, then the oldest first."""
    return sorted(views, key=lambda v: (v["state"] != FIRING, -SEVERITY_RANK.get(v["severity"], 0), v["since"]))


def badges(views: Sequence[Mapping[str, Any]], firing_only: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Badges for the map: per edge (src, dst) and per region, the worst severity and how many alerts.

    Edge and link alerts badge their edge (a region's own src == dst edge badges the region);
    rejection and group alerts badge their region.
    """
    edges: dict[tuple[str, str], dict[str, Any]] = {}
    regions: dict[str, dict[str, Any]] = {}
    for view in views:
        if firing_only and view["state"] != FIRING:
            continue
        labels = view["labels"]
        src, dst, region = labels.get("src", ""), labels.get("dst", ""), labels.get("region", "")
        if src and dst and src != dst:
            badge = edges.setdefault((src, dst), {"src": src, "dst": dst, "severity": "info", "count": 0})
        elif src or region:
            rid = src or region
            badge = regions.setdefault(rid, {"region": rid, "severity": "info", "count": 0})
        else:
            continue
        badge["count"] += 1
        if SEVERITY_RANK.get(view["severity"], 0) > SEVERITY_RANK[badge["severity"]]:
            badge["severity"] = view["severity"]
    return {"edges": list(edges.values()), "regions": list(regions.values())}
