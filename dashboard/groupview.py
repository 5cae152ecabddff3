"""Durable groups as the dashboard shows them, shaped from ``group_lag`` rows, with no I/O.

A group's status is ``collector.grouplag``'s verdict on its latest samples. What the latest
samples cannot say comes from the group's history (``dashboard.queries.group_since_sql``): since
when it has been behind (the last sample with nothing waiting) and since when it has had no member
(the last sample with one). A group its relay no longer samples while the relay still reports
(deleted, or forgotten) is gone, not STOP; a group whose region cannot be vouched for is ``unknown``,
with why, rather than a status read from samples that stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from collector.grouplag import LagSample, rates, status
from meshcore.freshness import FLOWS, Assessment

Row = Sequence[Any]

UNKNOWN = "unknown"
GONE_MIN_S = 30.0
"""A group not sampled for this long (or five of its sampling intervals, if longer) while its region
still reports is gone."""
GONE_INTERVALS = 5
BEHIND_PEERS_MIN_S = 3.0
"""A relay samples all its groups in one pass: a group whose newest sample is this much (or three of its
intervals, if longer) older than another group's of the same region was left out of the passes since."""
BEHIND_PEERS_INTERVALS = 3


def group_samples(rows: Sequence[Row]) -> dict[tuple[str, str], tuple[list[LagSample], Row]]:
    """Rows of ``group_latest_sql`` as each group's samples, oldest first, and its newest row."""
    out: dict[tuple[str, str], tuple[list[LagSample], Row]] = {}
    for row in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
        region, group, ts_ms, acked, backlog, oldest_age_s, consumers = row[:7]
        sample = LagSample(int(ts_ms) / 1000, int(acked), int(backlog), float(oldest_age_s), int(consumers))
        key = (str(region), str(group))
        samples = out[key][0] if key in out else []
        samples.append(sample)
        out[key] = (samples, row)
    return out


def gone(samples: Sequence[LagSample], reference_s: float, region_newest_s: float | None = None) -> bool:
    """Whether a group's relay stopped sampling it: its newest sample is older than ``GONE_MIN_S`` or
    ``GONE_INTERVALS`` of its own sampling intervals, whichever is longer, or the region's passes since
    (``region_newest_s``, the newest sample of any of its groups) left it out."""
    if not samples:
        return True
    interval = (samples[-1].ts - samples[0].ts) / (len(samples) - 1) if len(samples) > 1 else 0.0
    if reference_s - samples[-1].ts > max(GONE_MIN_S, GONE_INTERVALS * interval):
        return True
    peers = max(BEHIND_PEERS_MIN_S, BEHIND_PEERS_INTERVALS * interval)
    return region_newest_s is not None and region_newest_s - samples[-1].ts > peers


def current_groups(
    rows: Sequence[Row], fresh: Assessment | None
) -> list[tuple[str, str, list[LagSample], Row, str, str]]:
    """(region, group, samples, newest row, status, cause) of every group still there at ``fresh``'s time.

    Without an assessment every group seen is kept with its sampled status."""
    out = []
    found = group_samples(rows)
    newest: dict[str, float] = {}
    for (region, _), (samples, _) in found.items():
        newest[region] = max(newest.get(region, 0.0), samples[-1].ts)
    for (region, group), (samples, row) in sorted(found.items()):
        verdict, cause = status(samples), ""
        if fresh is not None:
            judged = fresh.region(region)
            # the collector reads a region's samples as far as its flows: a group is not gone for
            # samples still on their way
            read_to = fresh.of(region, FLOWS).as_of
            reference = fresh.checked_at if read_to is None else min(fresh.checked_at, read_to)
            if judged.stale:
                verdict, cause = UNKNOWN, judged.cause or "its region's reports cannot be vouched for"
            elif gone(samples, reference, newest[region]):
                continue
        out.append((region, group, samples, row, verdict, cause))
    return out


def group_brief(rows: Sequence[Row], fresh: Assessment | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per region: [{group, status, backlog}] from the latest samples."""
    out: dict[str, list[dict[str, Any]]] = {}
    for region, group, samples, _, verdict, _ in current_groups(rows, fresh):
        out.setdefault(region, []).append({"group": group, "status": verdict, "backlog": samples[-1].backlog})
    return out


def _since(value: Any) -> float | None:
    """A ``group_since_sql`` time in milliseconds as seconds; None for none in the lookback (0)."""
    ms = int(value or 0)
    return ms / 1000 if ms > 0 else None


def shape_groups(
    latest_rows: Sequence[Row],
    series_rows: Sequence[Row],
    since_rows: Sequence[Row],
    window: Mapping[str, Any],
    fresh: Assessment | None,
) -> dict[str, Any]:
    """The Lag view: every group still there, with since when it is behind and since when it has no member.

    ``behind_since``: the newest sample with nothing waiting before the newest one (None: nothing waits
    now; ``behind_before`` when no such sample is in the lookback, with the first sample's time);
    ``no_member_since``: the newest sample with a member (None while one is connected)."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for region, group, ts, backlog in sorted(series_rows, key=lambda r: (r[0], r[1], r[2])):
        series.setdefault((str(region), str(group)), []).append({"t": int(ts), "backlog": int(backlog)})
    history = {(str(r[0]), str(r[1])): r for r in since_rows}
    groups = []
    for region, group, samples, row, verdict, cause in current_groups(latest_rows, fresh):
        arrival, ack = rates(samples)
        last = samples[-1]
        _, _, clear_ms, first_ms, member_ms = history.get((region, group), (region, group, 0, 0, 0))
        clear, first, member = _since(clear_ms), _since(first_ms), _since(member_ms)
        behind = last.backlog > 0
        groups.append(
            {
                "region": region,
                "group": group,
                "owner": row[7],
                "patterns": list(row[8]),
                "status": verdict,
                "cause": cause,
                "backlog": last.backlog,
                "pending": int(row[9]),
                "lag": int(row[10]),
                "probe": bool(row[11]) if len(row) > 11 else False,
                "oldest_age_s": round(last.oldest_age_s, 3),
                "behind_since": (clear if clear is not None else first) if behind else None,
                "behind_before": behind and clear is None,
                "no_member_since": (member if member is not None else first) if last.consumers == 0 else None,
                "no_member_before": last.consumers == 0 and member is None,
                "consumers": last.consumers,
                "arrival_per_s": round(arrival, 3),
                "ack_per_s": round(ack, 3),
                "last_sample": round(last.ts, 3),
                "series": series.get((region, group), []),
            }
        )
    return {**window, "groups": groups}
