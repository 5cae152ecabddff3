"""How old what the view shows is, with no I/O.

Everything the dashboard and the alerts show comes from a source that can fall
behind or go silent, and a picture is only as good as its oldest part. The I/O
shells only gather timestamps (``Reading``: this source of this region holds
data as of when, and why not newer when they know); this module judges them,
per region and per source, against one table of limits:

    live     at most ``live_s`` old: the page may say "live"
    behind   older, up to ``stale_s``: shown, with its age and its cause
    stale    older than ``stale_s``: greyed, kept as the last known figures with
             their time; alerts that read it are inhibited; /healthz is degraded
    unknown  nothing known (never reported, or the store that holds it cannot be read)

A region's store that cannot be read makes every source of that region unknown,
with the store named as the cause (one banner, not thirty red links).

A region whose own figures (its flow history, its relays' reports: ``REGION_SOURCES``)
cannot be vouched for is stale (``Assessment.region``): the map draws it and its
edges grey, "no data for N s", with the cause; never green, never "0 events".

What state each edge and link is in follows from this in ``meshcore.viewstate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALL = "*"
"""The region of a reading that holds for every region (one stream, one store for all)."""

# ---- sources -------------------------------------------------------------------------------------

FLOWS = "flows"
LINKS = "links"
RELAY = "relay"
GROUPS = "groups"
FEED = "feed"


@dataclass(frozen=True, slots=True)
class Limits:
    """How old a source's newest data may be: ``live_s`` to be live, ``stale_s`` before it is stale."""

    live_s: float
    stale_s: float
    name: str
    """How a cause names the source."""


LIMITS: Mapping[str, Limits] = {
    # the collector inserts every second or so: a few seconds is live; half a minute behind is stale
    FLOWS: Limits(5.0, 30.0, "flow records"),
    # relays sample their links every second
    LINKS: Limits(5.0, 10.0, "link samples"),
    # relays write their state (routes, groups, clock) every 2 s
    RELAY: Limits(5.0, 10.0, "relay state"),
    # durable groups are sampled every few seconds
    GROUPS: Limits(15.0, 60.0, "group samples"),
    # the collectors publish on the live channel every second
    FEED: Limits(5.0, 10.0, "live feed"),
}
SOURCES = tuple(LIMITS)
REGION_SOURCES = (FLOWS, RELAY)
"""What a region's own figures rest on: either one not to be trusted, and the region is stale."""

# ---- freshness levels ----------------------------------------------------------------------------

LIVE, BEHIND, STALE, UNKNOWN = "live", "behind", "stale", "unknown"
LEVELS = (LIVE, BEHIND, STALE, UNKNOWN)
"""From best to worst."""
TRUSTED = frozenset((LIVE, BEHIND))
"""Levels whose figures are shown as they are (with their age); the others are greyed and inhibit alerts."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a shell found out about one source of one region."""

    source: str
    region: str
    as_of: float | None
    """Unix seconds of the newest data the source holds; None when nothing is known."""
    cause: str = ""
    """Why it is not newer, in a few words, when the shell knows (``collector lag``)."""


@dataclass(frozen=True, slots=True)
class Freshness:
    """A reading judged: its level, how old it is and why."""

    source: str
    region: str
    level: str
    age_s: float | None
    as_of: float | None
    cause: str

    @property
    def trusted(self) -> bool:
        return self.level in TRUSTED

    @property
    def says(self) -> str:
        """The judgement as a sentence ('' while live): ``flow records 15 min behind — collector lag``."""
        name = LIMITS[self.source].name if self.source in LIMITS else self.source
        if self.level == LIVE:
            return ""
        if self.level == UNKNOWN or self.age_s is None:
            return f"{name} unknown — {self.cause}"
        return f"{name} {age_text(self.age_s)} behind — {self.cause}"

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "as_of": None if self.as_of is None else round(self.as_of, 3),
            "cause": self.cause,
            "says": self.says,
        }


def age_text(seconds: float) -> str:
    """A duration as people say it: 4 s, 90 s, 15 min, 2.5 h, 3 d."""
    s = max(0.0, seconds)
    if s < 100:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h".replace(".0 h", " h")
    return f"{s / 86400:.0f} d"


def judge(reading: Reading, now_s: float, limits: Mapping[str, Limits] = LIMITS) -> Freshness:
    """The level of one reading at ``now_s`` (a timestamp from the future counts as age 0)."""
    limit = limits[reading.source]
    if reading.as_of is None:
        cause = reading.cause or f"no {limit.name} yet"
        return Freshness(reading.source, reading.region, UNKNOWN, None, None, cause)
    age = max(0.0, now_s - reading.as_of)
    if age <= limit.live_s:
        return Freshness(reading.source, reading.region, LIVE, age, reading.as_of, "")
    level = BEHIND if age <= limit.stale_s else STALE
    cause = reading.cause or "no newer report"
    return Freshness(reading.source, reading.region, level, age, reading.as_of, cause)


