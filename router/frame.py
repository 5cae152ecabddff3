"""Mesh frames between relays: versioned, batched, one encoding (orjson), validated field by field.

A frame is a JSON object ``{"v": 2, "t": TYPE, ...}``. Each relay pair runs two
connections, one dialed by each side, as NATS gateways do; the dialer sends
HELLO, EVENTS, PING and GOVPROP, the accepting relay answers HELLO, INTEREST,
ROUTES, ACK, PONG and GOVRES; GOV goes both ways::

    HELLO     {"region", "relay", "provider", "lat", "lon", "city", "gov",
               "gov_home", "gov_cut_off",      (optional: the governance authority the sender
                                               follows, and whether it is cut off from it now)
               "ts", "skew_s", "clock_ok"}     (optional: the sender's clock in µs, the skew it
                                               accepts, whether its peers accept its clock)
    INTEREST  {"lsa": LSA}                     the sender's own link state, pushed on change
    ROUTES    {"lsas": [LSA, ...]}             link states the sender knows of other regions
    EVENTS    {"b": [ITEM, ...]}
    ACK       {"a": [[origin, epoch, first, last], ...]}   applied (or refused) at the destination
              [, "r": [[origin, epoch, high], ...]]        the origin's sequence is behind: see below
    PING/PONG {"ts": µs}                       liveness and RTT, echoed; a PONG adds "now": the
                                               answering relay's clock (µs), for the clock offset
    GOV       {"version", "digest", "doc"}     a governance document (its registry JSON, as text)
    GOVPROP   {"id", "base", "author", "content"}   a change for the authority, made on version ``base``
    GOVRES    {"id", "status", "version", "doc", "error", "path", "reasons"}   the authority's answer

    LSA   {"region", "seq", "links": {region: rtt_ms}, "patterns": [...], "transit": bool}
    ITEM  [origin, epoch, seq, floor, high, dst, path, span_id, sent_us, published_us, attempt,
           principal, event(, [prev_epoch, base])]

An ITEM is one event on its way from ``origin`` to ``dst``: ``seq`` numbers it
in the origin's sequence for that destination (``epoch`` names that sequence;
``floor`` is the lowest number the origin still holds, ``high`` the highest it
assigned), ``path`` lists the relays it went through (origin first; the last
one is the relay that sent this frame), ``span_id`` is the sender's hop span.
The optional last field is the sequence's lineage: the epoch continues
``prev_epoch``, whose numbers below ``base`` it still sends (the same events
under the same numbers; an origin whose store lost writes continues so,
``router.origin``). An ACK's ``r`` tells an origin that the destination applied
numbers up to ``high`` of ``epoch`` beyond what the origin now claims: its
sequence went back, and it must continue in a new epoch.

A HELLO's ``ts`` is the sender's clock when it sent it, ``skew_s`` the largest clock
difference it accepts in what it receives, and ``clock_ok`` false when the sender found
its own clock too far from most of its peers' (each optional, for older relays).

Everything a peer sends is untrusted input, checked as strictly as a publish:
``decode`` refuses anything that is not a known v2 frame (the connection is
closed), ``items_of`` checks each ITEM and returns the bad ones separately with
the reason, so one bad event is refused (and acknowledged, so it is not sent
forever) without losing the rest of the frame. A governance document is
checked again as a whole (its digest recomputed) by ``meshcore.governance``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from meshcore.governance import VERSION_ID
from meshcore.names import PRINCIPAL, SPAN_ID, is_region_id
from meshcore.topic import InvalidTopic, validate_pattern
from router.errors import FrameError

VERSION = 2
HELLO, INTEREST, ROUTES, EVENTS, ACK, PING, PONG = "HELLO", "INTEREST", "ROUTES", "EVENTS", "ACK", "PING", "PONG"
GOV, GOVPROP, GOVRES = "GOV", "GOVPROP", "GOVRES"
TYPES = frozenset((HELLO, INTEREST, ROUTES, EVENTS, ACK, PING, PONG, GOV, GOVPROP, GOVRES))

MAX_ITEMS = 1000
MAX_PATTERNS = 1000
MAX_REGIONS = 256
MAX_ACK_RANGES = 10_000
MAX_SEQ = (1 << 63) - 1
MAX_ATTEMPT = 1_000_000
MAX_HOPS = 16
EPOCH_LENGTH = 16
_HEX = frozenset("0123456789abcdef")
MAX_DOCUMENT_CHARS = 16 << 20  # a frame is bounded by the link's max_size first
PROPOSAL_ID = re.compile(r"[0-9a-f]{16}")
RESULT_STATUSES = frozenset((200, 400, 409, 421, 503))
MAX_ERROR = 1000
MAX_REASONS = 100


@dataclass(frozen=True, slots=True)
class Item:
    """One event in an EVENTS frame, with its routing and hop context."""

    origin: str
    epoch: str
    seq: int
    floor: int
    high: int
    dst: str
    path: tuple[str, ...]
    span_id: str
    sent_us: int
    published_us: int
    attempt: int
    principal: str
    event: dict[str, Any]
    lineage: tuple[str, int] | None = None  # (previous epoch, base): numbers below base are that epoch's

    def row(self) -> list[Any]:
        row = [
            self.origin,
            self.epoch,
            self.seq,
            self.floor,
            self.high,
            self.dst,
            list(self.path),
            self.span_id,
            self.sent_us,
            self.published_us,
            self.attempt,
            self.principal,
            self.event,
        ]
        if self.lineage is not None:
            row.append(list(self.lineage))
        return row


@dataclass(frozen=True, slots=True)
class BadItem:
    """An ITEM that failed validation; ``key`` (origin, epoch, seq) when those parsed, to acknowledge it.

    ``event`` is the item's event object and ``span_id`` the sender's hop span, when they are
    there to read (still untrusted), so a refusal record can name the event and its trace.
    """

    index: int
    reason: str
    key: tuple[str, str, int] | None
    event: dict[str, Any] | None = None
    span_id: str = ""


@dataclass(frozen=True, slots=True)
class LinkStateAd:
    """A region's link state advertisement: its up links with RTT, and its subscription patterns."""

    region: str
    seq: int
    links: dict[str, float]
    patterns: tuple[str, ...]
    transit: bool = True  # whether the region carries other regions' events on detours

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "seq": self.seq,
            "links": self.links,
            "patterns": list(self.patterns),
            "transit": self.transit,
        }


