"""Which aggregate table answers a window, and which of its buckets, with no I/O.

The tables (``collector.schema``)::

    edge_second   per second, per topic    kept 2 hours only
    edge_minute   per minute, per topic    kept for months
    pair_minute   per minute, per pair     kept for months
    pair_hour     per hour, per pair       kept for months

A window is read from the finest table that holds all of it: windows up to 15 minutes
whose start is still within ``edge_second``'s reach read it; an older short window
(time travel, the replay) reads the per-minute tables, as does anything up to an hour;
longer windows read ``pair_hour``. A topic filter needs a table with topics, so it
reads ``edge_second`` or ``edge_minute``. Nothing here reads raw ``flows``.

A window ending now covers whole buckets from its start up to whatever has arrived
(the current bucket is partial); a window ending in the past ends at the last bucket
boundary at or before its ``end``, so it holds exactly that window's aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.schema import EDGE_SECOND_TTL_HOURS

SECOND_TABLE_MAX_S = 900
"""Windows up to this long are read per second (when ``edge_second`` still holds them)."""
SECOND_TABLE_REACH_S = EDGE_SECOND_TTL_HOURS * 3600 - 600
"""How far back ``edge_second`` is complete: its TTL less a margin for a query that runs late."""
MINUTE_MAX_S = 3600
"""Windows up to this long are read per minute; longer ones per hour (where a table has hours)."""

EDGE_SECOND, EDGE_MINUTE, PAIR_MINUTE, PAIR_HOUR = "edge_second", "edge_minute", "pair_minute", "pair_hour"
PER_TOPIC = frozenset((EDGE_SECOND, EDGE_MINUTE))


@dataclass(frozen=True, slots=True)
class Span:
    """The buckets a window reads: ``start`` <= bucket < ``stop`` (no upper bound while live)."""

    table: str
    bucket_s: int
    start: int
    end: int
    """Where the window ends: the bucket boundary used in the past, now (rounded) while live."""
    live: bool

    @property
    def stop(self) -> int | None:
        return None if self.live else self.end

    @property
    def seconds(self) -> int:
        """The seconds the window covers (the denominator of rates)."""
        return max(1, self.end - self.start)

    @property
    def per_topic(self) -> bool:
        return self.table in PER_TOPIC


def choose_table(window_s: int, end_s: int, now_s: float, per_topic: bool, max_bucket_s: int = 3600) -> tuple[str, int]:
    """(table, bucket seconds) for a window of ``window_s`` ending at ``end_s``, asked at ``now_s``."""
    if window_s <= SECOND_TABLE_MAX_S and now_s - (end_s - window_s) <= SECOND_TABLE_REACH_S:
        return EDGE_SECOND, 1
    if per_topic:
        return EDGE_MINUTE, 60
    if window_s <= MINUTE_MAX_S or max_bucket_s < 3600:
        return PAIR_MINUTE, 60
    return PAIR_HOUR, 3600


def span(
    window_s: int, end_s: int, live: bool, now_s: float, per_topic: bool = False, max_bucket_s: int = 3600
) -> Span:
    """The table and buckets of a window (see the module docstring)."""
    table, bucket_s = choose_table(window_s, end_s, now_s, per_topic, max_bucket_s)
    if live:
        return Span(table, bucket_s, (end_s - window_s) // bucket_s * bucket_s, end_s, True)
    stop = end_s // bucket_s * bucket_s
    return Span(table, bucket_s, stop - window_s, stop, False)


def minute_range(sp: Span) -> tuple[int, int | None]:
    """The span widened to whole minutes, for per-minute tables read beside it (refusals)."""
    start = sp.start // 60 * 60
    stop = sp.stop
    return start, None if stop is None else -(-stop // 60) * 60


def bucket_filter(sp: Span, column: str = "bucket") -> str:
    """The SQL condition for the span's buckets; only integers go into it."""
    return range_filter(sp.start, sp.stop, column)


def range_filter(start: int, stop: int | None, column: str) -> str:
    """``start <= column < stop`` (no upper bound for None); only integers go into it."""
    cond = f"{column} >= toDateTime({int(start)})"
    if stop is not None:
        cond += f" AND {column} < toDateTime({int(stop)})"
    return cond


TIMELINE_HOURLY_S = 86400
"""Timelines up to a day step by the minute; longer ones by the hour."""


def rollup_span(window_s: int, end_s: int, live: bool, per_topic: bool) -> tuple[Span, int]:
    """(span, step) of a timeline: per-minute rollups up to a day, hourly beyond (never per second)."""
    step = 60 if window_s <= TIMELINE_HOURLY_S else 3600
    table = EDGE_MINUTE if per_topic else PAIR_MINUTE if step == 60 else PAIR_HOUR
    if live:
        return Span(table, step, (end_s - window_s) // step * step, end_s, True), step
    stop = end_s // step * step
    return Span(table, step, stop - window_s, stop, False), step
