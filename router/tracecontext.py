"""W3C Trace Context (``traceparent``, ``tracestate``) parsed and formatted by hand.

Why by hand: the relay parses one ``traceparent`` per event, and the OTel
propagator costs about 9 µs per inject+extract; a valid version-00 header here
is one regex match on a fast path.

Processing model (Trace Context Level 1, with Level 2's random flag):

- ``traceparent`` version 00 is exactly 55 characters. A higher version (never
  ``ff``) is parsed from its first four fields, which must be followed by the
  end or a ``-``, and is re-emitted as version 00, the highest we know, as the
  spec's "downgrade the version" mutation asks. Spaces and tabs around the
  value are optional whitespace and ignored.
- Flags: version 00 keeps the sampled bit (0x01) and Level 2's random-trace-id
  bit (0x02): a trace continued with the same trace id MUST keep the random bit
  as received. Every other bit is reserved and set to zero. From a higher
  version only the sampled bit is taken, as the versioning rules say. New
  traces set the random bit: their ids come whole from ``os.urandom``.
- An invalid ``traceparent`` means a new trace, and its ``tracestate`` is then
  not even parsed (the spec forbids it).
- ``tracestate`` is validated whole: at most 32 list members ``key=value``;
  keys ``(lcalpha / DIGIT) 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@")``
  (the current grammar, which admits every Level 1 ``simple-key`` and
  ``tenant@system`` key); values 1-256 printable ASCII characters without ``,``
  or ``=`` and not ending in a space. Empty members and whitespace around
  members are dropped; several headers are combined with commas. Any invalid
  member discards the whole ``tracestate`` (the spec allows dropping it). A
  key that appears again keeps its leftmost (most recent) entry only: the spec
  lets a vendor discard duplicates it did not add, and the W3C test suite
  requires the ``tracestate`` to survive them.

Which context an event carries (``event_context``):

1. the event's own ``traceparent`` (with its own ``tracestate``), when valid:
   the CloudEvents distributed tracing extension says the event carries the
   context of the trace that started it, and the relay never rewrites it;
2. otherwise the request's ``traceparent``/``tracestate`` headers (what an
   OpenTelemetry-instrumented HTTP client sends), when valid;
3. otherwise a new trace with no ``tracestate``, whose sampled flag says
   whether the relay, its root, samples it (``sample_ratio`` of new trace
   ids, decided as OpenTelemetry's ``TraceIdRatioBased`` does).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import NamedTuple

FLAG_SAMPLED = 0x01
FLAG_RANDOM = 0x02
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_INPUT_CHARS = 64 << 10
"""A ``tracestate`` longer than this is not even split (32 full members fit in 16.4 KiB)."""
TRUNCATE_FIRST_CHARS = 128
"""Members longer than this go first when a ``tracestate`` must be cut, as the spec asks."""

ORIGIN_EVENT, ORIGIN_HEADER, ORIGIN_NEW = "event", "header", "new"

_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_V00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-(0[0-3])")
_ANY = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-.*)?", re.S)
_OWS = " \t"
_TS_MEMBER = re.compile(
    r"[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)


class TraceParent(NamedTuple):
    """A parsed ``traceparent``; a tuple, since one is made for every event."""

    trace_id: str
    span_id: str
    flags: str = "01"

    def format(self) -> str:
        """The header value, always version 00."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & FLAG_SAMPLED)

    @property
    def random(self) -> bool:
        """Level 2: at least the right-most 7 bytes of the trace id are random."""
        return bool(int(self.flags, 16) & FLAG_RANDOM)


def parse_traceparent(value: object) -> TraceParent | None:
    """The parsed header, or None when it is absent or invalid in any way."""
    if not isinstance(value, str):
        return None
    m = _V00.fullmatch(value)
    if m is None:
        return _parse_other(value)
    trace_id, span_id, flags = m.groups()
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, span_id, flags)


def _parse_other(value: str) -> TraceParent | None:
    """The slow path: optional whitespace, reserved flag bits, or a higher version."""
    value = value.strip(_OWS)
    m = _ANY.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00":
        if len(value) != 55:
            return None  # version 00 has exactly four fields
        kept = FLAG_SAMPLED | FLAG_RANDOM
    else:
        kept = FLAG_SAMPLED
    return TraceParent(trace_id, span_id, f"{int(flags, 16) & kept:02x}")


