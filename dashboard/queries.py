"""The map's questions as SQL, and their answers shaped for the API, with no I/O.

Short windows (up to 15 minutes) read ``edge_second``; longer ones read the
per-minute tables (``pair_minute`` for the whole map, ``edge_minute`` for one
edge). Percentiles come from the merged log-scale histograms.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from collector.histogram import quantile
from dashboard.health import Thresholds, error_pct, health
from meshcore.flowrecord import FIELDS

WINDOWS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
SECOND_TABLE_MAX_S = 900
SERIES_POINTS = 60
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
SAMPLE_LIMIT = 20


class BadRequest(ValueError):
    """A query parameter the API cannot use; the message says which values are allowed."""


def parse_window(text: str | None) -> int:
    if text is None or text == "":
        return WINDOWS["5m"]
    if text not in WINDOWS:
        raise BadRequest(f"window must be one of {', '.join(WINDOWS)}")
    return WINDOWS[text]


@dataclass(frozen=True)
class Span:
    """The time range a window covers, aligned to its table's bucket."""

    start: int
    end: int
    bucket_s: int

    @property
    def seconds(self) -> int:
        return max(1, self.end - self.start)


def span(window_s: int, now_s: float, max_bucket_s: int = 3600) -> Span:
    """The window's range, in per-second buckets up to 15 minutes, per-minute up to an hour, else hourly."""
    bucket_s = 1 if window_s <= SECOND_TABLE_MAX_S else 60 if window_s <= 3600 else 3600
    bucket_s = min(bucket_s, max_bucket_s)
    end = int(now_s)
    start = (end - window_s) // bucket_s * bucket_s
    return Span(start, end, bucket_s)


_VALUES = (
    "sum(entered), sum(delivered), sum(errors), sumMap(status_counts), sum(bytes), sumMap(hop_hist), sumMap(e2e_hist)"
)


PAIR_TABLES = {1: "edge_second", 60: "pair_minute", 3600: "pair_hour"}
EDGE_TABLES = {1: "edge_second", 60: "edge_minute"}


def topology_sql(db: str, sp: Span) -> str:
    table = PAIR_TABLES[sp.bucket_s]
    return (
        f"SELECT src_region, dst_region, {_VALUES} FROM `{db}`.`{table}` "
        f"WHERE bucket >= toDateTime({sp.start}) GROUP BY src_region, dst_region ORDER BY src_region, dst_region"
    )


def regions_sql(db: str) -> str:
    return (
        f"SELECT id, any(provider), any(lat), any(lon), any(city), toUnixTimestamp(min(first_seen)), "
        f"toUnixTimestamp(max(last_seen)) FROM `{db}`.`regions` GROUP BY id ORDER BY id"
    )


def links_sql(db: str) -> str:
    return (
        f"SELECT src_region, dst_region, argMax(state, ts), argMax(rtt_ms, ts), argMax(queue_depth, ts), "
        f"argMax(reconnects, ts), toUnixTimestamp(max(ts)) FROM `{db}`.`links` "
        f"WHERE ts >= now() - INTERVAL 1 HOUR GROUP BY src_region, dst_region ORDER BY src_region, dst_region"
    )


