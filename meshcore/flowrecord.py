"""The flow record: one row per event per hop, the one contract with the collector.

Records are packed many to a Redis stream entry: the entry's field ``r`` holds an
orjson array of columns, one per field in ``FIELDS`` order, each with one value
per record; ``v`` is the format version. One XADD per record costs ~30 µs of
client time, one per few hundred records costs well under 1 µs per record.

Version 3 packs columns where versions 1 and 2 packed rows (arrays of one
record's values): the collector inserts columns, and parsing 20 arrays of N
values and checking them needs about half the CPU of parsing N arrays of 20
and turning them around; the relay's cost of packing either is the same.
Entries of every version are read.

Version 2 adds ``principal`` (who published), ``via`` (the next hop of a
forward, the previous hop of a deliver: another region than the edge's own
when the event took a detour), ``seq_end`` (the last sequence number a ``gap``
record stands for; 0 otherwise) and ``dataschema`` (the schema version the
event was validated against; on a ``policy_denied`` drop, ``policy:<rule id>``,
the rule that decided, so both kinds of refusal name what refused them). Version 1 entries are still read, with those
fields empty.

``span_id`` identifies a record: every hop of every attempt gets its own.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

FORMAT_VERSION = b"3"
FORMAT_VERSION_2 = b"2"
FORMAT_VERSION_1 = b"1"

# Kinds of hop, and the statuses a record may carry, each kept in one place.
# publish: accepted at the origin; forward: sent towards a destination region (``via`` names the
# next hop); transit: passed on by a relay between origin and destination; deliver: handed to
# subscribers in the destination; drop: lost or refused, ``status`` says why
PUBLISH, FORWARD, TRANSIT, DELIVER, DROP = "publish", "forward", "transit", "deliver", "drop"
KINDS = (PUBLISH, FORWARD, TRANSIT, DELIVER, DROP)

OK = "ok"
SCHEMA_REJECTED = "schema_rejected"
POLICY_DENIED = "policy_denied"
NO_ROUTE = "no_route"
LINK_DOWN = "link_down"
BACKPRESSURE = "backpressure"
DELIVERY_FAILED = "delivery_failed"
EXPIRED = "expired"
DUPLICATE = "duplicate"
MALFORMED = "malformed"  # not a valid CloudEvent (refused at the edge, 400)
GAP = "gap"  # sequence numbers of an edge that never arrived: ``seq``..``seq_end``
# flow records a full region stream gave up before a collector had them: ``seq`` of them, the oldest
# ``e2e_ms`` old (the record names no event; ``src_region`` = ``dst_region`` = the region)
TRIMMED = "trimmed"
# the origin's store went back: numbers from ``seq`` it assigned before and had not sent may be lost (how many
# is unknown; the destination names those it had been told of as ``gap``)
ROLLED_BACK = "rolled_back"
STATUSES = (
    OK,
    SCHEMA_REJECTED,
    POLICY_DENIED,
    NO_ROUTE,
    LINK_DOWN,
    BACKPRESSURE,
    DELIVERY_FAILED,
    EXPIRED,
    DUPLICATE,
    MALFORMED,
    GAP,
    TRIMMED,
    ROLLED_BACK,
)
# statuses that mean an accepted event was lost (the rest are refusals or duplicates)
LOSSES = frozenset((LINK_DOWN, BACKPRESSURE, DELIVERY_FAILED, EXPIRED, GAP))

FIELDS = (
    "ts",
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "topic",
    "kind",
    "src_region",
    "dst_region",
    "relay",
    "hop_ms",
    "e2e_ms",
    "status",
    "bytes",
    "attempt",
    "seq",
    "principal",
    "via",
    "seq_end",
    "dataschema",
)
_V1_WIDTH = 16


class FlowRecord(NamedTuple):
    """One hop of one event. A tuple: packing a batch costs well under a microsecond a record."""

    ts: int  # µs since the epoch
    event_id: str
    trace_id: str
    span_id: str
    parent_span_id: str
    topic: str
    kind: str
    src_region: str
    dst_region: str
    relay: str
    hop_ms: float
    e2e_ms: float
    status: str
    bytes: int
    attempt: int
    seq: int
    principal: str = ""
    via: str = ""
    seq_end: int = 0
    dataschema: str = ""


class RecordDecodeError(ValueError):
    """A stream entry that is not a packed batch of flow records."""


def pack(records: list[FlowRecord]) -> dict[bytes, bytes]:
    """The stream entry fields for a batch of records."""
    columns = list(zip(*records, strict=True)) if records else [() for _ in FIELDS]
    return {b"v": FORMAT_VERSION, b"r": orjson.dumps(columns)}


# The Python types each field may have after JSON decoding, column by column.
_INT = frozenset((int,))
_STR = frozenset((str,))
_NUM = frozenset((int, float))
_COLUMN_TYPES = (
    *(_INT, _STR, _STR, _STR, _STR, _STR, _STR, _STR, _STR, _STR, _NUM, _NUM, _STR, _INT, _INT, _INT),
    *(_STR, _STR, _INT, _STR),
)
_V1_DEFAULTS = ("", "", 0, "")
_KINDS = frozenset(KINDS)
_STATUSES = frozenset(STATUSES)


def unpack_columns(fields: dict[Any, Any]) -> list[list[Any]]:
    """The records of one stream entry as one list per field (FIELDS order), checked.

    Raises RecordDecodeError when the entry is not a packed batch of valid records.
    """
    version = fields.get(b"v", fields.get("v"))
    if isinstance(version, str):
        version = version.encode()
    if version not in (FORMAT_VERSION, FORMAT_VERSION_2, FORMAT_VERSION_1):
        raise RecordDecodeError(f"unknown flow record format version {version!r}")
    raw = fields.get(b"r", fields.get("r"))
    if raw is None:
        raise RecordDecodeError("entry has no records field 'r'")
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RecordDecodeError(f"records are not JSON: {exc}") from None
    if not isinstance(decoded, list):
        raise RecordDecodeError("records must be a JSON array")
    if version == FORMAT_VERSION:
        columns = decoded
        if len(columns) != len(FIELDS) or not all(type(c) is list for c in columns):
            raise RecordDecodeError(f"records must be {len(FIELDS)} arrays, one per field")
        if len(set(map(len, columns))) != 1:
            raise RecordDecodeError("every field must have one value per record")
        if not columns[0]:
            return [[] for _ in FIELDS]
    else:
        rows = decoded
        width = len(FIELDS) if version == FORMAT_VERSION_2 else _V1_WIDTH
        if not all(type(row) is list and len(row) == width for row in rows):
            raise RecordDecodeError(f"every record must be an array of {width} fields")
        if width == _V1_WIDTH:
            rows = [[*row, *_V1_DEFAULTS] for row in rows]
        if not rows:
            return [[] for _ in FIELDS]
        columns = [list(c) for c in zip(*rows, strict=True)]
    # checked column by column: set(map(type, ...)) runs in C, a loop per value would not
    for name, column, allowed in zip(FIELDS, columns, _COLUMN_TYPES, strict=True):
        if not set(map(type, column)) <= allowed:
            raise RecordDecodeError(f"field {name} has the wrong type in some record")
    if not set(columns[6]) <= _KINDS:
        raise RecordDecodeError(f"unknown kind in {sorted(set(columns[6]) - _KINDS)!r}")
    if not set(columns[12]) <= _STATUSES:
        raise RecordDecodeError(f"unknown status in {sorted(set(columns[12]) - _STATUSES)!r}")
    return columns


def unpack_rows(fields: dict[Any, Any]) -> list[list[Any]]:
    """The records of one stream entry as rows, checked as ``unpack_columns`` checks them."""
    return [list(row) for row in zip(*unpack_columns(fields), strict=True)]


def unpack(fields: dict[Any, Any]) -> list[FlowRecord]:
    return [FlowRecord(*row) for row in unpack_rows(fields)]


def loose_rows(fields: dict[Any, Any]) -> list[list[Any]] | None:
    """An entry's rows as written, of any version, unchecked (None when they are not arrays of arrays).

    For readers that only look (what a trimmed entry stood for, a fault drill's report); the
    collector checks every value with ``unpack_columns``.
    """
    version = fields.get(b"v", fields.get("v"))
    try:
        decoded = orjson.loads(fields.get(b"r", fields.get("r")) or b"[]")
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(decoded, list) or not all(type(x) is list for x in decoded):
        return None
    if version in (FORMAT_VERSION, FORMAT_VERSION.decode()):
        if len(set(map(len, decoded))) > 1:
            return None
        return [list(row) for row in zip(*decoded, strict=True)]
    return decoded
