"""CloudEvents 1.0 at the relay's edge: structured JSON or HTTP binary mode, validated into an ``Event``.

Everything a producer publishes passes through here before the relay acts on
it, so this module is the allowlist: grammar, lengths, types, nesting depth
and size, with every limit in one ``EventLimits``. A breach is a
``MalformedEvent`` (400) naming the attribute, or ``EventTooLarge`` (413) for
the event's encoded size; a content type we cannot read is
``UnsupportedMediaType`` (415). Nothing else escapes, whatever the input. No I/O.

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

HTTP content modes (``content_mode``), as the HTTP protocol binding 1.0 picks them:

- ``application/cloudevents+json`` or ``application/cloudevents-batch+json``:
  structured, one event or an array (other event formats are 415);
- a ``ce-specversion`` header: binary mode. Attributes come from ``ce-``
  headers (double-quoted strings unescaped, then one round of
  percent-decoding, then strict UTF-8), the body is ``data`` and
  ``content-type`` is ``datacontenttype``;
- ``application/json`` without ``ce-specversion``: structured, as before
  binary mode was read (the binding would call it binary mode with no
  attributes, which no producer of ours means);
- anything else: 415.

A binary-mode request becomes the same event as its structured form: a JSON
body (``*/json``, ``*/*+json``) is decoded into ``data``, a text body
(``text/*``, ``*/xml``, ``*/*+xml``; UTF-8) becomes ``data`` as a string, any
other body becomes ``data_base64``, and an empty body means no data. Without a
``content-type`` (the CloudEvents Python SDK's default) the event has no
``datacontenttype``, which the JSON event format reads as ``application/json``:
a body that parses as JSON is ``data``, one that does not is ``data_base64``. Only the
types of extension attributes are lost: headers carry strings, so an integer
or boolean extension arrives as a string.

Every accepted event leaves with a valid version-00 ``traceparent`` and, when
one survives, a normalized ``tracestate``: its own when valid, else the
request's ``traceparent``/``tracestate`` headers, else a new trace (rules in
``router.tracecontext``). In binary mode ``ce-traceparent`` is the event's own
attribute and ``traceparent`` the request's header. The relay never rewrites
the event's context after that, as the CloudEvents distributed-tracing
extension asks.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
import time
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from meshcore.topic import validate_topic
from router.errors import EventTooLarge, InvalidTopic, MalformedEvent, UnsupportedMediaType
from router.grammar import is_base64, is_media_type, is_timestamp, is_uri, is_uri_reference, media_type
from router.tracecontext import (
    TraceContext,
    TraceParent,
    event_context,
    header_context,
    truncate_tracestate,
)

REQUIRED = ("specversion", "id", "source", "type")
TRACE_ATTRIBUTES = frozenset(("traceparent", "tracestate"))
STRUCTURED, BINARY = "structured", "binary"
STRUCTURED_TYPES = frozenset(("application/cloudevents+json", "application/cloudevents-batch+json"))
FRAME_NESTING = 4
"""How many levels a mesh frame (or a group message) wraps around an event."""
TRACEPARENT_CHARS = 55
"""A version-00 traceparent, which every accepted event carries."""
DECODE_STEP = 500
"""Events of a batch validated between two yields of ``decode_http_steps`` (about 10 ms of work)."""
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
_QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'
_UTF8_CHARSETS = frozenset(("utf-8", "utf8", "us-ascii"))
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")
_QUOTED = re.compile(_QUOTED_STRING)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_PERCENT_ENCODED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_OWS = " \t"


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
        return _validate(obj, _as_limits(limits), context)
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
    return finish(_structured_steps(body, _as_limits(limits), context, 0))


def _structured_steps(
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
    """Run a stepwise decode (``decode_http_steps``) to its end at once."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            events: list[Event] = done.value
            return events


def content_mode(headers: Mapping[str, str]) -> str:
    """STRUCTURED or BINARY for a request's headers (lower-case names); raise UnsupportedMediaType.

    Cheap, and needs no body: the app may call it before reading one.
    """
    media = _media_type(headers.get("content-type"))
    if media is not None and media[0].startswith("application/cloudevents"):
        if media[0] not in STRUCTURED_TYPES:
            raise UnsupportedMediaType(f"event format {media[0]!r} is not supported; use application/cloudevents+json")
        _require_utf8(media)
        return STRUCTURED
    if "ce-specversion" in headers:
        return BINARY
    if media is not None and media[0] == "application/json":
        _require_utf8(media)
        return STRUCTURED
    raise UnsupportedMediaType(
        "content type must be application/cloudevents+json, application/cloudevents-batch+json or "
        "application/json (structured mode), or the request must carry ce-specversion (binary mode)"
    )


