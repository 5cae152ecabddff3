"""The answers of the map API, shaped from query rows, with no I/O.

Each ``shape_*`` takes the rows of its builders in :mod:`dashboard.queries` (and what
the relays report, already parsed) and returns the JSON-ready answer. An edge's
``lost`` counts events lost on it (gap ranges, expiries, backpressure, failed
deliveries, a link that was down), ``via`` its forwards whose next hop was another
region than its destination (a detour), ``denied`` and ``rejected`` its policy and
schema refusals. Groups are shaped in :mod:`dashboard.groupview`.

Edges and links carry a ``state`` and its ``cause``, decided by ``meshcore.freshness``
from their figures, their link and how fresh what they are read from is: an edge's
``traffic`` is what its figures alone say. A region whose own figures cannot be vouched
for (``Assessment.region``) is ``stale``, with its ``freshness`` (since when, why), and so
is every edge that touches it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from collector.alerts import error_pct
from collector.histogram import quantile
from dashboard.groupview import group_brief
from dashboard.livemessage import link_shape
from dashboard.params import TIMELINE_WINDOWS, Filters
from dashboard.queries import TRACE_COLUMNS
from dashboard.timerange import Span
from meshcore.flowrecord import POLICY_DENIED, SCHEMA_REJECTED
from meshcore.freshness import FLOWS, UNKNOWN, Assessment, worst
from meshcore.viewstate import FAILING, STATES, Thresholds, Verdict, edge_view, loss_pct, traffic_view

Row = Sequence[Any]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def edge_stats(row: Row, seconds: int, t: Thresholds) -> dict[str, Any]:
    """One edge (or topic) from the aggregate columns of ``dashboard.queries.VALUES``."""
    entered, delivered, errors, by_status, nbytes, hop_hist, e2e_hist, lost, via = row
    e2e_p99 = quantile(e2e_hist, 0.99)
    statuses = {str(k): int(v) for k, v in sorted(by_status.items())}
    return {
        "events": int(entered),
        "events_per_s": round(entered / seconds, 3),
        "delivered": int(delivered),
        "errors": int(errors),
        "error_pct": round(error_pct(int(entered), int(errors)), 3),
        "errors_by_status": statuses,
        "bytes_per_s": round(nbytes / seconds, 1),
        "hop_p50": _round(quantile(hop_hist, 0.5)),
        "hop_p99": _round(quantile(hop_hist, 0.99)),
        "e2e_p50": _round(quantile(e2e_hist, 0.5)),
        "e2e_p99": _round(e2e_p99),
        "traffic": traffic_view(int(entered), int(lost), e2e_p99, t),
        "loss_pct": round(loss_pct(int(entered), int(lost)), 3),
        "lost": int(lost),
        "via": {str(k): int(v) for k, v in sorted(via.items())},
        "denied": statuses.get(POLICY_DENIED, 0),
        "rejected": statuses.get(SCHEMA_REJECTED, 0),
    }


def window_name(sp: Span) -> str:
    for name, seconds in TIMELINE_WINDOWS.items():
        if abs((sp.end - sp.start) - seconds) < sp.bucket_s:
            return name
    return f"{sp.end - sp.start}s"


# ---- the map -------------------------------------------------------------------------------------


def _region(rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "provider": rid.split(":")[0],
        "lat": None,
        "lon": None,
        "city": rid,
        "first_seen": None,
        "last_seen": None,
    }


@dataclass(frozen=True)
class MapRows:
    """What a map answer is made of: the rows of its queries, and the links the live feed holds now."""

    edges: Sequence[Row]
    regions: Sequence[Row]
    links: Sequence[Row]
    groups: Sequence[Row]
    live_links: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)


def _link(row: Row, reference_s: float) -> dict[str, Any]:
    src, dst, state, rtt_ms, depth, reconnects, last, security, via, peer_gov, gov, offset, skew = row
    out = link_shape(src, dst, state, float(last), reference_s, (float(offset), float(skew)))
    out.update(
        {
            "rtt_ms": round(float(rtt_ms), 3),
            "queue_depth": int(depth),
            "reconnects": int(reconnects),
            "security": security,
            "via": via,
            "gov": peer_gov,
            "local_gov": gov,
            "governance_mismatch": bool(state == "up" and peer_gov and gov and peer_gov != gov),
        }
    )
    return out


def _judged_again(link: Mapping[str, Any], reference_s: float) -> dict[str, Any]:
    """A link from the live feed judged again at ``reference_s``: its sample may have aged since it came."""
    sample = link.get("last_sample")
    clock = (float(link.get("clock_offset_ms") or 0.0), float(link.get("peer_skew_s") or 0.0))
    when = float(sample) if isinstance(sample, int | float) else None
    return {**link, **link_shape(str(link["src"]), str(link["dst"]), str(link["reported_state"]), when,
                                 reference_s, clock)}  # fmt: skip


def _links(rows: MapRows, reference_s: float, live: bool, fresh: Assessment) -> dict[tuple[str, str], dict[str, Any]]:
    """Every link at ``reference_s``: the history's newest sample, or the live feed's when it is newer;
    a link whose region's reports cannot be read (its store) is unknown with that cause."""
    out = {(r[0], r[1]): _link(r, reference_s) for r in rows.links}
    if live:
        for key, link in rows.live_links.items():
            known = out.get(key)
            if known is None or (link.get("last_sample") or 0) > (known.get("last_sample") or 0):
                out[key] = _judged_again(link, reference_s)
    for (src, _), link in out.items():
        cause = fresh.unreachable(src)
        if cause:
            link.update({"state": UNKNOWN, "cause": cause, "edge_state": None})
    return out


