"""The CloudEvents HTTP protocol binding 1.0: which content mode a request uses, and its events.

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

Every value from a request is hostile: header text outside printable ASCII,
unbalanced quotes, a stray ``%`` and bytes that are not UTF-8 are refused
with a ``MalformedEvent`` naming the header; a content type or charset we
cannot read is ``UnsupportedMediaType`` (415). No I/O.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import orjson

from router.envelope import (
    DECODE_STEP,
    DEFAULT_LIMITS,
    Event,
    EventLimits,
    as_limits,
    finish,
    structured_steps,
    validate_event,
)
from router.errors import MalformedEvent, UnsupportedMediaType
from router.grammar import media_type
from router.tracecontext import header_context

STRUCTURED, BINARY = "structured", "binary"
STRUCTURED_TYPES = frozenset(("application/cloudevents+json", "application/cloudevents-batch+json"))

_QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'
_UTF8_CHARSETS = frozenset(("utf-8", "utf8", "us-ascii"))
_HEADER_TEXT = re.compile(r"[\t\x20-\x7e]*")
_QUOTED = re.compile(_QUOTED_STRING)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_PERCENT_ENCODED = re.compile(r"(?:[^%]|%[0-9A-Fa-f]{2})*")
_OWS = " \t"


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
    limits = as_limits(limits)
    mode = content_mode(headers)
    context = header_context(headers)
    if mode == STRUCTURED:
        return (yield from structured_steps(body, limits, context, step))
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
