"""The map's questions as SQL, with no I/O.

Each builder returns the statement, and where a value came from the caller, the
parameters it binds: only the database name (from the configuration), table names
from :mod:`dashboard.timerange` and integers are written into a statement; region
ids, topics, trace and event ids travel as query parameters. Which table and which
buckets a window reads is :mod:`dashboard.timerange`'s decision. Percentiles come
from the merged log-scale histograms (``collector.histogram``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboard.params import Filters, topic_regex
from dashboard.timerange import EDGE_MINUTE, Span, bucket_filter, minute_range, range_filter
from meshcore.flowrecord import FIELDS

Sql = tuple[str, dict[str, Any]]

VALUES = (
    "sum(entered), sum(delivered), sum(errors), sumMap(status_counts), sum(bytes), sumMap(hop_hist), "
    "sumMap(e2e_hist), sum(lost), sumMap(via_counts)"
)
"""The aggregate columns every edge answer reads, in the order ``dashboard.views.edge_stats`` takes them."""
SAMPLE_LIMIT = 20
SAMPLE_WINDOW_S = 900
LINK_LOOKBACK_S = 3600
GROUP_STATUS_SAMPLES = 5
"""Latest samples a group's status and rates are judged on (``collector.grouplag``)."""
GROUP_LOOKBACK_S = 900
GROUP_SINCE_LOOKBACK_S = 86400
"""How far back the Lag view looks for the last time a group was empty or had a member."""
REFUSAL_LIMIT = 200
EDGE_REFUSAL_LIMIT = 100
SERIES_POINTS = 60
SEARCH_LOOKBACK_S = 7 * 86400
TRACE_COLUMNS = tuple(f for f in FIELDS if f != "trace_id")  # every field but the one asked for


def combine(parts: Sequence[Sql | str]) -> Sql:
    """Several queries as one statement: one round trip and one snapshot for a whole answer.

    The answer is one row holding, per query, the array of its rows as tuples. Parameters of the
    parts are merged; a name bound to two different values is a mistake here, not the caller's.
    """
    selects: list[str] = []
    params: dict[str, Any] = {}
    for part in parts:
        sql, bound = (part, {}) if isinstance(part, str) else part
        for name, value in bound.items():
            if params.setdefault(name, value) != value:
                raise ValueError(f"query parameter {name!r} bound to two values")
        selects.append(f"(SELECT groupArray(tuple(*)) FROM ({sql}))")
    return "SELECT " + ", ".join(selects), params


def _region_cond(column: str, f: Filters) -> str:
    conds = []
    if f.providers:
        conds.append(f"has(%(providers)s, splitByChar(':', toString({column}))[1])")
    if f.regions:
        conds.append(f"has(%(regions)s, {column})")
    return " AND ".join(conds)


