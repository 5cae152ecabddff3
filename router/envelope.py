"""CloudEvents 1.0 at the relay's edge: an event object (structured JSON) validated into an ``Event``.

Everything a producer publishes passes through here before the relay acts on
it, so this module is the allowlist: grammar, lengths, types, nesting depth
and size, with every limit in one ``EventLimits``. A breach is a
``MalformedEvent`` (400) naming the attribute, or ``EventTooLarge`` (413) for
the event's encoded size. Nothing else escapes, whatever the input. No I/O.
How an HTTP request becomes event objects (content modes) is ``router.httpbinding``.

The topic is the CloudEvents ``type`` attribute: it is required by the spec,
already names "what happened", and keeps events unchanged on the wire.

Nesting: orjson parses 1024 levels but encodes only 254, and a mesh frame
wraps each event about 4 levels deeper, so an event nested 300 deep used to be
accepted and then kill the mesh link that tried to send it. Events deeper than
``max_depth`` are refused here (400, never a 500 later). The count of ``{``
and ``[`` bytes in the encoded event (C speed) bounds its depth from above, so
only an event with more containers than the limit needs the exact check,
which is orjson's own depth limit applied with the event placed deeper
(``_DepthProbe``), also at C speed; a Python walk runs only to tell "too deep"
from "not JSON at all".

Every accepted event leaves with a valid version-00 ``traceparent`` and, when
one survives, a normalized ``tracestate``: its own when valid, else the
request's ``traceparent``/``tracestate`` headers, else a new trace (rules in
``router.tracecontext``). In binary mode ``ce-traceparent`` is the event's own
attribute and ``traceparent`` the request's header. The relay never rewrites
the event's context after that, as the CloudEvents distributed-tracing
extension asks.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, fields
from typing import Any

import orjson

from meshcore.topic import validate_topic
from router.errors import EventTooLarge, InvalidTopic, MalformedEvent
from router.grammar import is_base64, is_media_type, is_timestamp, is_uri, is_uri_reference
from router.tracecontext import (
    TraceContext,
    TraceParent,
    event_context,
    truncate_tracestate,
)

REQUIRED = ("specversion", "id", "source", "type")
TRACE_ATTRIBUTES = frozenset(("traceparent", "tracestate"))
FRAME_NESTING = 4
"""How many levels a mesh frame (or a group message) wraps around an event."""
TRACEPARENT_CHARS = 55
"""A version-00 traceparent, which every accepted event carries."""
DECODE_STEP = 500
"""Events of a batch validated between two yields of ``structured_steps`` (about 10 ms of work)."""
MAX_TIME_CHARS = 64
"""An RFC 3339 timestamp with nanoseconds and an offset takes 35."""

_REQUIRED = frozenset(REQUIRED)
_OPTIONAL_LIMIT = {
    "subject": "max_subject_chars",
    "datacontenttype": "max_datacontenttype_chars",
    "dataschema": "max_dataschema_chars",
}
_GRAMMAR = {"datacontenttype": is_media_type, "dataschema": is_uri}
_NOT_GRAMMAR = {
    "source": "attribute 'source' must be a URI-reference (RFC 3986; percent-encode spaces and non-ASCII)",
    "dataschema": "attribute 'dataschema' must be an absolute URI (RFC 3986)",
    "datacontenttype": "attribute 'datacontenttype' must be a media type, type/subtype[; name=value] (RFC 2045)",
    "time": "attribute 'time' must be an RFC 3339 timestamp with valid fields, in ASCII: 2026-11-26T10:00:00Z",
}
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_NONCHARACTERS = "".join(f"\\U{plane:04x}fffe\\U{plane:04x}ffff" for plane in range(1, 17))
_NOT_CE_STRING = re.compile(rf"[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff\ud800-\udfff{_NONCHARACTERS}]")


def _nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def _orjson_max_depth() -> int:
    """The deepest nesting orjson encodes (254 in orjson 3), found once by trying."""
    encodes, refuses = 1, 4096
    while refuses - encodes > 1:
        levels = (encodes + refuses) // 2
        try:
            orjson.dumps(_nested_lists(levels))
            encodes = levels
        except TypeError:
            refuses = levels
    return encodes


ORJSON_MAX_DEPTH = _orjson_max_depth()


class _DepthProbe(threading.local):
    """An exact depth check at C speed: orjson's own limit, with the event placed that much deeper.

    With the event at the bottom of ``ORJSON_MAX_DEPTH - max_depth`` nested
    lists, ``orjson.dumps`` fails exactly when the event nests more than
    ``max_depth`` levels. The lists are built once per thread and limit (the
    bottom slot is refilled for each event). It costs about 2.5 µs more than a
    plain ``orjson.dumps``, so it runs only for events with more containers
    than the limit; a Python walk of an event with 40 order lines costs 15 µs.
    """

    def __init__(self) -> None:
        self._chains: dict[int, tuple[list[Any], list[Any]]] = {}

    def too_deep(self, obj: object, max_depth: int) -> bool:
        """True when ``obj``, which orjson can encode, nests deeper than ``max_depth``."""
        chain = self._chains.get(max_depth)
        if chain is None:
            slot: list[Any] = [None]
            outer = slot
            for _ in range(ORJSON_MAX_DEPTH - max_depth - 1):
                outer = [outer]
            chain = self._chains[max_depth] = (slot, outer)
        slot, outer = chain
        slot[0] = obj
        try:
            orjson.dumps(outer)
        except TypeError:  # orjson.JSONEncodeError: "Recursion limit reached"
            return True
        finally:
            slot[0] = None
        return False


_probe = _DepthProbe()


@dataclass(frozen=True, slots=True)
class EventLimits:
    """What one event may hold. Over ``max_event_bytes`` is a 413, over any other limit a 400."""

    max_event_bytes: int = 256 << 10
    """The event encoded as compact JSON."""
    max_depth: int = 32
    """Nesting of the whole event: the event object is level 1, an object in ``data`` level 2."""
    max_id_chars: int = 256
    max_source_chars: int = 1024
    max_subject_chars: int = 1024
    max_dataschema_chars: int = 2048
    max_datacontenttype_chars: int = 256
    max_extension_chars: int = 1024
    """Each string extension attribute, ``traceparent`` and ``tracestate`` included (55 at least)."""
    max_extensions: int = 32
    """Extension attributes besides ``traceparent``/``tracestate``, which the relay always sets."""
    new_trace_sample_ratio: float = 1.0
    """Not a limit: the share of the traces started here (an event with no trace context) marked sampled."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.new_trace_sample_ratio <= 1.0:
            raise ValueError(f"EventLimits.new_trace_sample_ratio must be 0 to 1, not {self.new_trace_sample_ratio!r}")
        for f in fields(self):
            if f.name == "new_trace_sample_ratio":
                continue
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"EventLimits.{f.name} must be a positive integer, not {value!r}")
        if self.max_extension_chars < TRACEPARENT_CHARS:
            raise ValueError(f"EventLimits.max_extension_chars must hold a traceparent ({TRACEPARENT_CHARS})")
        if self.max_depth > ORJSON_MAX_DEPTH - FRAME_NESTING:
            raise ValueError(f"EventLimits.max_depth over {ORJSON_MAX_DEPTH - FRAME_NESTING} could not be forwarded")