def encode(kind: str, **fields: Any) -> bytes:
    if kind not in TYPES:
        raise ValueError(f"unknown frame type {kind!r}")
    return orjson.dumps({"v": VERSION, "t": kind, **fields})


def encode_item(item: Item) -> bytes:
    """One ITEM's JSON, so the sender can size frames before joining them."""
    return orjson.dumps(item.row())


def encode_events(encoded_items: list[bytes]) -> bytes:
    return b'{"v":2,"t":"EVENTS","b":[' + b",".join(encoded_items) + b"]}"


def decode(data: bytes | str) -> dict[str, Any]:
    """Decode one frame; raise FrameError on anything that is not a known v2 frame."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise FrameError("frame must be a JSON object")
    if frame.get("v") != VERSION:
        raise FrameError(f"unsupported frame version {str(frame.get('v'))[:20]!r}")
    if frame.get("t") not in TYPES:
        raise FrameError(f"unknown frame type {str(frame.get('t'))[:20]!r}")
    return frame


# ---- field checks -------------------------------------------------------------------------


def _int(value: object, low: int, high: int, what: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise FrameError(f"{what} must be a whole number from {low} to {high}")
    return value


def _region(value: object, what: str) -> str:
    if not is_region_id(value):
        raise FrameError(f"{what} is not a region id")
    return str(value)


def _str(value: object, max_length: int, what: str) -> str:
    if not isinstance(value, str) or len(value) > max_length:
        raise FrameError(f"{what} must be a string of at most {max_length} characters")
    return value


def _number(value: object, low: float, high: float, what: str) -> float:
    if type(value) not in (int, float) or not low <= float(value) <= high:  # type: ignore[arg-type]
        raise FrameError(f"{what} must be a number from {low} to {high}")
    return float(value)  # type: ignore[arg-type]


MAX_SKEW_S = 86_400.0 * 365


def hello_of(frame: dict[str, Any]) -> dict[str, Any]:
    """The checked fields of a HELLO (``ts`` None, ``skew_s`` 0 and ``clock_ok`` true when not sent).

    ``replicates`` says whether the sender takes GOV frames (its HELLO names a governance home field).
    """
    home = frame.get("gov_home", "")
    if home != "" and not is_region_id(home):
        raise FrameError("HELLO gov_home is not a region id")
    cut_off = frame.get("gov_cut_off", False)
    if not isinstance(cut_off, bool):
        raise FrameError("HELLO gov_cut_off must be true or false")
    ts = frame.get("ts")
    clock_ok = frame.get("clock_ok", True)
    if not isinstance(clock_ok, bool):
        raise FrameError("HELLO clock_ok must be true or false")
    return {
        "region": _region(frame.get("region"), "HELLO region"),
        "relay": _str(frame.get("relay"), 128, "HELLO relay"),
        "provider": _str(frame.get("provider"), 32, "HELLO provider"),
        "lat": _number(frame.get("lat"), -90, 90, "HELLO lat"),
        "lon": _number(frame.get("lon"), -180, 180, "HELLO lon"),
        "city": _str(frame.get("city"), 128, "HELLO city"),
        "gov": _str(frame.get("gov", ""), 128, "HELLO gov"),
        "gov_home": str(home),
        "gov_cut_off": cut_off,
        "replicates": "gov_home" in frame,
        "ts": None if ts is None else _int(ts, 0, MAX_SEQ, "HELLO ts"),
        "skew_s": _number(frame.get("skew_s", 0), 0, MAX_SKEW_S, "HELLO skew_s"),
        "clock_ok": clock_ok,
    }


# ---- governance ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    """A change sent to the governance authority: content made on version ``base`` by ``author``."""

    id: str
    base: str
    author: str
    content: str


@dataclass(frozen=True, slots=True)
class Result:
    """The authority's answer to a proposal: 200 with the new document, or a refusal."""

    id: str
    status: int
    version: str
    doc: str
    error: str
    path: str
    reasons: tuple[str, ...]