def shape_topology(
    rows: MapRows,
    sp: Span,
    filters: Filters,
    t: Thresholds,
    fresh: Assessment,
    badges: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The map: regions (own traffic, alerts, groups), edges between them, mesh links, and how fresh it all is.

    ``badges`` is ``collector.alerts.badges`` of the alerts firing now (None for a past window);
    ``fresh`` judges the sources as at the window's end. An edge whose link is down or refused is
    failing, with what is held for its destination, even when the window has no traffic on it.
    """
    edge_alerts = {(b["src"], b["dst"]): int(b["count"]) for b in (badges or {}).get("edges", [])}
    region_alerts = {b["region"]: int(b["count"]) for b in (badges or {}).get("regions", [])}
    known: dict[str, dict[str, Any]] = {}
    for rid, provider, lat, lon, city, first_seen, last_seen in rows.regions:
        known[rid] = {
            "id": rid,
            "provider": provider,
            "lat": lat,
            "lon": lon,
            "city": city,
            "first_seen": first_seen,
            "last_seen": last_seen,
        }
    reference = fresh.checked_at
    links = {k: v for k, v in _links(rows, reference, sp.live, fresh).items() if filters.keeps_edge(*k)}
    own: dict[str, dict[str, Any]] = {}
    stats_of: dict[tuple[str, str], dict[str, Any]] = {}
    for row in sorted(rows.edges, key=lambda r: (r[0], r[1])):
        src, dst = row[0], row[1]
        if not filters.keeps_edge(src, dst):
            continue
        stats = edge_stats(row[2:], sp.seconds, t)
        if src == dst:
            own[src] = stats
        else:
            stats_of[(src, dst)] = stats
    for key, shaped in links.items():  # a link down with events waiting is an edge, traffic or not
        if key not in stats_of and shaped["edge_state"] == FAILING and shaped["queue_depth"] > 0:
            stats_of[key] = edge_stats([0, 0, 0, {}, 0, {}, {}, 0, {}], sp.seconds, t)
    edges = []
    for (src, dst), stats in sorted(stats_of.items()):
        link = links.get((src, dst))
        verdict = edge_view(
            stats["traffic"],
            Verdict(link["state"], link["cause"]) if link else None,
            worst(fresh.vouch(src) + fresh.vouch(dst)) or fresh.of(src, FLOWS),
            int(link["queue_depth"]) if link else 0,
        )
        edges.append(
            {
                "src": src,
                "dst": dst,
                **stats,
                "state": verdict.state,
                "cause": verdict.cause,
                "held": int(link["queue_depth"]) if link else 0,
                "alerts": edge_alerts.get((src, dst), 0),
                "stale": fresh.region(src).stale or fresh.region(dst).stale,
            }
        )
    shown = {r for r in known if filters.keeps_region(r)} | set(own)
    shown |= {e["src"] for e in edges} | {e["dst"] for e in edges}
    groups = group_brief(rows.groups, fresh)
    regions = []
    for rid in sorted(shown):
        region = known.get(rid) or _region(rid)
        stats = own.get(rid, {})
        judged = fresh.region(rid)
        regions.append(
            {
                **region,
                "events": stats.get("events", 0),
                "events_per_s": stats.get("events_per_s", 0.0),
                "delivered": stats.get("delivered", 0),
                "errors": stats.get("errors", 0),
                "errors_by_status": stats.get("errors_by_status", {}),
                "lost": stats.get("lost", 0),
                "denied": stats.get("denied", 0),
                "rejected": stats.get("rejected", 0),
                "alerts": region_alerts.get(rid, 0),
                "groups": groups.get(rid, []),
                "stale": judged.stale,
                "freshness": judged.to_json(),
            }
        )
    return {
        "window": window_name(sp),
        "from": sp.start,
        "to": sp.end,
        "at": sp.end,
        "live": sp.live,
        "table": sp.table,
        "regions": regions,
        "edges": edges,
        "links": [links[k] for k in sorted(links)],
        "thresholds": asdict(t),
        "freshness": fresh.to_json(),
        "states": states_legend(),
    }


def states_legend() -> list[dict[str, str]]:
    """The view states, in legend order, as the page shows them (``meshcore.viewstate.STATES``)."""
    return [{"state": s.name, "label": s.label, "meaning": s.meaning} for s in STATES.values()]


# ---- the scrubber --------------------------------------------------------------------------------


def _steps(rows: Sequence[Row], sp: Span, step: int) -> tuple[range, dict[int, list[Any]]]:
    """The window's steps, and the rows by step with the numbers summed; a live window's newest
    rows (they arrived after its rounded end) count in its last step."""
    steps = range(sp.start // step * step, (sp.end - 1) // step * step + 1, step)
    by_t: dict[int, list[Any]] = {}
    for row in rows:
        ts = min(int(row[0]), steps[-1]) if steps else int(row[0])
        acc = by_t.get(ts)
        if acc is None:
            by_t[ts] = list(row[1:])
            continue
        for i, value in enumerate(row[1:]):
            if isinstance(value, Mapping):
                merged = dict(acc[i])
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
                acc[i] = merged
            else:
                acc[i] += value
    return steps, by_t


def shape_timeline(rows: Sequence[Row], sp: Span, step: int) -> dict[str, Any]:
    steps, by_t = _steps(rows, sp, step)
    points = []
    for ts in steps:
        published, entered, errors, lost = (int(v) for v in by_t.get(ts, (0, 0, 0, 0)))
        points.append(
            {
                "t": ts,
                "events_per_s": round(published / step, 3),
                "error_pct": round(error_pct(entered, errors), 3),
                "lost": lost,
            }
        )
    return {"window": window_name(sp), "from": sp.start, "to": sp.end, "step_s": step, "points": points}


# ---- one edge ------------------------------------------------------------------------------------


def shape_edge(
    src: str,
    dst: str,
    series_rows: Sequence[Row],
    topic_rows: Sequence[Row],
    sample_rows: Sequence[Row],
    refusal_rows: Sequence[Row],
    sp: Span,
    step: int,
    t: Thresholds,
) -> dict[str, Any]:
    steps, by_t = _steps(series_rows, sp, step)
    points = []
    for ts in steps:
        r = by_t.get(ts)
        entered, errors, hist, lost = (int(r[0]), int(r[1]), r[2], int(r[3])) if r else (0, 0, {}, 0)
        points.append(
            {
                "t": ts,
                "events_per_s": round(entered / step, 3),
                "e2e_p99": _round(quantile(hist, 0.99)),
                "error_pct": round(error_pct(entered, errors), 3),
                "lost": lost,
            }
        )
    topics = [
        {"topic": r[0], **edge_stats(r[1:], sp.seconds, t)} for r in sorted(topic_rows, key=lambda r: (-r[1], r[0]))
    ]
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
        for r in sorted(sample_rows, key=lambda r: -int(r[0]))
    ]
    refusals = [
        {"topic": topic, "principal": principal, "status": st, "ref": ref, "events": int(n)}
        for topic, principal, st, ref, n in sorted(refusal_rows, key=lambda r: (-int(r[4]), r[0], r[1], r[2]))
    ]
    totals = {k: sum(x[k] for x in topics) for k in ("events", "errors", "lost", "denied", "rejected")}
    return {
        "src": src,
        "dst": dst,
        "window": window_name(sp),
        "from": sp.start,
        "to": sp.end,
        "at": sp.end,
        "live": sp.live,
        "step_s": step,
        "series": points,
        "topics": topics,
        "samples": samples,
        "refusals": refusals,
        **totals,
    }


def shape_trace(trace_id: str, rows: Sequence[Row]) -> dict[str, Any]:
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
