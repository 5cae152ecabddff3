"""CloudEvents 1.0 structured-mode JSON, validated into an ``Event``.

The topic is the CloudEvents ``type`` attribute: it is required by the spec,
already names "what happened", and keeps events unchanged on the wire. Every
accepted event leaves with a valid ``traceparent``: the producer's when it
sent a valid one, else a fresh one; the relay never rewrites it after that,
as the CloudEvents distributed-tracing extension asks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from meshcore.topic import validate_topic
from router.errors import EventTooLarge, InvalidTopic, MalformedEvent
from router.tracecontext import TraceParent, new_traceparent, parse_traceparent

REQUIRED = ("specversion", "id", "source", "type")
_OPTIONAL_STRINGS = ("subject", "datacontenttype", "dataschema", "time", "tracestate")
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_CONTEXT_ATTRIBUTES = frozenset(
    ("specversion", "id", "source", "type", "subject", "datacontenttype", "dataschema", "time", "data", "data_base64")
)


@dataclass(slots=True)
class Event:
    """One accepted event: the CloudEvent as a dict plus what routing needs."""

    id: str
    source: str
    topic: str
    trace: TraceParent
    body: dict[str, Any]
    size: int
    published_us: int = 0
    encoded: bytes | None = None  # the event as JSON, when validation already encoded it


def validate_event(obj: object, max_event_bytes: int, size: int | None = None) -> Event:
    """Check one decoded CloudEvent and return it as an Event; raise on any fault.

    ``size`` is the event's encoded size when the caller already knows it (a
    single-event body); otherwise the event is encoded once to measure it. A
    MalformedEvent carries the refused event, for its drop record.
    """
    try:
        return _validate(obj, max_event_bytes, size)
    except MalformedEvent as exc:
        exc.event = obj
        raise


def _validate(obj: object, max_event_bytes: int, size: int | None) -> Event:
    if not isinstance(obj, dict):
        raise MalformedEvent("an event must be a JSON object")
    for name in REQUIRED:
        value = obj.get(name)
        if value is None:
            raise MalformedEvent(f"required attribute '{name}' is missing", name)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(f"attribute '{name}' must be a non-empty string", name)
    if obj["specversion"] != "1.0":
        raise MalformedEvent("attribute 'specversion' must be \"1.0\"", "specversion")
    for name in _OPTIONAL_STRINGS:
        value = obj.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedEvent(f"attribute '{name}' must be a string", name)
    when = obj.get("time")
    if when is not None and not _RFC3339.match(when):
        raise MalformedEvent("attribute 'time' must be an RFC 3339 timestamp", "time")
    if "data" in obj and "data_base64" in obj:
        raise MalformedEvent("an event carries 'data' or 'data_base64', not both", "data_base64")
    for name in obj:
        if name not in _CONTEXT_ATTRIBUTES and not _EXTENSION_NAME.match(name):
            raise MalformedEvent(f"extension attribute '{name}' must be 1-20 lower-case letters or digits", name)
    try:
        validate_topic(obj["type"])
    except InvalidTopic as exc:
        raise MalformedEvent(f"attribute 'type' (the topic): {exc}", "type") from None
    trace = parse_traceparent(obj.get("traceparent"))
    if trace is None:
        trace = new_traceparent()
        obj["traceparent"] = trace.format()
        obj.pop("tracestate", None)
    encoded = None
    if size is None:
        encoded = orjson.dumps(obj)
        size = len(encoded)
    if size > max_event_bytes:
        raise EventTooLarge(size, max_event_bytes)
    return Event(obj["id"], obj["source"], obj["type"], trace, obj, size, 0, encoded)


def decode_events(body: bytes, max_event_bytes: int) -> list[Event]:
    """Decode a POST body (one event or a JSON array of them), all or nothing.

    Raises MalformedEvent naming the attribute (and the batch index), or
    EventTooLarge; a batch with any bad event is refused whole.
    """
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not valid JSON: {exc}") from None
    if isinstance(decoded, list):
        if not decoded:
            raise MalformedEvent("an event batch must not be empty")
        events = []
        for i, obj in enumerate(decoded):
            try:
                events.append(validate_event(obj, max_event_bytes))
            except MalformedEvent as exc:
                raise exc.at(i) from None
            except EventTooLarge as exc:
                raise EventTooLarge(exc.size, exc.limit, i) from None
        return events
    return [validate_event(decoded, max_event_bytes, len(body))]


def now_us() -> int:
    return time.time_ns() // 1000