def _version_id(value: object, what: str) -> str:
    if not isinstance(value, str) or VERSION_ID.fullmatch(value) is None:
        raise FrameError(f"{what} is not a governance version id")
    return value


def document_of(frame: dict[str, Any]) -> tuple[str, str]:
    """(version id, document text) of a GOV; the text is then read by ``meshcore.governance.from_json``."""
    version = _int(frame.get("version"), 1, MAX_SEQ, "GOV version")
    digest = frame.get("digest")
    if not isinstance(digest, str) or len(digest) != 12 or not set(digest) <= _HEX:
        raise FrameError("GOV digest must be 12 lower-case hex digits")
    doc = _str(frame.get("doc"), MAX_DOCUMENT_CHARS, "GOV doc")
    return f"{version}-{digest}", doc


def proposal_of(frame: dict[str, Any]) -> Proposal:
    pid = frame.get("id")
    if not isinstance(pid, str) or PROPOSAL_ID.fullmatch(pid) is None:
        raise FrameError("GOVPROP id must be 16 lower-case hex digits")
    author = frame.get("author")
    if not isinstance(author, str) or PRINCIPAL.fullmatch(author) is None:
        raise FrameError("GOVPROP author is not a principal name")
    return Proposal(
        pid,
        _version_id(frame.get("base"), "GOVPROP base"),
        author,
        _str(frame.get("content"), MAX_DOCUMENT_CHARS, "GOVPROP content"),
    )


