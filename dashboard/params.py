"""The map API's query parameters, checked against allowlists before anything runs, with no I/O.

Every map endpoint takes the same parameters: ``window``, ``end`` (time travel), and the
filters ``provider``, ``region`` and ``topic``. Each is checked here against its grammar
(region ids and providers as :mod:`meshcore.names` has them, topics as
:mod:`meshcore.topic`), so what reaches SQL is a validated value passed as a query
parameter, never text pasted into a statement. A bad value is a :class:`BadRequest` whose
message names the parameter (400).

A window ending "now" ends at now rounded down to the cache interval: every viewer asking
within one interval asks the same question, which is what lets one computation serve them
all (:mod:`dashboard.cache`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from meshcore.names import REGION_ID
from meshcore.settings import whole_number
from meshcore.topic import InvalidTopic, validate_pattern

WINDOWS: dict[str, int] = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400}
TIMELINE_WINDOWS: dict[str, int] = {**WINDOWS, "7d": 7 * 86400}
"""The scrubber may look back a week (at hourly steps)."""
PROVIDER = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")
TRACE_ID = re.compile(r"[0-9a-f]{32}")
MAX_FILTER_VALUES = 64
MAX_END_S = 4_102_444_800  # 2100-01-01: beyond it a number is a mistake (milliseconds, say)
MIN_END_S = 946_684_800  # 2000-01-01: before it, a window would reach back before any flow record
SECONDS = re.compile(r"[0-9]{1,10}(\.[0-9]{1,6})?")
"""Unix seconds as ASCII digits: float() would also take "1_700", full-width digits and " 1"."""
MAX_SEARCH_CHARS = 256
DEFAULT_THRESHOLD_PCT = 20.0


class BadRequest(ValueError):
    """A query parameter the API cannot use; the message names it and says what is allowed."""


@dataclass(frozen=True, slots=True)
class Filters:
    """Which part of the map to keep; empty means all."""

    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    topic: str | None = None

    @property
    def narrows(self) -> bool:
        return bool(self.providers or self.regions)

    def keeps_region(self, region: str) -> bool:
        """Whether a region itself is selected by the provider and region filters."""
        if self.providers and region.split(":", 1)[0] not in self.providers:
            return False
        return not self.regions or region in self.regions

    def keeps_edge(self, src: str, dst: str) -> bool:
        """An edge is kept when either end is selected."""
        return not self.narrows or self.keeps_region(src) or self.keeps_region(dst)


@dataclass(frozen=True, slots=True)
class MapQuery:
    """One map question, normalized: equal questions are equal values (the cache key)."""

    window_s: int
    end_s: int
    live: bool
    """True when the window ends now (``end_s`` is now rounded down to the cache interval)."""
    filters: Filters = Filters()


def parse_window(text: str | None, windows: Mapping[str, int] = WINDOWS, default: str = "5m") -> int:
    if text is None or text == "":
        return windows[default]
    if text not in windows:
        raise BadRequest(f"window must be one of {', '.join(windows)}")
    return windows[text]


def live_end(now_s: float, interval_s: float) -> int:
    """Now, rounded down to the cache interval (whole seconds)."""
    step = max(1.0, interval_s)
    return int(math.floor(now_s / step) * step)


def parse_time(text: str | None, name: str) -> float | None:
    """Unix seconds in ASCII digits (a fraction allowed), or None when absent; BadRequest naming ``name`` otherwise."""
    if text is None or text == "":
        return None
    if SECONDS.fullmatch(text) is None or not MIN_END_S <= float(text) <= MAX_END_S:
        raise BadRequest(f"{name} must be unix seconds between {MIN_END_S} and {MAX_END_S}, not {text[:40]!r}")
    return float(text)


def parse_end(text: str | None, now_s: float, interval_s: float) -> tuple[int, bool]:
    """(end, live): a given ``end`` in the past is kept to the second; absent or not in the past is now."""
    value = parse_time(text, "end")
    live = live_end(now_s, interval_s)
    if value is None or value >= live:
        return live, True
    return int(value), False


def _values(text: str | None, name: str, grammar: re.Pattern[str], example: str) -> tuple[str, ...]:
    if text is None or not text.strip():
        return ()
    values = sorted({v.strip() for v in text.split(",") if v.strip()})
    if len(values) > MAX_FILTER_VALUES:
        raise BadRequest(f"{name}: at most {MAX_FILTER_VALUES} values")
    for v in values:
        if grammar.fullmatch(v) is None:
            raise BadRequest(f"{name}: {v[:80]!r} is not a {name} ({example})")
    return tuple(values)


def parse_topic(text: str | None, name: str = "topic") -> str | None:
    if text is None or text == "":
        return None
    try:
        return validate_pattern(text)
    except InvalidTopic as exc:
        raise BadRequest(f"{name}: {exc}") from None


def parse_filters(params: Mapping[str, str]) -> Filters:
    return Filters(
        providers=_values(params.get("provider"), "provider", PROVIDER, "e.g. aws,gcp"),
        regions=_values(params.get("region"), "region", REGION_ID, "provider:name, e.g. aws:us-east-1"),
        topic=parse_topic(params.get("topic")),
    )


def parse_map_query(
    params: Mapping[str, str],
    now_s: float,
    interval_s: float,
    windows: Mapping[str, int] = WINDOWS,
    default_window: str = "5m",
) -> MapQuery:
    """The common parameters of every map endpoint."""
    window_s = parse_window(params.get("window"), windows, default_window)
    end_s, live = parse_end(params.get("end"), now_s, interval_s)
    return MapQuery(window_s, end_s, live, parse_filters(params))


def parse_compare_end(text: str | None, query: MapQuery) -> int:
    """Where the earlier snapshot of a diff ends: given, or one window before ``end``."""
    value = parse_time(text, "compare_end")
    compare = int(value) if value is not None else query.end_s - query.window_s
    if compare >= query.end_s:
        raise BadRequest("compare_end must be earlier than end")
    return compare


def parse_threshold_pct(text: str | None) -> float:
    if text is None or text == "":
        return DEFAULT_THRESHOLD_PCT
    if re.fullmatch(r"[0-9]{1,5}(\.[0-9]{1,6})?", text) is None or not 0 < float(text) <= 10_000:
        raise BadRequest(f"threshold_pct must be a number above 0 and at most 10000, not {text[:40]!r}")
    return float(text)


def parse_name(text: str | None, name: str, grammar: re.Pattern[str], example: str) -> str | None:
    """One optional name (a region, a group) checked against its grammar."""
    if text is None or text == "":
        return None
    if grammar.fullmatch(text) is None:
        raise BadRequest(f"{name}: {text[:80]!r} is not a valid {name} ({example})")
    return text


def parse_region(text: str | None, name: str = "region") -> str | None:
    return parse_name(text, name, REGION_ID, "provider:name, e.g. aws:us-east-1")


REGION_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,256}")
"""A region as stored: what the map shows may be asked back (bound as a parameter, never pasted into SQL).