def filter_sql(f: Filters, per_topic: bool) -> Sql:
    """`` AND ...`` for the filters (an edge is kept when either end is selected), and their parameters."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if f.narrows:
        conds.append(f"(({_region_cond('src_region', f)}) OR ({_region_cond('dst_region', f)}))")
        if f.providers:
            params["providers"] = list(f.providers)
        if f.regions:
            params["regions"] = list(f.regions)
    if f.topic is not None:
        if not per_topic:
            raise ValueError("a topic filter needs a table with topics")
        conds.append("match(toString(topic), %(topic_re)s)")
        params["topic_re"] = topic_regex(f.topic)
    return "".join(f" AND {c}" for c in conds), params


def _table(db: str, sp: Span) -> str:
    return f"`{db}`.`{sp.table}`"


def topology_sql(db: str, sp: Span, f: Filters) -> Sql:
    where, params = filter_sql(f, sp.per_topic)
    return (
        f"SELECT src_region, dst_region, {VALUES} FROM {_table(db, sp)} WHERE {bucket_filter(sp)}{where} "
        f"GROUP BY src_region, dst_region ORDER BY src_region, dst_region",
        params,
    )


def regions_sql(db: str) -> str:
    return (
        f"SELECT id, any(provider), any(lat), any(lon), any(city), toUnixTimestamp(min(first_seen)), "
        f"toUnixTimestamp(max(last_seen)) FROM `{db}`.`regions` GROUP BY id ORDER BY id"
    )


def links_sql(db: str, end_s: int, live: bool) -> str:
    """The newest sample of every link (src, dst) at ``end_s``: state, how it is secured, detour, governance, clock."""
    stop = None if live else end_s
    return (
        f"SELECT src_region, dst_region, argMax(state, ts), argMax(rtt_ms, ts), argMax(queue_depth, ts), "
        f"argMax(reconnects, ts), toUnixTimestamp64Milli(max(ts)) / 1000, argMax(security, ts), argMax(via, ts), "
        f"argMax(peer_gov, ts), argMax(gov, ts), argMax(clock_offset_ms, ts), argMax(peer_skew_s, ts) "
        f"FROM `{db}`.`links` "
        f"WHERE {range_filter(end_s - LINK_LOOKBACK_S, stop, 'ts')} "
        f"GROUP BY src_region, dst_region ORDER BY src_region, dst_region"
    )


def _where_region(f: Filters, column: str) -> Sql:
    """`` AND ...`` keeping rows whose ``column`` (one region) the provider and region filters select."""
    cond = _region_cond(column, f)
    params: dict[str, Any] = {}
    if f.providers:
        params["providers"] = list(f.providers)
    if f.regions:
        params["regions"] = list(f.regions)
    return (f" AND {cond}" if cond else ""), params


def group_latest_sql(db: str, end_s: int, live: bool, lookback_s: int, f: Filters) -> Sql:
    """The latest samples of every durable group seen in the ``lookback_s`` before ``end_s``, newest first."""
    where, params = _where_region(f, "region")
    stop = None if live else end_s
    return (
        f"SELECT region, `group`, toUnixTimestamp64Milli(ts), acked, pending + lag, oldest_age_s, consumers, "
        f"owner, patterns, pending, lag, probe FROM `{db}`.`group_lag` "
        f"WHERE {range_filter(end_s - lookback_s, stop, 'ts')}{where} "
        f"ORDER BY region, `group`, ts DESC LIMIT {GROUP_STATUS_SAMPLES} BY region, `group`",
        params,
    )


def group_since_sql(db: str, end_s: int, live: bool, f: Filters) -> Sql:
    """Per group, in milliseconds (0: none in ``GROUP_SINCE_LOOKBACK_S``): its newest sample with nothing
    waiting, its first sample, and its newest sample with a member, up to ``end_s``."""
    where, params = _where_region(f, "region")
    stop = None if live else end_s
    return (
        f"SELECT region, `group`, toUnixTimestamp64Milli(maxIf(ts, pending + lag = 0)), "
        f"toUnixTimestamp64Milli(min(ts)), toUnixTimestamp64Milli(maxIf(ts, consumers > 0)) "
        f"FROM `{db}`.`group_lag` WHERE {range_filter(end_s - GROUP_SINCE_LOOKBACK_S, stop, 'ts')}{where} "
        f"GROUP BY region, `group`",
        params,
    )


def series_step(sp: Span, points: int = SERIES_POINTS) -> int:
    raw = max(sp.bucket_s, (sp.end - sp.start) // points)
    return (raw + sp.bucket_s - 1) // sp.bucket_s * sp.bucket_s


def group_series_sql(db: str, sp: Span, step: int, f: Filters) -> Sql:
    """Each group's backlog over the window, the newest sample of each step."""
    where, params = _where_region(f, "region")
    return (
        f"SELECT region, `group`, intDiv(toUnixTimestamp(ts), {int(step)}) * {int(step)} AS t, "
        f"argMax(pending + lag, ts) FROM `{db}`.`group_lag` WHERE {bucket_filter(sp, 'ts')}{where} "
        f"GROUP BY region, `group`, t ORDER BY region, `group`, t",
        params,
    )


_EDGE = "src_region = %(src)s AND dst_region = %(dst)s"


def edge_series_sql(db: str, sp: Span, f: Filters) -> Sql:
    """One edge's series (bind ``src`` and ``dst``); ``sp`` from ``span(..., max_bucket_s=60)``."""
    step = series_step(sp)
    where, params = filter_sql(Filters(topic=f.topic), sp.per_topic)
    return (
        f"SELECT intDiv(toUnixTimestamp(bucket), {step}) * {step} AS t, sum(entered), sum(errors), "
        f"sumMap(e2e_hist), sum(lost) FROM {_table(db, sp)} WHERE {_EDGE} AND {bucket_filter(sp)}{where} "
        f"GROUP BY t ORDER BY t",
        params,
    )


def edge_topics_sql(db: str, sp: Span, f: Filters) -> Sql:
    """One edge's topics; ``sp`` must read a per-topic table."""
    where, params = filter_sql(Filters(topic=f.topic), True)
    return (
        f"SELECT topic, {VALUES} FROM {_table(db, sp)} WHERE {_EDGE} AND {bucket_filter(sp)}{where} "
        f"GROUP BY topic ORDER BY sum(entered) DESC, topic",
        params,
    )


def edge_samples_sql(db: str, sp: Span, f: Filters) -> Sql:
    """The most recent sampled events of the edge, from the last 15 minutes of the window at most."""
    since = max(sp.start, sp.end - SAMPLE_WINDOW_S)
    where, params = filter_sql(Filters(topic=f.topic), True)
    stop = sp.stop
    return (
        f"SELECT toUnixTimestamp64Micro(ts), event_id, trace_id, topic, kind, status, hop_ms, e2e_ms "
        f"FROM `{db}`.`flows` WHERE {_EDGE} AND {range_filter(since, stop, 'ts')}{where} "
        f"AND kind IN ('deliver', 'drop') ORDER BY ts DESC LIMIT {SAMPLE_LIMIT}",
        params,
    )