def result_of(frame: dict[str, Any]) -> Result:
    pid = frame.get("id")
    if not isinstance(pid, str) or PROPOSAL_ID.fullmatch(pid) is None:
        raise FrameError("GOVRES id must be 16 lower-case hex digits")
    status = frame.get("status")
    if type(status) is not int or status not in RESULT_STATUSES:
        raise FrameError(f"GOVRES status must be one of {sorted(RESULT_STATUSES)}")
    version = frame.get("version", "")
    if version != "":
        version = _version_id(version, "GOVRES version")
    doc = _str(frame.get("doc", ""), MAX_DOCUMENT_CHARS, "GOVRES doc")
    if status == 200 and not (version and doc):
        raise FrameError("a GOVRES of 200 carries the version and its document")
    reasons = frame.get("reasons", [])
    if not isinstance(reasons, list) or len(reasons) > MAX_REASONS:
        raise FrameError(f"GOVRES reasons must be a list of at most {MAX_REASONS}")
    return Result(
        pid,
        status,
        str(version),
        doc,
        _str(frame.get("error", ""), MAX_ERROR, "GOVRES error"),
        _str(frame.get("path", ""), MAX_ERROR, "GOVRES path"),
        tuple(_str(r, MAX_ERROR, "GOVRES reason") for r in reasons),
    )


def lsa_of(obj: object) -> LinkStateAd:
    if not isinstance(obj, dict):
        raise FrameError("a link state must be an object")
    region = _region(obj.get("region"), "link state region")
    seq = _int(obj.get("seq"), 0, MAX_SEQ, "link state seq")
    links = obj.get("links")
    if not isinstance(links, dict) or len(links) > MAX_REGIONS:
        raise FrameError(f"link state links must be an object of at most {MAX_REGIONS} regions")
    checked = {_region(peer, "link state peer"): _number(rtt, 0, 3_600_000, "link RTT") for peer, rtt in links.items()}
    patterns = obj.get("patterns")
    if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
        raise FrameError(f"link state patterns must be a list of at most {MAX_PATTERNS}")
    try:
        pats = tuple(validate_pattern(p) for p in patterns)
    except InvalidTopic as exc:
        raise FrameError(f"link state pattern: {exc}") from None
    transit = obj.get("transit", True)
    if not isinstance(transit, bool):
        raise FrameError("link state transit must be true or false")
    return LinkStateAd(region, seq, checked, pats, transit)


def lsas_of(frame: dict[str, Any]) -> list[LinkStateAd]:
    if frame["t"] == INTEREST:
        return [lsa_of(frame.get("lsa"))]
    lsas = frame.get("lsas")
    if not isinstance(lsas, list) or len(lsas) > MAX_REGIONS:
        raise FrameError(f"ROUTES must carry a list of at most {MAX_REGIONS} link states")
    return [lsa_of(x) for x in lsas]


def acks_of(frame: dict[str, Any]) -> list[tuple[str, str, int, int]]:
    ranges = frame.get("a")
    if not isinstance(ranges, list) or len(ranges) > MAX_ACK_RANGES:
        raise FrameError(f"ACK must carry a list of at most {MAX_ACK_RANGES} ranges")
    out = []
    for r in ranges:
        if not isinstance(r, list) or len(r) != 4:
            raise FrameError("an ACK range is [origin, epoch, first, last]")
        origin = _region(r[0], "ACK origin")
        epoch = _epoch(r[1])
        first = _int(r[2], 1, MAX_SEQ, "ACK first")
        last = _int(r[3], first, MAX_SEQ, "ACK last")
        out.append((origin, epoch, first, last))
    return out


def behind_of(frame: dict[str, Any]) -> list[tuple[str, str, int]]:
    """An ACK's notices that the receiver applied more of an origin's sequence than the origin claims."""
    notices = frame.get("r", [])
    if not isinstance(notices, list) or len(notices) > MAX_ACK_RANGES:
        raise FrameError(f"ACK r must be a list of at most {MAX_ACK_RANGES} notices")
    out = []
    for n in notices:
        if not isinstance(n, list) or len(n) != 3:
            raise FrameError("an ACK notice is [origin, epoch, high]")
        out.append((_region(n[0], "ACK notice origin"), _epoch(n[1]), _int(n[2], 1, MAX_SEQ, "ACK notice high")))
    return out


def ts_of(frame: dict[str, Any]) -> int:
    return _int(frame.get("ts"), 0, MAX_SEQ, f"{frame['t']} ts")