DEFAULT_LIMITS = EventLimits()


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


def validate_event(
    obj: object, limits: EventLimits | int = DEFAULT_LIMITS, context: TraceContext | None = None
) -> Event:
    """Check one decoded CloudEvent and return it as an Event; raise on any fault.

    ``limits`` may still be a bare ``max_event_bytes`` (the other limits then
    default). ``context`` is the request's trace context (``header_context``),
    used when the event carries no valid ``traceparent`` of its own. The event
    is encoded once, to measure it, and keeps that encoding. A MalformedEvent
    carries the refused event, for its drop record (without ``data`` when that
    is what could not be encoded).
    """
    try:
        return _validate(obj, as_limits(limits), context)
    except MalformedEvent as exc:
        if exc.event is None:
            exc.event = obj
        raise


def _validate(obj: object, limits: EventLimits, context: TraceContext | None) -> Event:
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
    _check_string("id", obj["id"], limits.max_id_chars)
    _check_string("source", obj["source"], limits.max_source_chars)
    if not is_uri_reference(obj["source"]):
        raise MalformedEvent(_NOT_GRAMMAR["source"], "source")
    try:
        validate_topic(obj["type"])
    except InvalidTopic as exc:
        raise MalformedEvent(f"attribute 'type' (the topic): {exc}", "type") from None
    extensions = 0
    unset: list[str] = []
    for name, value in obj.items():
        if name in _REQUIRED or name == "data":
            continue
        if value is None:
            unset.append(name)  # JSON null means unset (CloudEvents JSON format 2.2)
        elif name in _OPTIONAL_LIMIT:
            if not isinstance(value, str) or not value:
                raise MalformedEvent(f"attribute '{name}' must be a non-empty string", name)
            _check_string(name, value, getattr(limits, _OPTIONAL_LIMIT[name]))
            if name in _GRAMMAR and not _GRAMMAR[name](value):
                raise MalformedEvent(_NOT_GRAMMAR[name], name)
        elif name == "time":
            if not isinstance(value, str) or len(value) > MAX_TIME_CHARS or not is_timestamp(value):
                raise MalformedEvent(_NOT_GRAMMAR["time"], "time")
        elif name == "data_base64":
            if not isinstance(value, str) or not is_base64(value):
                raise MalformedEvent("'data_base64' must be a base64 string (RFC 4648, canonical)", name)
        elif not isinstance(name, str) or not _EXTENSION_NAME.fullmatch(name):
            raise MalformedEvent(f"extension attribute '{name}' must be 1-20 lower-case letters or digits", str(name))
        else:
            if name not in TRACE_ATTRIBUTES:
                extensions += 1
                if extensions > limits.max_extensions:
                    raise MalformedEvent(
                        f"extension attribute '{name}' is one too many: at most {limits.max_extensions} are allowed",
                        name,
                    )
            _check_extension(name, value, limits)
    if "data" in obj and "data_base64" in obj:
        raise MalformedEvent("an event carries 'data' or 'data_base64', not both", "data_base64")
    for name in unset:
        del obj[name]
    ctx = _apply_trace_context(obj, limits, context)
    try:
        encoded = orjson.dumps(obj)
    except TypeError as exc:  # orjson.JSONEncodeError: too deep, or no JSON at all (from Python callers)
        if _deeper_than(obj, limits.max_depth):
            raise _too_deep(obj, limits.max_depth) from None
        raise MalformedEvent(f"the event cannot be encoded as JSON: {exc}", event=_without_data(obj)) from None
    if len(encoded) > limits.max_event_bytes:
        raise EventTooLarge(len(encoded), limits.max_event_bytes)
    # the count of "{" and "[" bounds the depth from above; only a count over the limit needs the exact check
    if encoded.count(b"{") + encoded.count(b"[") > limits.max_depth and _probe.too_deep(obj, limits.max_depth):
        raise _too_deep(obj, limits.max_depth)
    return Event(obj["id"], obj["source"], obj["type"], ctx.parent, obj, len(encoded), 0, encoded)