def edge_refusals_sql(db: str, sp: Span, f: Filters) -> Sql:
    """Refusals at the edge's source of the topics the edge carried (bind ``src``, ``dst``); ``sp`` per topic.

    Refusals are kept per source region and topic (``refusal_minute``), so an edge's are those of
    its topics at its source: for a policy denial ``ref`` is ``policy:<rule id>``, for a schema
    rejection the schema version.
    """
    where, params = filter_sql(Filters(topic=f.topic), True)
    start, stop = minute_range(sp)
    return (
        f"SELECT topic, principal, status, dataschema, sum(events) AS n FROM `{db}`.`refusal_minute` "
        f"WHERE src_region = %(src)s AND {range_filter(start, stop, 'bucket')}{where} AND topic IN "
        f"(SELECT DISTINCT topic FROM {_table(db, sp)} WHERE {_EDGE} AND {bucket_filter(sp)}) "
        f"GROUP BY topic, principal, status, dataschema ORDER BY n DESC, topic, principal, status "
        f"LIMIT {EDGE_REFUSAL_LIMIT}",
        params,
    )


def refusals_sql(db: str, sp: Span, f: Filters) -> Sql:
    """The top refusals over a window, by region, topic, principal, status and what refused."""
    start, stop = minute_range(sp)
    conds: list[str] = []
    params: dict[str, Any] = {}
    if f.topic is not None:
        conds.append("match(toString(topic), %(topic_re)s)")
        params["topic_re"] = topic_regex(f.topic)
    where, more = _where_region(f, "src_region")
    params.update(more)
    return (
        f"SELECT src_region, topic, principal, status, dataschema, sum(events) AS n FROM `{db}`.`refusal_minute` "
        f"WHERE {range_filter(start, stop, 'bucket')}{where}{''.join(f' AND {c}' for c in conds)} "
        f"GROUP BY src_region, topic, principal, status, dataschema "
        f"ORDER BY n DESC, src_region, topic, principal LIMIT {REFUSAL_LIMIT}",
        params,
    )


def timeline_sql(db: str, sp: Span, step: int, f: Filters) -> Sql:
    """Per step: events published (a region's own edge), events entering any edge, errors and losses."""
    where, params = filter_sql(f, sp.per_topic)
    return (
        f"SELECT intDiv(toUnixTimestamp(bucket), {int(step)}) * {int(step)} AS t, "
        f"sumIf(entered, src_region = dst_region), sum(entered), sum(errors), sum(lost) "
        f"FROM {_table(db, sp)} WHERE {bucket_filter(sp)}{where} GROUP BY t ORDER BY t",
        params,
    )


def known_topic_sql(db: str, now_s: float) -> str:
    """Whether ``q`` (bound) is a topic seen in the last week."""
    since = int(now_s) - SEARCH_LOOKBACK_S
    return (
        f"SELECT count() FROM (SELECT topic FROM `{db}`.`{EDGE_MINUTE}` "
        f"WHERE topic = %(q)s AND bucket >= toDateTime({since}) LIMIT 1)"
    )


def event_traces_sql(db: str, now_s: float) -> str:
    """The traces an event id (bound ``q``) took part in during the last week, oldest first."""
    since = int(now_s) - SEARCH_LOOKBACK_S
    return (
        f"SELECT trace_id, toUnixTimestamp64Micro(min(ts)), argMin(topic, ts), argMin(src_region, ts) "
        f"FROM `{db}`.`flows` WHERE event_id = %(q)s AND ts >= toDateTime({since}) "
        f"GROUP BY trace_id ORDER BY min(ts) LIMIT 20"
    )


def trace_range_sql(db: str) -> str:
    """When and on which edges a trace happened, from the trace index (a binary search on trace_id)."""
    return (
        f"SELECT toUnixTimestamp64Micro(min(first_ts)), toUnixTimestamp64Micro(max(last_ts)), "
        f"groupUniqArrayArray(edges), count() FROM `{db}`.`trace_index` WHERE trace_id = %(trace_id)s"
    )


def trace_sql(db: str, found: tuple[int, int, list[tuple[str, str, str]]] | None = None) -> Sql:
    """The trace's records (bind ``trace_id``).

    With its time range and edges known (``found``, from the trace index) only the granules of
    those primary-key prefixes in that range are read; without, the bloom filter on trace_id is
    all there is. Edge names come from our own index, and are quoted all the same.
    """
    where = ""
    if found is not None:
        first_us, last_us, edges = found
        keys = ", ".join(f"({_quote(a)}, {_quote(b)}, {_quote(c)})" for a, b, c in edges)
        where = (
            f" AND (src_region, dst_region, topic) IN ({keys})"
            f" AND ts >= fromUnixTimestamp64Micro({int(first_us) - 1_000_000})"
            f" AND ts <= fromUnixTimestamp64Micro({int(last_us) + 1_000_000})"
        )
    return (
        f"SELECT toUnixTimestamp64Micro(ts), {', '.join(TRACE_COLUMNS[1:])} FROM `{db}`.`flows` "
        f"WHERE trace_id = %(trace_id)s{where} ORDER BY ts LIMIT 5000",
        {},
    )


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