def worst(items: Iterable[Freshness]) -> Freshness | None:
    """The least fresh of ``items`` (the oldest among equals); None for none."""
    out: Freshness | None = None
    for f in items:
        if out is None:
            out = f
            continue
        rank, best = LEVELS.index(f.level), LEVELS.index(out.level)
        if rank > best or (rank == best and (f.age_s or 0.0) > (out.age_s or 0.0)):
            out = f
    return out


# ---- what the collectors report ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LagReport:
    """One collector's position in one stream it reads, as it publishes it every second."""

    stream: str
    regions: tuple[str, ...]
    """The regions whose records the stream holds (``ALL``: every region)."""
    ts: float
    """When the collector measured (Unix seconds)."""
    lag_s: float
    """Age of the oldest record of the stream not yet in ClickHouse (unread, or read and not inserted)."""
    unread: int = 0
    pending: int = 0
    collector: str = ""
    source: str = FLOWS
    """What the stream holds: flow records (``FLOWS``), link samples (``LINKS``) or group samples (``GROUPS``)."""

    def covers(self, region: str) -> bool:
        return ALL in self.regions or region in self.regions or region == ALL

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "regions": list(self.regions),
            "ts": round(self.ts, 3),
            "lag_s": round(self.lag_s, 3),
            "unread": self.unread,
            "pending": self.pending,
            "collector": self.collector,
            "source": self.source,
        }


def lag_from(data: Mapping[str, Any]) -> LagReport | None:
    """A report decoded from untrusted JSON; None when any field is missing or of the wrong type."""
    stream, regions, ts, lag = data.get("stream"), data.get("regions"), data.get("ts"), data.get("lag_s")
    if not isinstance(stream, str) or not isinstance(regions, list) or not regions:
        return None
    if not all(isinstance(r, str) and r for r in regions) or not isinstance(ts, int | float):
        return None
    if not isinstance(lag, int | float) or not _number(ts) or not _number(lag):
        return None
    unread, pending, collector = data.get("unread", 0), data.get("pending", 0), data.get("collector", "")
    source = data.get("source", FLOWS)
    if source not in (FLOWS, LINKS, GROUPS):
        return None
    return LagReport(
        stream[:256],
        tuple(r[:128] for r in regions[:256]),
        float(ts),
        max(0.0, float(lag)),
        int(unread) if _number(unread) else 0,
        int(pending) if _number(pending) else 0,
        collector[:256] if isinstance(collector, str) else "",
        source,
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


REPORT_SILENT_S = 3.0
"""Collectors report every second: one not heard for this long is silent, whatever it said last."""


def flows_reading(reports: Sequence[LagReport], region: str, now_s: float) -> Reading:
    """How far the flow history of ``region`` is complete: the worst report of a stream that holds it.

    A collector that stopped reporting is as far behind as its last report said plus the time since.
    """
    mine = [r for r in reports if r.source == FLOWS and r.covers(region)]
    if not mine:
        return Reading(FLOWS, region, None, "no collector reports its position")
    report = min(mine, key=lambda r: r.ts - r.lag_s)
    as_of = report.ts - report.lag_s
    silent = now_s - report.ts
    cause = f"collector silent for {age_text(silent)}" if silent > REPORT_SILENT_S else "collector lag"
    return Reading(FLOWS, region, as_of, cause)


# ---- stores --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Whether a store (Valkey) could be read, by whom, and which regions it holds."""

    regions: tuple[str, ...]
    error: str = ""
    """Empty when it answered."""
    seen_from: str = "the dashboard"
    name: str = "Valkey"

    @property
    def cause(self) -> str:
        return f"{self.name} unreachable from {self.seen_from}: {self.error}" if self.error else ""

    def covers(self, region: str) -> bool:
        return ALL in self.regions or region in self.regions


# ---- a whole assessment --------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """Every region's sources judged at ``checked_at``, and the causes worth a banner."""

    checked_at: float
    regions: Mapping[str, Mapping[str, Freshness]]
    banner: tuple[str, ...]
    stores: tuple[StoreCheck, ...] = ()

    def unreachable(self, region: str) -> str:
        """Why the store of ``region`` cannot be read ('' when it can)."""
        return next((s.cause for s in self.stores if s.error and s.covers(region)), "")

    def of(self, region: str, source: str) -> Freshness:
        """One region's source; a region the assessment does not know reads as unknown."""
        found = self.regions.get(region, {}).get(source)
        if found is None:
            found = self.regions.get(ALL, {}).get(source)
        return found or Freshness(source, region, UNKNOWN, None, None, f"no {LIMITS[source].name} for {region}")

    def vouch(self, region: str) -> list[Freshness]:
        """The sources a region's own figures rest on (``REGION_SOURCES``): its flow history, and its
        relays' reports where a store speaks for them (a relay gone for an hour is not asked about)."""
        out = [self.of(region, FLOWS)]
        relay = self.regions.get(region, {}).get(RELAY)
        return out if relay is None else [*out, relay]

    def region(self, region: str) -> RegionView:
        """Whether ``region``'s figures can be vouched for; when not, since when and why."""
        judged = self.vouch(region)
        level = (worst(judged) or judged[0]).level
        bad = [f for f in judged if not f.trusted]
        times = [f.as_of for f in bad or judged]
        heard_at = None if any(t is None for t in times) else min(t for t in times if t is not None)
        if not bad:
            return RegionView(level, heard_at, 0.0, "")
        no_data_s = None if heard_at is None else max(0.0, self.checked_at - heard_at)
        cause = self.unreachable(region) or "; ".join(dict.fromkeys(f.says for f in bad))
        return RegionView(level, heard_at, no_data_s, cause)

    def source(self, source: str) -> Freshness | None:
        """The worst of one source over every region."""
        return worst(by[source] for by in self.regions.values() if source in by)

    def problems(self) -> list[str]:
        """Stale and unknown sources, as sentences for /healthz: the banner, then each other one once."""
        out = list(self.banner)
        covered = {f.cause for by in self.regions.values() for f in by.values() if f.says in self.banner}
        covered |= {s.cause for s in self.stores if s.error}
        for region, by in sorted(self.regions.items()):
            for f in by.values():
                if f.trusted or f.cause in covered:
                    continue
                line = f.says if region == ALL else f"{region}: {f.says}"
                if line not in out:
                    out.append(line)
        return out

    def to_json(self) -> dict[str, Any]:
        regions = {region: {s: f.to_json() for s, f in sorted(by.items())} for region, by in self.regions.items()}
        overall = {s: f.to_json() for s in SOURCES if (f := self.source(s)) is not None}
        return {
            "checked_at": round(self.checked_at, 3),
            "sources": overall,
            "regions": dict(sorted(regions.items())),
            "verdicts": {region: self.region(region).to_json() for region in sorted(self.regions) if region != ALL},
            "banner": list(self.banner),
        }


@dataclass(frozen=True, slots=True)
class RegionView:
    """A region judged as a whole (``Assessment.region``)."""

    level: str
    """The worst level of the sources its figures rest on."""
    heard_at: float | None
    """Its figures are complete up to this time (None: nothing known)."""
    no_data_s: float | None
    """How long since ``heard_at``, while stale (0 when it is not; None when nothing is known)."""
    cause: str

    @property
    def stale(self) -> bool:
        """Its figures cannot be vouched for: drawn grey with its edges."""
        return self.level not in TRUSTED

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "stale": self.stale,
            "heard_at": None if self.heard_at is None else round(self.heard_at, 3),
            "no_data_s": None if self.no_data_s is None else round(self.no_data_s, 1),
            "cause": self.cause,
        }