def _edge_stats(row: list[Any] | tuple[Any, ...], seconds: int, t: Thresholds) -> dict[str, Any]:
    entered, delivered, errors, by_status, nbytes, hop_hist, e2e_hist = row
    e2e_p99 = quantile(e2e_hist, 0.99)
    return {
        "events": int(entered),
        "events_per_s": round(entered / seconds, 3),
        "delivered": int(delivered),
        "errors": int(errors),
        "error_pct": round(error_pct(int(entered), int(errors)), 3),
        "errors_by_status": {k: int(v) for k, v in sorted(by_status.items())},
        "bytes_per_s": round(nbytes / seconds, 1),
        "hop_p50": _round(quantile(hop_hist, 0.5)),
        "hop_p99": _round(quantile(hop_hist, 0.99)),
        "e2e_p50": _round(quantile(e2e_hist, 0.5)),
        "e2e_p99": _round(e2e_p99),
        "health": health(int(entered), int(errors), e2e_p99, t),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def shape_topology(
    edge_rows: list[Any],
    region_rows: list[Any],
    link_rows: list[Any],
    sp: Span,
    now_s: float,
    t: Thresholds,
    link_stale_s: float,
) -> dict[str, Any]:
    regions: dict[str, dict[str, Any]] = {}
    for rid, provider, lat, lon, city, first_seen, last_seen in region_rows:
        regions[rid] = {
            "id": rid,
            "provider": provider,
            "lat": lat,
            "lon": lon,
            "city": city,
            "first_seen": first_seen,
            "last_seen": last_seen,
            "events": 0,
            "events_per_s": 0.0,
            "delivered": 0,
            "errors": 0,
            "errors_by_status": {},
        }
    edges = []
    for row in edge_rows:
        src, dst = row[0], row[1]
        stats = _edge_stats(row[2:], sp.seconds, t)
        if src == dst:
            region = regions.setdefault(
                src,
                {
                    "id": src,
                    "provider": src.split(":")[0],
                    "lat": None,
                    "lon": None,
                    "city": src,
                    "first_seen": None,
                    "last_seen": None,
                },
            )
            region.update(
                events=stats["events"],
                events_per_s=stats["events_per_s"],
                delivered=stats["delivered"],
                errors=stats["errors"],
                errors_by_status=stats["errors_by_status"],
            )
        else:
            edges.append({"src": src, "dst": dst, **stats})
    links = []
    for src, dst, state, rtt_ms, depth, reconnects, last in link_rows:
        stale = now_s - last > link_stale_s
        links.append(
            {
                "src": src,
                "dst": dst,
                "state": "down" if stale and state == "up" else state,
                "reported_state": state,
                "stale": stale,
                "rtt_ms": round(float(rtt_ms), 3),
                "queue_depth": int(depth),
                "reconnects": int(reconnects),
                "last_sample": last,
            }
        )
    return {
        "window": window_name_or_custom(sp),
        "from": sp.start,
        "to": sp.end,
        "regions": list(regions.values()),
        "edges": edges,
        "links": links,
        "thresholds": asdict(t),
    }


def window_name_or_custom(sp: Span) -> str:
    for name, seconds in WINDOWS.items():
        if abs((sp.end - sp.start) - seconds) < sp.bucket_s:
            return name
    return f"{sp.end - sp.start}s"


def series_step(sp: Span) -> int:
    raw = max(sp.bucket_s, (sp.end - sp.start) // SERIES_POINTS)
    return (raw + sp.bucket_s - 1) // sp.bucket_s * sp.bucket_s


def edge_series_sql(db: str, sp: Span) -> str:
    """One edge's series; ``sp`` comes from ``span(..., max_bucket_s=60)``."""
    table = "edge_second" if sp.bucket_s == 1 else "pair_minute"
    step = series_step(sp)
    return (
        f"SELECT intDiv(toUnixTimestamp(bucket), {step}) * {step} AS t, sum(entered), sum(errors), "
        f"sumMap(e2e_hist) FROM `{db}`.`{table}` WHERE src_region = %(src)s AND dst_region = %(dst)s "
        f"AND bucket >= toDateTime({sp.start}) GROUP BY t ORDER BY t"
    )


def edge_topics_sql(db: str, sp: Span) -> str:
    table = EDGE_TABLES[sp.bucket_s]
    return (
        f"SELECT topic, {_VALUES} FROM `{db}`.`{table}` WHERE src_region = %(src)s AND dst_region = %(dst)s "
        f"AND bucket >= toDateTime({sp.start}) GROUP BY topic ORDER BY sum(entered) DESC, topic"
    )


SAMPLE_WINDOW_S = 900


def edge_samples_sql(db: str, sp: Span) -> str:
    """The most recent sampled events of the edge, from the last 15 minutes of the window at most."""
    since = max(sp.start, sp.end - SAMPLE_WINDOW_S)
    return (
        f"SELECT toUnixTimestamp64Micro(ts), event_id, trace_id, topic, kind, status, hop_ms, e2e_ms "
        f"FROM `{db}`.`flows` WHERE src_region = %(src)s AND dst_region = %(dst)s AND ts >= toDateTime({since}) "
        f"AND kind IN ('deliver', 'drop') ORDER BY ts DESC LIMIT {SAMPLE_LIMIT}"
    )


def shape_edge(
    src: str, dst: str, series_rows: list[Any], topic_rows: list[Any], sample_rows: list[Any], sp: Span, t: Thresholds
) -> dict[str, Any]:
    step = series_step(sp)
    by_t = {int(r[0]): r for r in series_rows}
    points = []
    first = sp.start // step * step
    for ts in range(first, sp.end + 1, step):
        r = by_t.get(ts)
        entered, errors, hist = (int(r[1]), int(r[2]), r[3]) if r else (0, 0, {})
        points.append(
            {
                "t": ts,
                "events_per_s": round(entered / step, 3),
                "e2e_p99": _round(quantile(hist, 0.99)),
                "error_pct": round(error_pct(entered, errors), 3),
            }
        )
    topics = [{"topic": r[0], **_edge_stats(r[1:], sp.seconds, t)} for r in topic_rows]
    samples = [
        {
            "ts": r[0],
            "event_id": r[1],
            "trace_id": r[2],
            "topic": r[3],
            "kind": r[4],
            "status": r[5],
            "hop_ms": round(float(r[6]), 3),
            "e2e_ms": round(float(r[7]), 3),
        }
        for r in sample_rows
    ]
    totals = {"events": sum(x["events"] for x in topics), "errors": sum(x["errors"] for x in topics)}
    return {
        "src": src,
        "dst": dst,
        "window": window_name_or_custom(sp),
        "from": sp.start,
        "to": sp.end,
        "step_s": step,
        "series": points,
        "topics": topics,
        "samples": samples,
        **totals,
    }


TRACE_COLUMNS = tuple(f for f in FIELDS if f != "trace_id")  # every field but the one asked for


def trace_range_sql(db: str) -> str:
    """When and on which edges a trace happened, from the trace index (a binary search on trace_id)."""
    return (
        f"SELECT toUnixTimestamp64Micro(min(first_ts)), toUnixTimestamp64Micro(max(last_ts)), "
        f"groupUniqArrayArray(edges), count() FROM `{db}`.`trace_index` WHERE trace_id = %(trace_id)s"
    )


def trace_sql(db: str, found: tuple[int, int, list[tuple[str, str, str]]] | None = None) -> str:
    """The trace's records.

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
        f"WHERE trace_id = %(trace_id)s{where} ORDER BY ts LIMIT 5000"
    )


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def shape_trace(trace_id: str, rows: list[Any]) -> dict[str, Any]:
    """The hops of a trace in path order: each hop after its parent, siblings by time."""
    hops = [dict(zip(TRACE_COLUMNS, r, strict=True)) for r in rows]
    children: dict[str, list[dict[str, Any]]] = {}
    spans = {h["span_id"] for h in hops}
    roots = []
    for h in hops:
        h["hop_ms"] = round(float(h["hop_ms"]), 3)
        h["e2e_ms"] = round(float(h["e2e_ms"]), 3)
        if h["parent_span_id"] in spans and h["parent_span_id"] != h["span_id"]:
            children.setdefault(h["parent_span_id"], []).append(h)
        else:
            roots.append(h)
    ordered: list[dict[str, Any]] = []
    stack = [(h, 0) for h in sorted(roots, key=lambda h: h["ts"], reverse=True)]
    seen: set[int] = set()
    while stack:
        h, depth = stack.pop()
        if id(h) in seen:
            continue
        seen.add(id(h))
        h["depth"] = depth
        ordered.append(h)
        for child in sorted(children.get(h["span_id"], []), key=lambda c: c["ts"], reverse=True):
            stack.append((child, depth + 1))
    return {"trace_id": trace_id, "hops": ordered, "events": sorted({h["event_id"] for h in hops})}
