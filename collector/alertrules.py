"""Alert rules: the model, the strict TOML file format and the message templates, with no I/O.

A rules file is a list of ``[[rule]]`` tables (deploy/alerts.toml describes every key). The
file is a trust boundary, so it is read strictly: a key this module does not know, or one the
rule's kind does not use, is refused with its path (``rules.toml: rule[3] (LinkDown).filter.tpoic``)
instead of being ignored, since a misspelt filter would silently widen an alert. Templates are
``str.format`` strings over a fixed set of plain fields: no attribute or index lookups, checked
once at load by rendering them with sample values, so a template can neither reach into an
object nor fail later at evaluation.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.grouplag import STALL, STOP, WARN
from meshcore.flowrecord import LOSSES, OK, STATUSES
from meshcore.freshness import FLOWS, GROUPS, LINKS
from meshcore.topic import InvalidTopic, validate_pattern

EDGE_ERROR_PCT = "edge_error_pct"
EDGE_P99_LAG_MS = "edge_p99_lag_ms"
EDGE_RATE_DROP = "edge_rate_drop"
LINK_DOWN = "link_down"
REJECTIONS = "rejections"
GROUP_LAG = "group_lag"
TELEMETRY_STALE = "telemetry_stale"
EDGE_KINDS = (EDGE_ERROR_PCT, EDGE_P99_LAG_MS, EDGE_RATE_DROP)
KINDS = (*EDGE_KINDS, LINK_DOWN, REJECTIONS, GROUP_LAG, TELEMETRY_STALE)
SEVERITIES = ("info", "warning", "critical")
REFUSALS = ("policy_denied", "schema_rejected", "malformed")
REJECTION_LABELS = ("region", "topic", "principal", "status")
GROUP_STATUSES = (WARN, STALL, STOP)
FAILURES = tuple(s for s in STATUSES if s != OK)
"""What an edge_error_pct rule may count as failed; by default the losses only (refusals are the producers')."""
TELEMETRY_SOURCES = (FLOWS, LINKS, GROUPS)

NUMBER_FIELDS = ("value", "threshold", "rate", "previous_rate")
TEXT_FIELDS = (
    "alertname", "severity", "src", "dst", "topic", "group", "region", "principal", "status", "state", "window", "for",
    "source", "cause",
)  # fmt: skip
TEMPLATE_FIELDS = frozenset(NUMBER_FIELDS + TEXT_FIELDS)
MAX_TEMPLATE_CHARS = 2000

_COMMON = {"id", "kind", "severity", "for", "window", "summary", "description", "filter"}
# the keys each kind adds, and the filters it takes
_KIND_KEYS: dict[str, set[str]] = {
    EDGE_ERROR_PCT: {"threshold", "min_events", "by_topic", "statuses"},
    EDGE_P99_LAG_MS: {"threshold", "min_events", "by_topic"},
    EDGE_RATE_DROP: {"threshold", "min_rate", "by_topic"},
    LINK_DOWN: {"stale"},
    REJECTIONS: {"threshold", "statuses", "by"},
    GROUP_LAG: {"statuses", "samples"},
    TELEMETRY_STALE: {"sources"},
}
_KIND_FILTERS: dict[str, tuple[str, ...]] = {
    EDGE_ERROR_PCT: ("src", "dst", "topic"),
    EDGE_P99_LAG_MS: ("src", "dst", "topic"),
    EDGE_RATE_DROP: ("src", "dst", "topic"),
    LINK_DOWN: ("src", "dst"),
    REJECTIONS: ("region", "topic", "principal"),
    GROUP_LAG: ("region", "group"),
    TELEMETRY_STALE: ("region",),
}
_DEFAULT_WINDOW = {LINK_DOWN: "1h", REJECTIONS: "1m", GROUP_LAG: "10m", TELEMETRY_STALE: "1h"}
_DEFAULT_SUMMARY = {
    EDGE_ERROR_PCT: "Edge {src} -> {dst} fails {value:.1f} % of its events",
    EDGE_P99_LAG_MS: "End-to-end p99 on {src} -> {dst} is {value:.0f} ms",
    EDGE_RATE_DROP: "Events on {src} -> {dst} fell by {value:.0f} %",
    LINK_DOWN: "Link {src} -> {dst} is not up",
    REJECTIONS: "{region} refuses events: {value:.1f} per minute",
    GROUP_LAG: "Consumer group {group} in {region} is {status}",
    TELEMETRY_STALE: "The {source} of {region} are stale: {cause}",
}
_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_NAME = re.compile(r"[\x21-\x7e]{1,255}")
_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?#?0?\d{0,3}[,_]?(?:\.\d{1,2})?[bcdeEfFgGnosxX%]?")


class AlertRuleError(ValueError):
    """A rules file this module refuses; the message names the file and the path of the bad key."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One alert rule; ``labels`` of its alerts are ``alertname`` (the id), ``severity`` and the kind's own."""

    id: str
    kind: str
    severity: str
    for_s: float
    window_s: float
    summary: str
    description: str
    for_text: str = "0s"
    window_text: str = "5m"
    threshold: float = 0.0
    min_events: int = 1
    min_rate: float = 1.0
    by_topic: bool = False
    stale_s: float = 30.0
    statuses: tuple[str, ...] = ()
    by: tuple[str, ...] = ()
    samples: int = 5
    src: str = ""
    dst: str = ""
    topic: str = ""
    region: str = ""
    group: str = ""
    principal: str = ""


def parse_duration(value: object, path: str) -> tuple[float, str]:
    """``"90s"``, ``"2m"``, ``"1h30m"`` or a number of seconds, as (seconds, text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise AlertRuleError(f'{path}: a duration is a number of seconds or text like "90s", "2m", "1h"')
    if isinstance(value, int | float):
        seconds, text = float(value), f"{value:g}s"
    elif _DURATION.fullmatch(value.strip()):
        seconds = sum(float(n) * _UNIT_S[u] for n, u in _DURATION_PART.findall(value.strip()))
        text = value.strip()
    else:
        raise AlertRuleError(f'{path}: {value!r} is not a duration like "90s", "2m", "1h30m"')
    if not 0 <= seconds <= 400 * 86400:
        raise AlertRuleError(f"{path}: {value!r} is out of range (0 to 400 days)")
    return seconds, text


def check_template(text: object, path: str) -> str:
    """``text`` if it is a template over TEMPLATE_FIELDS that renders; else AlertRuleError."""
    if not isinstance(text, str) or len(text) > MAX_TEMPLATE_CHARS:
        raise AlertRuleError(f"{path}: a template is text of at most {MAX_TEMPLATE_CHARS} characters")
    try:
        for _, name, spec, conversion in string.Formatter().parse(text):
            if name is None:
                continue
            if name not in TEMPLATE_FIELDS:
                raise AlertRuleError(
                    f"{path}: {{{name}}} is not a template field; fields: {', '.join(sorted(TEMPLATE_FIELDS))}"
                )
            if conversion is not None or not _SPEC.fullmatch(spec or ""):
                raise AlertRuleError(
                    f"{path}: {{{name}}}: no conversions, nested fields or widths over 999 in templates"
                )
        text.format_map(sample_fields())
    except (ValueError, TypeError) as exc:
        if isinstance(exc, AlertRuleError):
            raise
        raise AlertRuleError(f"{path}: the template does not render: {exc}") from None
    return text


def sample_fields() -> dict[str, Any]:
    return {**dict.fromkeys(NUMBER_FIELDS, 1.5), **dict.fromkeys(TEXT_FIELDS, "x")}


def render(template: str, fields: Mapping[str, Any]) -> str:
    """The template with ``fields`` filled in; missing text fields are empty, missing numbers 0."""
    values = {**dict.fromkeys(NUMBER_FIELDS, 0.0), **dict.fromkeys(TEXT_FIELDS, ""), **fields}
    try:
        return template.format_map(values)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return template


def _expect(value: object, kinds: type | tuple[type, ...], path: str, what: str) -> Any:
    if isinstance(value, bool) and kinds is not bool:
        raise AlertRuleError(f"{path}: expected {what}")
    if not isinstance(value, kinds):
        raise AlertRuleError(f"{path}: expected {what}")
    return value


def _choices(value: object, allowed: tuple[str, ...], path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AlertRuleError(f"{path}: expected a non-empty list of {', '.join(allowed)}")
    wrong = [v for v in value if v not in allowed]
    if wrong:
        raise AlertRuleError(f"{path}: {', '.join(wrong)} not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))


def _rule(raw: object, path: str) -> Rule:
    if not isinstance(raw, dict):
        raise AlertRuleError(f"{path}: a rule is a table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID.fullmatch(rule_id):
        raise AlertRuleError(f"{path}.id: required, letters, digits and _ (not starting with a digit)")
    path = f"{path} ({rule_id})"
    kind = raw.get("kind")
    if kind not in KINDS:
        raise AlertRuleError(f"{path}.kind: required, one of {', '.join(KINDS)}")
    allowed = _COMMON | _KIND_KEYS[kind]
    for key in raw:
        if key not in allowed:
            raise AlertRuleError(f"{path}.{key}: unknown key for a {kind} rule; keys: {', '.join(sorted(allowed))}")
    out: dict[str, Any] = {"id": rule_id, "kind": kind}
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        raise AlertRuleError(f"{path}.severity: one of {', '.join(SEVERITIES)}")
    out["severity"] = severity
    if "for" not in raw:
        raise AlertRuleError(
            f'{path}.for: required: how long the condition must hold before the alert fires ("0s": at once)'
        )
    out["for_s"], out["for_text"] = parse_duration(raw["for"], f"{path}.for")
    out["window_s"], out["window_text"] = parse_duration(
        raw.get("window", _DEFAULT_WINDOW.get(kind, "5m")), f"{path}.window"
    )
    if out["window_s"] < 1:
        raise AlertRuleError(f"{path}.window: at least 1 s")
    if "threshold" in _KIND_KEYS[kind]:
        if "threshold" not in raw and kind != REJECTIONS:
            raise AlertRuleError(f"{path}.threshold: required for a {kind} rule")
        out["threshold"] = float(_expect(raw.get("threshold", 1.0), (int, float), f"{path}.threshold", "a number"))
        if out["threshold"] < 0 or (kind == EDGE_RATE_DROP and out["threshold"] >= 100):
            raise AlertRuleError(f"{path}.threshold: out of range")
    if "min_events" in raw:
        out["min_events"] = _expect(raw["min_events"], int, f"{path}.min_events", "a whole number")
    if "min_rate" in raw:
        out["min_rate"] = float(_expect(raw["min_rate"], (int, float), f"{path}.min_rate", "events per second"))
    if "by_topic" in raw:
        out["by_topic"] = _expect(raw["by_topic"], bool, f"{path}.by_topic", "true or false")
    if "stale" in raw:
        out["stale_s"] = parse_duration(raw["stale"], f"{path}.stale")[0]
    if kind == EDGE_ERROR_PCT:
        out["statuses"] = _choices(raw.get("statuses", sorted(LOSSES)), FAILURES, f"{path}.statuses")
    if kind == TELEMETRY_STALE:
        out["statuses"] = _choices(raw.get("sources", [FLOWS, LINKS]), TELEMETRY_SOURCES, f"{path}.sources")
    if kind == REJECTIONS:
        out["statuses"] = _choices(raw.get("statuses", list(REFUSALS)), REFUSALS, f"{path}.statuses")
        out["by"] = _choices(raw.get("by", list(REJECTION_LABELS)), REJECTION_LABELS, f"{path}.by")
    if kind == GROUP_LAG:
        if "statuses" not in raw:
            raise AlertRuleError(f"{path}.statuses: required, a list of {', '.join(GROUP_STATUSES)}")
        out["statuses"] = _choices(raw["statuses"], GROUP_STATUSES, f"{path}.statuses")
        samples = _expect(raw.get("samples", 5), int, f"{path}.samples", "a whole number")
        if not 2 <= samples <= 1000:
            raise AlertRuleError(f"{path}.samples: 2 to 1000")
        out["samples"] = samples
    out.update(_filters(raw.get("filter", {}), _KIND_FILTERS[kind], f"{path}.filter"))
    out["summary"] = check_template(raw.get("summary", _DEFAULT_SUMMARY[kind]), f"{path}.summary")
    out["description"] = check_template(raw.get("description", ""), f"{path}.description")
    return Rule(**out)


def _filters(raw: object, allowed: tuple[str, ...], path: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise AlertRuleError(f"{path}: a table of {', '.join(allowed)}")
    out = {}
    for key, value in raw.items():
        if key not in allowed:
            raise AlertRuleError(f"{path}.{key}: unknown filter for this kind; filters: {', '.join(allowed)}")
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise AlertRuleError(f"{path}.{key}: printable text without spaces, at most 255 characters")
        if key == "topic":
            try:
                validate_pattern(value)
            except InvalidTopic as exc:
                raise AlertRuleError(f"{path}.topic: {exc}") from None
        out[key] = value
    return out


def parse_rules(text: str, source: str = "rules") -> tuple[Rule, ...]:
    """The rules of a TOML document; AlertRuleError naming ``source`` and the path of what is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AlertRuleError(f"{source}: not valid TOML: {exc}") from None
    for key in doc:
        if key != "rule":
            raise AlertRuleError(f"{source}: {key}: unknown key; a rules file holds [[rule]] tables only")
    raw = doc.get("rule", [])
    if not isinstance(raw, list):
        raise AlertRuleError(f"{source}: rule: write each rule as [[rule]]")
    rules = tuple(_rule(r, f"{source}: rule[{i}]") for i, r in enumerate(raw))
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise AlertRuleError(f"{source}: rule id {rule.id} is used twice")
        seen.add(rule.id)
    return rules


def load_rules(path: str | None) -> tuple[Rule, ...]:
    """The rules in the file at ``path``; the built-in defaults when ``path`` is empty."""
    if not path:
        return default_rules()
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise AlertRuleError(f"{path}: cannot read the rules file: {exc.strerror or exc}") from None
    return parse_rules(text, path)


def default_rules() -> tuple[Rule, ...]:
    """The built-in rules: the same as deploy/alerts.toml."""
    return parse_rules(DEFAULT_RULES_TOML, "built-in rules")


# the rules of deploy/alerts.toml, without its comments (the wheel does not ship deploy/)
DEFAULT_RULES_TOML = """
[[rule]]
id = "EdgeErrorRateHigh"
kind = "edge_error_pct"
severity = "critical"
threshold = 5.0
min_events = 300
for = "2m"
window = "5m"
summary = "Edge {src} -> {dst} loses {value:.1f} % of its events"
description = "Over the last {window}, {value:.1f} % of the events that entered {src} -> {dst} were lost \
(threshold {threshold:g} %, for {for}): see the edge's drop records for why."

[[rule]]
id = "EdgeErrorRateElevated"
kind = "edge_error_pct"
severity = "warning"
threshold = 1.0
min_events = 500
for = "5m"
window = "5m"
summary = "Edge {src} -> {dst} loses {value:.1f} % of its events"
description = "Over the last {window}, {value:.1f} % of the events that entered {src} -> {dst} were lost \
(threshold {threshold:g} %, for {for}): see the edge's drop records for why."

[[rule]]
id = "EdgeLagP99High"
kind = "edge_p99_lag_ms"
severity = "critical"
threshold = 2000.0
min_events = 100
for = "5m"
window = "5m"
summary = "End-to-end p99 on {src} -> {dst} is {value:.0f} ms"
description = "The 99th percentile of publish-to-delivery latency on {src} -> {dst} has been at least \
{threshold:g} ms for {for}."

[[rule]]
id = "EventRateDrop"
kind = "edge_rate_drop"
severity = "warning"
threshold = 50.0
min_rate = 1.0
for = "5m"
window = "5m"
summary = "Events on {src} -> {dst} fell by {value:.0f} %"
description = "{src} -> {dst} carried {rate:.2f} events/s over the last {window}, against \
{previous_rate:.2f} events/s in the {window} before, for {for}."

[[rule]]
id = "LinkDown"
kind = "link_down"
severity = "critical"
stale = "30s"
for = "1m"
window = "1h"
summary = "Link {src} -> {dst} is {state}"
description = "The mesh link {src} -> {dst} has been {state} for {for} ({cause}); events for {dst} are \
held or rerouted."

[[rule]]
id = "PolicyOrSchemaRejections"
kind = "rejections"
severity = "warning"
threshold = 60.0
statuses = ["policy_denied", "schema_rejected", "malformed"]
by = ["region", "principal", "status"]
for = "10m"
window = "5m"
summary = "{region} refuses the events of {principal}: {status}, {value:.0f} a minute"
description = "{region} has refused {value:.0f} events a minute from {principal} as {status} for {for}: \
a producer keeps sending what the governance rules or the schema registry do not allow."

[[rule]]
id = "ConsumerLagGrowing"
kind = "group_lag"
severity = "warning"
statuses = ["WARN"]
samples = 10
for = "10m"
window = "10m"
summary = "Consumer group {group} in {region} is falling behind"
description = "{value:.0f} entries wait for group {group} in {region}: its members acknowledge, but the \
backlog grew in every one of its last samples, for {for}."

[[rule]]
id = "ConsumerGroupStalled"
kind = "group_lag"
severity = "critical"
statuses = ["STALL"]
samples = 5
for = "2m"
window = "10m"
summary = "Consumer group {group} in {region} acknowledges nothing"
description = "{value:.0f} entries wait for group {group} in {region}; its members are connected but \
acknowledged nothing in its last samples, for {for}."

[[rule]]
id = "ConsumerGroupStopped"
kind = "group_lag"
severity = "critical"
statuses = ["STOP"]
samples = 5
for = "2m"
window = "10m"
summary = "Consumer group {group} in {region} has no member"
description = "{value:.0f} entries wait for group {group} in {region} and no member has been connected \
for {for}."

[[rule]]
id = "TelemetryStale"
kind = "telemetry_stale"
severity = "warning"
sources = ["flows", "links"]
for = "2m"
window = "1h"
summary = "The {source} of {region} are stale: {cause}"
description = "The {source} of {region} are {value:.0f} s old ({cause}); the alerts that read them are \
held back until they are fresh again, and the dashboard shows them greyed."
"""
