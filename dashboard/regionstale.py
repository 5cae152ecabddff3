"""What one region's store says about the regions it holds, as readings for ``meshcore.freshness``; no I/O.

Each region's store is read every second (``dashboard.regionstores``): its relays'
reports (each with the time it was written) and its collector's positions
(``collector.position``: the age of the oldest record of each stream not yet in
ClickHouse, measured on Valkey's clock). Those become, per region the store speaks
for, a reading of its flow history (``FLOWS``: complete up to the oldest record
still waiting; "collector lag", or "collector silent for N s" once the collector
stops reporting, or unknown when no collector reports at all) and of its relays'
reports (``RELAY``: "no report from its relays"), and a ``StoreCheck`` naming the
store when it does not answer. ``meshcore.freshness`` judges them against its one
table of limits: a region whose figures cannot be vouched for is stale, drawn grey
with its edges, "no data for N s", with every cause named.

A store configured for regions (``MESHSCOPE_REGION_STORES``) speaks for those only: a
relay report or a position in region Y's store claiming region X is ignored. The one
store of a deployment without region stores speaks for every region that reports in
it (``ALL``). A store that stops answering keeps its last readings, which age.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshcore.freshness import ALL, RELAY, LagReport, Reading, StoreCheck, flows_reading

NO_RELAY_REPORT = "no report from its relays"
FORGET_S = 3600.0
"""A relay whose last report is older than this is gone (a region taken out), not stale."""


@dataclass(frozen=True)
class StoreReading:
    """What the reads of one store found (the last answer, kept while it does not answer)."""

    regions: tuple[str, ...]
    """The regions it speaks for; empty: every region that reports in it (one store for all)."""
    error: str = ""
    """Why the last read failed ('' when it answered)."""
    relays: Mapping[str, float] = field(default_factory=dict)
    """Region -> when its newest relay report was written (Unix seconds)."""
    reports: Sequence[LagReport] = ()
    """The collectors' positions in the store's streams, on the reader's clock."""

    @property
    def name(self) -> str:
        return f"Valkey of {', '.join(self.regions)}" if self.regions else "Valkey"

    def speaks_for(self, region: str) -> bool:
        return not self.regions or region in self.regions


def readings(store: StoreReading, now_s: float, seen_from: str = "the dashboard") -> tuple[list[Reading], StoreCheck]:
    """The flow history and relay readings of every region ``store`` speaks for, and whether it answered.

    A relay whose last report is older than ``FORGET_S`` is gone (its region taken out of the
    mesh), not stale: a store that speaks for every region no longer speaks for it.
    """
    relays = {r: ts for r, ts in store.relays.items() if store.speaks_for(r)}
    if not store.regions:
        relays = {r: ts for r, ts in relays.items() if now_s - ts < FORGET_S}
    named = set(relays) | {x for r in store.reports for x in r.regions if x != ALL}
    regions = store.regions or tuple(sorted(named))
    out: list[Reading] = []
    if not store.regions:
        out.append(flows_reading(store.reports, ALL, now_s))  # what holds for a region nobody named yet
    for region in regions:
        out.append(flows_reading(store.reports, region, now_s))
        out.append(Reading(RELAY, region, relays.get(region), NO_RELAY_REPORT))
    check = StoreCheck(store.regions or (ALL,), store.error, seen_from, store.name)
    return out, check
