"""Whether the dashboard can vouch for each region's data, from what the region's own store says; no I/O.

Each region's store is read every second (``dashboard.regionstores``): its relays'
reports (each with the time it was written) and its flow stream's position (the
write time of the oldest record no collector has put into ClickHouse yet). A
region's picture is complete up to ``heard_at``: the oldest of the last answer of
its store, its newest relay report and the oldest record still waiting. When
that is more than ``STALE_AFTER_S`` ago the region is stale, with every cause
named (its store does not answer, its relays stopped reporting, its telemetry
is held back on the way to ClickHouse, no collector reads it), and the map
draws it and its edges grey, "no data for N s": never green, never "0 events".
A region no store speaks for is unknown (None), which is not the same as fresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STALE_AFTER_S = 5.0
"""Relays report every 2 s and collectors insert every second: 5 s of silence is a region gone quiet."""


@dataclass(frozen=True, slots=True)
class StoreReading:
    """What the reads of one region's store found."""

    answered_at: float
    """When the store last answered (0: never)."""
    error: str
    """Why the last read failed ("" when it answered)."""
    relay_ts: float | None
    """The newest report of the region's relays (s), None when none."""
    waiting_since: float | None
    """Write time (s) of the oldest flow record not yet in ClickHouse, None when none waits."""
    collected: bool
    """Whether a collector group reads the store's flow stream."""


def freshness(reading: StoreReading, now: float, stale_after_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """``{"stale", "heard_at", "no_data_s", "telemetry_lag_s", "cause"}`` of a region, as of ``now``."""
    if not reading.answered_at:
        return {
            "stale": True,
            "heard_at": None,
            "no_data_s": None,
            "telemetry_lag_s": None,
            "cause": f"its store has not answered yet{': ' + reading.error if reading.error else ''}",
        }
    complete = reading.answered_at if reading.waiting_since is None else min(reading.answered_at, reading.waiting_since)
    heard_at = complete if reading.relay_ts is None else min(complete, reading.relay_ts)
    causes = []
    if reading.error:
        causes.append(f"its store does not answer ({reading.error[:200]})")
    if reading.relay_ts is None:
        causes.append("none of its relays reports")
    elif now - reading.relay_ts > stale_after_s:
        causes.append(f"no report from its relays for {now - reading.relay_ts:.0f} s")
    if not reading.collected:
        causes.append("no collector reads its flow records")
    elif now - complete > stale_after_s and not reading.error:
        causes.append(f"its flow records are {now - complete:.0f} s behind on the way to ClickHouse")
    stale = bool(causes) or now - heard_at > stale_after_s
    if stale and not causes:
        causes.append(f"nothing heard for {now - heard_at:.0f} s")
    return {
        "stale": stale,
        "heard_at": round(heard_at, 3),
        "no_data_s": round(max(0.0, now - heard_at), 1) if stale else 0.0,
        "telemetry_lag_s": round(max(0.0, reading.answered_at - complete), 3),
        "cause": "; ".join(causes),
    }


def mark_topology(topology: dict[str, Any], fresh: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The map with each region's freshness (None: no store speaks for it) and ``stale`` on its edges.

    A region is marked stale in a window only when the window reaches past the time it was last
    heard from: a window that ended before that is complete.
    """
    end = float(topology.get("to") or 0)
    stale: set[str] = set()
    for region in topology["regions"]:
        f = fresh.get(region["id"])
        region["freshness"] = dict(f) if f is not None else None
        heard_at = f.get("heard_at") if f is not None else None
        region["stale"] = bool(f is not None and f["stale"] and (heard_at is None or end > heard_at))
        if region["stale"]:
            stale.add(region["id"])
    for edge in topology["edges"]:
        edge["stale"] = edge["src"] in stale or edge["dst"] in stale
    return topology


def regions_message(fresh: Mapping[str, Mapping[str, Any]], now: float) -> dict[str, Any]:
    """The live feed's ``regions`` message: every region's freshness, each second."""
    return {"type": "regions", "ts": round(now, 3), "regions": [{"id": r, **f} for r, f in sorted(fresh.items())]}
