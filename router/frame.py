"""Mesh frames between relays: versioned, batched, one encoding (orjson).

A frame is a JSON object ``{"v": 1, "t": TYPE, ...}``. The dialing relay sends
HELLO, EVENTS and PING; the accepting relay answers HELLO, INTEREST, ACK and
PONG. Events travel one way per connection, so every relay pair runs two
connections, one dialed by each side, as NATS gateways do.

    HELLO     {"region", "relay", "provider", "lat", "lon"}
    INTEREST  {"patterns": [...], "gen": n}       full set, newest gen wins
    EVENTS    {"b": [[seq, span_id, sent_us, published_us, attempt, size, event], ...]}
    ACK       {"seq": n}                           everything up to n arrived
    PING/PONG {"ts": µs}                           RTT probe, echoed
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import FrameError

VERSION = 1
HELLO, INTEREST, EVENTS, ACK, PING, PONG = "HELLO", "INTEREST", "EVENTS", "ACK", "PING", "PONG"
TYPES = frozenset((HELLO, INTEREST, EVENTS, ACK, PING, PONG))


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """One event inside an EVENTS frame with its hop context."""

    seq: int
    span_id: str
    sent_us: int
    published_us: int
    attempt: int
    size: int
    body: dict[str, Any]


def encode(kind: str, **fields: Any) -> bytes:
    if kind not in TYPES:
        raise ValueError(f"unknown frame type {kind!r}")
    return orjson.dumps({"v": VERSION, "t": kind, **fields})


def encode_events(batch: list[MeshEvent]) -> bytes:
    return orjson.dumps(
        {
            "v": VERSION,
            "t": EVENTS,
            "b": [[e.seq, e.span_id, e.sent_us, e.published_us, e.attempt, e.size, e.body] for e in batch],
        }
    )


def decode(data: bytes | str) -> dict[str, Any]:
    """Decode one frame; raise FrameError on anything that is not a known v1 frame."""
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise FrameError("frame must be a JSON object")
    if frame.get("v") != VERSION:
        raise FrameError(f"unsupported frame version {frame.get('v')!r}")
    if frame.get("t") not in TYPES:
        raise FrameError(f"unknown frame type {frame.get('t')!r}")
    return frame


def events_of(frame: dict[str, Any]) -> list[MeshEvent]:
    """The events of a decoded EVENTS frame; raise FrameError when malformed."""
    batch = frame.get("b")
    if not isinstance(batch, list):
        raise FrameError("EVENTS frame without a batch")
    out = []
    for item in batch:
        if not isinstance(item, list) or len(item) != 7 or not isinstance(item[6], dict):
            raise FrameError("malformed event in EVENTS frame")
        seq, span_id, sent_us, published_us, attempt, size, body = item
        if not (
            isinstance(seq, int)
            and isinstance(span_id, str)
            and isinstance(sent_us, int)
            and isinstance(published_us, int)
            and isinstance(attempt, int)
            and isinstance(size, int)
        ):
            raise FrameError("malformed hop context in EVENTS frame")
        out.append(MeshEvent(seq, span_id, sent_us, published_us, attempt, size, body))
    return out