New names are held to ``meshcore.names.REGION_ID`` where they enter (the relays); the stored ones
are asked for by what they are, up to 256 characters without control characters."""


def require_region(text: str, name: str) -> str:
    """A region the map returned (an edge's end): checked for length and control characters only."""
    if REGION_NAME.fullmatch(text) is None:
        raise BadRequest(f"{name}: a region is 1 to 256 characters without control characters")
    return text


def parse_stored_region(text: str | None, name: str) -> str | None:
    return None if text is None or text == "" else require_region(text, name)


def parse_limit(text: str | None, default: int, maximum: int) -> int:
    if text is None or text == "":
        return default
    value = whole_number(text, 1, maximum)
    if value is None:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}")
    return value


def parse_search(text: str | None) -> str:
    q = (text or "").strip()
    if not q:
        raise BadRequest("q: say what to look for (a trace id, an event id or a topic pattern)")
    if len(q) > MAX_SEARCH_CHARS:
        raise BadRequest(f"q: at most {MAX_SEARCH_CHARS} characters")
    return q


def topic_regex(pattern: str) -> str:
    """An RE2 expression matching exactly the topics ``pattern`` matches (``*`` one token, ``>`` the rest).

    ``pattern`` must have passed ``validate_pattern``; the expression goes to ClickHouse as a
    query parameter.
    """
    parts = []
    for token in pattern.split("."):
        if token == "*":
            parts.append(r"[^.]+")
        elif token == ">":
            parts.append(r".+")
        else:
            parts.append(re.escape(token))
    return "^" + r"\.".join(parts) + "$"