def decode_http(headers: Mapping[str, str], body: bytes, limits: EventLimits | int = DEFAULT_LIMITS) -> list[Event]:
    """The events of one HTTP request in either content mode, validated alike; all or nothing.

    ``headers`` have lower-case names and repeated headers joined with commas
    (``combine_headers``). Raises UnsupportedMediaType (415), MalformedEvent
    (400) or EventTooLarge (413).
    """
    return finish(decode_http_steps(headers, body, limits, 0))


def decode_http_steps(
    headers: Mapping[str, str], body: bytes, limits: EventLimits | int = DEFAULT_LIMITS, step: int = DECODE_STEP
) -> Generator[None, None, list[Event]]:
    """``decode_http`` in steps: it yields after every ``step`` events of a batch, and returns the events.

    A caller on an event loop lets other work run at each step, so a batch of
    10,000 events does not hold the loop for the whole of its validation.
    """
    limits = _as_limits(limits)
    mode = content_mode(headers)
    context = header_context(headers)
    if mode == STRUCTURED:
        return (yield from _structured_steps(body, limits, context, step))
    return [validate_event(_binary_event(headers, body), limits, context)]


def combine_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers as ``decode_http`` wants them: lower-case names, repeats joined by ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for name_bytes, value_bytes in raw:
        name, value = name_bytes.decode("latin-1").lower(), value_bytes.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def _binary_event(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The structured form of a binary-mode request."""
    obj: dict[str, Any] = {}
    for name, raw in headers.items():
        if not name.startswith("ce-"):
            continue
        attribute = name[3:]
        if attribute in ("datacontenttype", "data", "data_base64"):
            raise MalformedEvent(
                f"header '{name}' is not allowed in binary mode: the body is the data and "
                "content-type its datacontenttype",
                attribute,
            )
        obj[attribute] = _header_value(name, attribute, raw)
    content_type = headers.get("content-type")
    media = _media_type(content_type)
    if media is not None and content_type is not None:
        obj["datacontenttype"] = content_type.strip(_OWS)
    if not body:
        return obj
    if media is None:
        # no datacontenttype means application/json (JSON event format 3.1): a body that parses as JSON
        # is its data; bytes that do not parse are kept as they are
        try:
            obj["data"] = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj["data_base64"] = base64.b64encode(body).decode("ascii")
        return obj
    essence = media[0]
    subtype = essence.partition("/")[2]
    if subtype == "json" or subtype.endswith("+json"):
        _require_utf8(media)
        try:
            obj["data"] = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedEvent(f"the body is not the JSON its content type says: {exc}", "data") from None
    elif essence.startswith("text/") or subtype == "xml" or subtype.endswith("+xml"):
        _require_utf8(media)
        try:
            obj["data"] = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent("the body is not UTF-8 text, as its content type says", "data") from None
    else:
        obj["data_base64"] = base64.b64encode(body).decode("ascii")
    return obj


def _header_value(name: str, attribute: str, raw: str) -> str:
    """One ``ce-`` header as an attribute value (HTTP binding 1.0, 3.1.3.2)."""
    value = raw.strip(_OWS)
    if not _HEADER_TEXT.fullmatch(value):
        raise MalformedEvent(
            f"header '{name}' holds characters outside printable ASCII; percent-encode them", attribute
        )
    if '"' in value:
        if '"' in _QUOTED.sub("", value):
            raise MalformedEvent(f"header '{name}' has an unbalanced double quote", attribute)
        value = _QUOTED.sub(lambda m: _QUOTED_PAIR.sub(r"\1", m.group()[1:-1]), value)
    if "%" in value:
        if not _PERCENT_ENCODED.fullmatch(value):
            raise MalformedEvent(f"header '{name}' has a '%' not followed by two hex digits", attribute)
        try:
            value = unquote_to_bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent(f"header '{name}' is not UTF-8 once percent-decoded", attribute) from None
    return value


def _media_type(header: str | None) -> tuple[str, dict[str, str]] | None:
    """(lower-case ``type/subtype``, parameters) of a content type; None when absent; 415 when unreadable."""
    if header is None or not header.strip(_OWS):
        return None
    try:
        return media_type(header.strip(_OWS))
    except ValueError as exc:
        raise UnsupportedMediaType(f"content type {header[:100]!r} {exc}") from None


def _require_utf8(media: tuple[str, dict[str, str]] | None) -> None:
    charset = media[1].get("charset") if media is not None else None
    if charset is not None and charset.lower() not in _UTF8_CHARSETS:
        raise UnsupportedMediaType(f"charset {charset[:40]!r} is not supported; send UTF-8")


def _as_limits(limits: EventLimits | int) -> EventLimits:
    return limits if isinstance(limits, EventLimits) else _limits_for_bytes(limits)


@functools.lru_cache(maxsize=8)
def _limits_for_bytes(max_event_bytes: int) -> EventLimits:
    return EventLimits(max_event_bytes=max_event_bytes)


def now_us() -> int:
    return time.time_ns() // 1000
