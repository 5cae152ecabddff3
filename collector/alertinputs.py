"""Whether what the alert rules read is fresh enough to decide on, with no I/O.

An alert must not fire on input that is merely late: with the collector a quarter of
an hour behind, the last five minutes of every edge look empty ("rate fell by 100 %"),
and with a relay that cannot report, its links look as they were when it last could.
Each evaluation therefore judges its inputs first, per region, with the same rules as
the dashboard (``meshcore.freshness``):

    flows    the flow history in ClickHouse: the collectors' positions (``meshscope:freshness`` of
             every region's store, ``collector.position.RegionPositions``)
    links    each region's newest link sample in ClickHouse
    groups   each region's newest durable group sample in ClickHouse

A series whose input is not fresh is *held back*: its alert stays as it was, none
starts, none resolves. The ``telemetry_stale`` rule fires instead, once per source
and cause: one alert for a collector behind on the stream of every region, not one
per region and rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from collector.alertrules import Rule
from meshcore.freshness import (
    ALL,
    GROUPS,
    LINKS,
    STALE,
    Assessment,
    Freshness,
    LagReport,
    Reading,
    StoreCheck,
    assess,
    flows_reading,
    worst,
)

LOOKBACK_S = 3600
"""How far back the newest samples of a region are looked for; a region silent for longer is forgotten."""


def freshness_sql(db: str, now_s: float) -> str:
    """The newest link and group sample of every region in the last hour: rows (source, region, ms)."""
    since, until = int(now_s) - LOOKBACK_S, int(now_s) + 1
    return (
        f"SELECT 'links', src_region, toUnixTimestamp64Milli(max(ts)) FROM `{db}`.`links` "
        f"WHERE ts >= toDateTime({since}) AND ts <= toDateTime({until}) GROUP BY src_region "
        f"UNION ALL SELECT 'groups', region, toUnixTimestamp64Milli(max(ts)) FROM `{db}`.`group_lag` "
        f"WHERE ts >= toDateTime({since}) AND ts <= toDateTime({until}) GROUP BY region"
    )


def inputs(
    reports: Sequence[LagReport], rows: Iterable[Sequence[Any]], now_s: float, stores: Sequence[StoreCheck] = ()
) -> Assessment:
    """Every input of every region judged: the collectors' positions, the rows of ``freshness_sql``, and
    whether each region's store could be read (one that could not makes its regions unknown)."""
    newest: dict[tuple[str, str], float] = {}
    for source, region, ms in rows:
        if source in (LINKS, GROUPS) and isinstance(region, str):
            newest[(source, region)] = int(ms) / 1000
    named = {region for _, region in newest} | {r for report in reports for r in report.regions if r != ALL}
    named |= {r for store in stores for r in store.regions if r != ALL}
    everywhere = not named or any(ALL in report.regions for report in reports)
    readings = [flows_reading(reports, region, now_s) for region in sorted(named) + ([ALL] if everywhere else [])]
    readings += [Reading(source, region, ts, "no newer sample") for (source, region), ts in newest.items()]
    return assess(readings, now_s, stores)


def held_back(fresh: Assessment, source: str, regions: Sequence[str]) -> str:
    """Why ``source`` of ``regions`` is not fresh enough to decide on ('' when it is)."""
    judged = worst(fresh.of(region, source) for region in regions)
    return "" if judged is None or judged.trusted else judged.says


class StaleSeries(NamedTuple):
    """One series of a ``telemetry_stale`` rule: its labels, value (age in s), whether stale, template fields."""

    labels: dict[str, str]
    value: float
    active: bool
    fields: dict[str, str]


def stale_series(rule: Rule, fresh: Assessment) -> list[StaleSeries]:
    """Per source of the rule (``rule.statuses``): one series per cause that leaves regions stale.

    A cause shared by every region (one collector behind on the one stream of all) is one
    series with region ``*``; otherwise one per region. Sources never heard of (a region
    with no durable group has no group samples) are not stale, only unknown: they do not fire.
    """
    out = []
    for source in rule.statuses:
        judged = [
            by[source]
            for region, by in sorted(fresh.regions.items())
            if source in by and (not rule.region or region == rule.region)
        ]
        stale = [f for f in judged if f.level == STALE]
        causes = {f.cause for f in stale}
        if stale and len(stale) == len(judged) > 1 and len(causes) == 1:
            out.append(_series(source, ALL, worst(stale) or stale[0]))
            continue
        out += [_series(source, f.region, f) for f in stale]
    return out


def _series(source: str, region: str, f: Freshness) -> StaleSeries:
    name = {"flows": "flow records", "links": "link samples", "groups": "group samples"}.get(source, source)
    fields = {"cause": f.cause, "source": name, "region": "every region" if region == ALL else region}
    return StaleSeries({"source": source, "region": region}, round(f.age_s or 0.0, 3), True, fields)