def pong_of(frame: dict[str, Any]) -> tuple[int, int | None]:
    """A PONG's echoed ``ts`` and the answering relay's clock ``now`` (None from a relay that sends none)."""
    now = frame.get("now")
    return ts_of(frame), None if now is None else _int(now, 0, MAX_SEQ, "PONG now")


def _epoch(value: object) -> str:
    if not isinstance(value, str) or len(value) != EPOCH_LENGTH or not set(value) <= _HEX:
        raise FrameError(f"epoch must be {EPOCH_LENGTH} lower-case hex digits")
    return value


def items_of(
    frame: dict[str, Any], sender: str, receiver: str, now_us: int, max_age_us: int, skew_us: int, hop_limit: int
) -> tuple[list[Item], list[BadItem]]:
    """The ITEMs of an EVENTS frame from authenticated ``sender``; malformed ones come back as BadItems.

    The event itself (the CloudEvent) is checked by the caller with the same validation as a publish.
    """
    batch = frame.get("b")
    if not isinstance(batch, list) or len(batch) > MAX_ITEMS:
        raise FrameError(f"EVENTS must carry a list of at most {MAX_ITEMS} items")
    good: list[Item] = []
    bad: list[BadItem] = []
    for i, row in enumerate(batch):
        key: tuple[str, str, int] | None = None
        try:
            if not isinstance(row, list) or len(row) not in (13, 14):
                raise FrameError("an item must be an array of 13 fields, or 14 with its lineage")
            origin = _region(row[0], "origin")
            epoch = _epoch(row[1])
            seq = _int(row[2], 1, MAX_SEQ, "seq")
            key = (origin, epoch, seq)
            floor = _int(row[3], 1, seq, "floor")
            high = _int(row[4], seq, MAX_SEQ, "high")
            dst = _region(row[5], "dst")
            path = row[6]
            if not isinstance(path, list) or not 1 <= len(path) <= min(hop_limit, MAX_HOPS):
                raise FrameError(f"path must list 1 to {min(hop_limit, MAX_HOPS)} regions")
            hops = tuple(_region(p, "path region") for p in path)
            if hops[0] != origin or hops[-1] != sender or len(set(hops)) != len(hops):
                raise FrameError("path must start at the origin, end at the sending relay and not repeat")
            if receiver in hops or dst in hops:
                raise FrameError("the item has already passed through this relay or its destination")
            span_id = row[7]
            if not isinstance(span_id, str) or SPAN_ID.fullmatch(span_id) is None or span_id == "0" * 16:
                raise FrameError("span_id must be 16 lower-case hex digits, not all zero")
            sent_us = _int(row[8], now_us - skew_us, now_us + skew_us, "sent_us (too old or in the future)")
            published_us = _int(row[9], now_us - max_age_us, sent_us + skew_us, "published_us")
            attempt = _int(row[10], 1, MAX_ATTEMPT, "attempt")
            principal = row[11]
            if not isinstance(principal, str) or (principal and PRINCIPAL.fullmatch(principal) is None):
                raise FrameError("principal is not a principal name")
            event = row[12]
            if not isinstance(event, dict):
                raise FrameError("event must be a JSON object")
            lineage = None
            if len(row) == 14:
                if not isinstance(row[13], list) or len(row[13]) != 2:
                    raise FrameError("lineage must be [previous epoch, base]")
                prev = _epoch(row[13][0])
                if prev == epoch:
                    raise FrameError("an epoch cannot continue itself")
                lineage = (prev, _int(row[13][1], 1, high + 1, "lineage base"))
            good.append(
                Item(
                    origin,
                    epoch,
                    seq,
                    floor,
                    high,
                    dst,
                    hops,
                    span_id,
                    sent_us,
                    published_us,
                    attempt,
                    principal,
                    event,
                    lineage,
                )
            )
        except FrameError as exc:
            readable = isinstance(row, list) and len(row) == 13
            body = row[12] if readable and isinstance(row[12], dict) else None
            span = row[7] if readable and isinstance(row[7], str) and SPAN_ID.fullmatch(row[7]) else ""
            bad.append(BadItem(i, str(exc), key, body, span))
    return good, bad