def _check_string(name: str, value: str, max_chars: int) -> None:
    """A CloudEvents string within ``max_chars``: no control characters, noncharacters or lone surrogates."""
    if len(value) > max_chars:
        raise MalformedEvent(f"attribute '{name}' is longer than {max_chars} characters", name)
    if not (value.isascii() and value.isprintable()) and _NOT_CE_STRING.search(value):
        raise MalformedEvent(f"attribute '{name}' holds a control character, a noncharacter or a lone surrogate", name)


def _check_extension(name: str, value: object, limits: EventLimits) -> None:
    if isinstance(value, str):
        _check_string(name, value, limits.max_extension_chars)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise MalformedEvent(f"extension attribute '{name}' is an integer outside the 32-bit range", name)
    elif not isinstance(value, bool):
        raise MalformedEvent(f"extension attribute '{name}' must be a string, integer or boolean", name)


def _apply_trace_context(obj: dict[str, Any], limits: EventLimits, context: TraceContext | None) -> TraceContext:
    """Write the context the event carries into it: version 00, reserved flags cleared, tracestate normalized."""
    ctx = event_context(obj, context, limits.new_trace_sample_ratio)
    traceparent = ctx.parent.format()
    if obj.get("traceparent") != traceparent:
        obj["traceparent"] = traceparent
    state = ctx.state
    if state is not None and len(state) > limits.max_extension_chars:
        state = truncate_tracestate(state, limits.max_extension_chars)  # only a header's can be longer
    if state is None:
        obj.pop("tracestate", None)
    elif obj.get("tracestate") != state:
        obj["tracestate"] = state
    return ctx