def assess(
    readings: Iterable[Reading],
    now_s: float,
    stores: Sequence[StoreCheck] = (),
    limits: Mapping[str, Limits] = LIMITS,
) -> Assessment:
    """Judge every reading; a store that could not be read makes the sources of its regions unknown
    (unless the moment judged is before what it last said: a past window it had answered for).

    The banner holds each unreachable store once, and any other cause that leaves one source
    stale or unknown in every region (a collector behind on the one stream of every region).
    """
    regions: dict[str, dict[str, Freshness]] = {}
    for reading in readings:
        store = next((s for s in stores if s.error and s.covers(reading.region)), None)
        if store is not None and (reading.as_of is None or reading.as_of < now_s):
            f = Freshness(reading.source, reading.region, UNKNOWN, None, reading.as_of, store.cause)
        else:
            f = judge(reading, now_s, limits)
        regions.setdefault(reading.region, {})[reading.source] = f
    banner = [s.cause for s in stores if s.error]
    named = [r for r in regions if r != ALL]
    unreachable = set(banner)
    for source in SOURCES:
        judged = [regions[r][source] for r in named if source in regions[r]]
        if judged and all(not f.trusted for f in judged) and len({f.cause for f in judged}) == 1:
            line = worst(judged)
            if line is not None and line.cause not in unreachable and line.says not in banner:
                banner.append(line.says)
        everywhere = regions.get(ALL, {}).get(source)
        if everywhere is None or everywhere.trusted or everywhere.cause in unreachable:
            continue
        if everywhere.says not in banner:
            banner.append(everywhere.says)
    return Assessment(now_s, regions, tuple(banner), tuple(stores))