def parse_tracestate(value: object) -> str | None:
    """``tracestate`` normalized (members joined by ``,``), or None when absent, empty or invalid.

    ``value`` is one header value or the values of several headers, in order.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple) and all(isinstance(part, str) for part in value):
        text = ",".join(value)
    else:
        return None
    if not text or len(text) > MAX_TRACESTATE_INPUT_CHARS:
        return None
    members: list[str] = []
    keys: set[str] = set()
    count = 0
    for part in text.split(","):
        member = part.strip(_OWS)
        if not member:
            continue
        count += 1
        if count > MAX_TRACESTATE_MEMBERS or _TS_MEMBER.fullmatch(member) is None:
            return None
        key = member[: member.index("=")]
        if key not in keys:
            keys.add(key)
            members.append(member)
    return ",".join(members) or None


def truncate_tracestate(state: str, max_chars: int) -> str | None:
    """A normalized ``tracestate`` cut to ``max_chars`` by whole members, as the spec says.

    Members over 128 characters go first, then members from the right; None if
    nothing is left.
    """
    if len(state) <= max_chars:
        return state
    members = state.split(",")
    size = len(state)
    while members and size > max_chars:
        big = [i for i, member in enumerate(members) if len(member) > TRUNCATE_FIRST_CHARS]
        gone = members.pop(big[-1] if big else -1)
        size -= len(gone) + 1
    return ",".join(members) or None


class TraceContext(NamedTuple):
    """The trace context an event carries, and where it came from (``ORIGIN_*``)."""

    parent: TraceParent
    state: str | None = None
    origin: str = ORIGIN_NEW


def extract_context(traceparent: object, tracestate: object, origin: str) -> TraceContext | None:
    """The context of one ``traceparent``/``tracestate`` pair, or None when ``traceparent`` is invalid."""
    parent = parse_traceparent(traceparent)
    if parent is None:
        return None  # tracestate MUST NOT be parsed then
    return TraceContext(parent, parse_tracestate(tracestate), origin)


def header_context(headers: Mapping[str, str]) -> TraceContext | None:
    """The context of a request's own ``traceparent``/``tracestate`` headers (lower-case names), if valid.

    Repeated headers must arrive combined with commas (RFC 9110): two
    ``traceparent`` headers then make an invalid one, as the W3C tests expect.
    """
    return extract_context(headers.get("traceparent"), headers.get("tracestate"), ORIGIN_HEADER)


def event_context(
    event: Mapping[str, object], fallback: TraceContext | None = None, sample_ratio: float = 1.0
) -> TraceContext:
    """The context an event carries: its own when valid, else ``fallback`` (the request's), else a new trace.

    A new trace is sampled for ``sample_ratio`` of trace ids.
    """
    parent = parse_traceparent(event.get("traceparent"))
    if parent is not None:
        state = event.get("tracestate")
        return TraceContext(parent, None if state is None else parse_tracestate(state), ORIGIN_EVENT)
    if fallback is not None:
        return fallback
    return TraceContext(new_root(sample_ratio), None, ORIGIN_NEW)


def resolve_trace_context(event: Mapping[str, object], headers: Mapping[str, str]) -> TraceContext:
    """``event_context`` with the fallback taken from request ``headers`` (lower-case names)."""
    return event_context(event, header_context(headers))


class _Ids:
    """Random hex ids cut from a pool of OS randomness, refilled 8 KiB at a time.

    A slice of a string costs far less than a random call per id, and span ids
    are made several times per event.
    """

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def take(self, chars: int) -> str:
        if self._at + chars > len(self._pool):
            self._pool = os.urandom(8192).hex()
            self._at = 0
        out = self._pool[self._at : self._at + chars]
        self._at += chars
        if out.count("0") == chars:  # all-zero ids are invalid
            return self.take(chars)
        return out


_ids = _Ids()


def new_trace_id() -> str:
    return _ids.take(32)


def new_span_id() -> str:
    return _ids.take(16)


def ratio_sampled(trace_id: str, ratio: float) -> bool:
    """Whether ``ratio`` sampling keeps this trace: its low 64 bits under ``ratio`` of 2^64 (``TraceIdRatioBased``)."""
    if ratio >= 1.0:
        return True
    return int(trace_id[16:], 16) < int(max(ratio, 0.0) * (1 << 64))


def is_sampled(flags: str) -> bool:
    """The sampled bit of normalized flags (two lower-case hex digits); a string test, as this runs per hop."""
    return flags[1] in _SAMPLED_DIGITS


_SAMPLED_DIGITS = frozenset("13579bdf")


def new_root(sample_ratio: float = 1.0) -> TraceParent:
    """A new trace started here, sampled for ``sample_ratio`` of trace ids."""
    trace_id = new_trace_id()
    return TraceParent(trace_id, new_span_id(), "03" if ratio_sampled(trace_id, sample_ratio) else "02")


def new_traceparent(sampled: bool = True) -> TraceParent:
    """A new trace; its id is wholly random, so the Level 2 random flag is set."""
    return TraceParent(new_trace_id(), new_span_id(), "03" if sampled else "02")