def _deeper_than(value: object, limit: int) -> bool:
    """True when ``value`` nests containers more than ``limit`` levels (itself being level 1)."""
    if not isinstance(value, dict | list | tuple):
        return False
    stack: list[tuple[dict[Any, Any] | list[Any] | tuple[Any, ...], int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if level > limit:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list | tuple):
                stack.append((child, level + 1))
    return False


def _too_deep(obj: dict[str, Any], max_depth: int) -> MalformedEvent:
    return MalformedEvent(
        f"attribute 'data' is nested deeper than {max_depth} levels (the event object is level 1)",
        "data",  # only data can nest: every other attribute is a string, integer or boolean
        event=_without_data(obj),
    )


def _without_data(obj: dict[str, Any]) -> dict[str, Any]:
    """The refused event's attributes, for its drop record, when its data cannot be encoded."""
    return {k: v for k, v in obj.items() if k != "data" and isinstance(v, str | int | bool)}


def decode_events(
    body: bytes, limits: EventLimits | int = DEFAULT_LIMITS, context: TraceContext | None = None
) -> list[Event]:
    """Decode a structured-mode body (one event or a JSON array of them), all or nothing.

    Raises MalformedEvent naming the attribute (and the batch index), or
    EventTooLarge; a batch with any bad event is refused whole. ``context``
    is the request's trace context, as for ``validate_event``.
    """
    return finish(structured_steps(body, as_limits(limits), context, 0))


def structured_steps(
    body: bytes, limits: EventLimits, context: TraceContext | None, step: int
) -> Generator[None, None, list[Event]]:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedEvent(f"body is not valid JSON: {exc}") from None
    if not isinstance(decoded, list):
        return [validate_event(decoded, limits, context)]
    if not decoded:
        raise MalformedEvent("an event batch must not be empty")
    events = []
    for i, obj in enumerate(decoded):
        if step and i and i % step == 0:
            yield
        try:
            events.append(validate_event(obj, limits, context))
        except MalformedEvent as exc:
            raise exc.at(i) from None
        except EventTooLarge as exc:
            raise EventTooLarge(exc.size, exc.limit, i) from None
    return events


def finish(steps: Generator[None, None, list[Event]]) -> list[Event]:
    """Run a stepwise decode (``structured_steps``, ``decode_http_steps``) to its end at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            events: list[Event] = done.value
            return events


def as_limits(limits: EventLimits | int) -> EventLimits:
    """``limits``, or the default limits with ``limits`` as the event size bound."""
    return limits if isinstance(limits, EventLimits) else _limits_for_bytes(limits)


@functools.lru_cache(maxsize=8)
def _limits_for_bytes(max_event_bytes: int) -> EventLimits:
    return EventLimits(max_event_bytes=max_event_bytes)


def now_us() -> int:
    return time.time_ns() // 1000
