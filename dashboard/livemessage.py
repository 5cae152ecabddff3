"""The messages of ``/ws/live``, shaped once for every browser, with no I/O.

Three kinds. The collectors' per-second edge statistics (pub/sub ``meshscope:live``),
forwarded as they are with ``"type": "edges"`` added: each says how old its figures are
(``as_of``, ``late``) and where the collector stands in each stream (``lag``). The relays'
link samples (pub/sub ``meshscope:links``, every link-stats interval per relay), forwarded
as ``"type": "links"`` messages with each link's view state (``meshcore.freshness``): at once
when a link's state, security, route or governance changes, otherwise every few seconds
(RTTs), so a thousand browsers are not sent the same picture every second by every relay.
And the hub's own ``"type": "heartbeat"`` every second: the state of its sources and the
freshness of every region, so a page knows when the feed is silent and why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from meshcore.freshness import LINKS, Reading, judge
from meshcore.viewstate import DOWN, FAILING, clock_refusal, link_view

LINKS_CHANNEL = "meshscope:links"
LINK_REFRESH_S = 5.0
"""A region's link message is forwarded at once when a link changes, else at most this often."""
MAX_LINKS = 1000


def text_of(value: Any, limit: int = 256) -> str:
    """A string field of untrusted JSON, cut to ``limit``; anything else reads as ""."""
    return value[:limit] if isinstance(value, str) else ""


def number_of(value: Any) -> float | None:
    """A number field of untrusted JSON (booleans are not numbers); anything else reads as None."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def json_object(raw: bytes | str) -> dict[str, Any] | None:
    """``raw`` decoded when it is a JSON object; None for anything else."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def edges_message(raw: bytes) -> dict[str, Any] | None:
    """A collector's live message with ``"type": "edges"``; None when it is not a JSON object."""
    data = json_object(raw)
    return None if data is None else {"type": "edges", **data}


def link_shape(
    src: str, dst: str, reported: str, sample_s: float | None, now_s: float, clock: tuple[float, float] = (0.0, 0.0)
) -> dict[str, Any]:
    """The view of one link from its latest sample: ``state`` (``meshcore.viewstate.STATES``), ``cause``,
    ``reported`` (what the relay said) and ``edge_state``, what the edge along it must be shown as
    at least (failing while the link is down or refused, else None). ``clock``: (peer's clock minus
    the relay's in ms, skew the peer accepts in s)."""
    fresh = judge(Reading(LINKS, src, sample_s), now_s)
    offset_ms, accepted_s = clock
    verdict = link_view(reported, fresh, clock_refusal(offset_ms if accepted_s else None, accepted_s, dst))
    return {
        "src": src,
        "dst": dst,
        "state": verdict.state,
        "cause": verdict.cause,
        "reported_state": reported,
        "edge_state": FAILING if verdict.state in (DOWN, FAILING) else None,
        "last_sample": sample_s,
        "clock_offset_ms": round(offset_ms, 1),
        "peer_skew_s": accepted_s,
    }


def links_message(raw: bytes, now_s: float) -> dict[str, Any] | None:
    """A relay's link samples (``{"region", "links": [[ts, relay, src, dst, state, rtt_ms, queue_depth,
    reconnects, security, via, peer_gov, gov, clock_offset_ms, peer_skew_s], ...]}``, the last two or
    six optional) as the browser's ``links`` message; None if malformed."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("links"), list):
        return None
    links = []
    for s in data["links"][:MAX_LINKS]:
        if not isinstance(s, list) or len(s) not in (8, 12, 14):
            continue
        security, via, peer_gov, gov = (text_of(v) for v in s[8:12]) if len(s) >= 12 else ("", "", "", "")
        offset, skew = (number_of(v) or 0.0 for v in s[12:14]) if len(s) == 14 else (0.0, 0.0)
        ts = number_of(s[0])
        reported = text_of(s[4], 16)
        link = link_shape(text_of(s[2]), text_of(s[3]), reported, ts / 1e6 if ts else None, now_s, (offset, skew))
        link.update(
            {
                "rtt_ms": number_of(s[5]),
                "queue_depth": int(number_of(s[6]) or 0),
                "reconnects": int(number_of(s[7]) or 0),
                "security": security,
                "via": via,
                "gov": peer_gov,
                "local_gov": gov,
                "governance_mismatch": bool(reported == "up" and peer_gov and gov and peer_gov != gov),
            }
        )
        links.append(link)
    return {"type": "links", "region": text_of(data.get("region")), "links": links}


class LinkChanges:
    """Which link messages to forward: a region's at once when any link's state, security, route or
    governance differs from what was last forwarded, otherwise once per ``refresh_s`` (for RTTs)."""

    def __init__(self, refresh_s: float = LINK_REFRESH_S):
        self.refresh_s = refresh_s
        self._last: dict[str, tuple[float, Any]] = {}

    def forward(self, message: Mapping[str, Any], now_s: float) -> bool:
        region = message["region"]
        shape = tuple(
            (x["src"], x["dst"], x["state"], x["cause"], x["security"], x["via"], x["governance_mismatch"])
            for x in message["links"]
        )
        last = self._last.get(region)
        if last is not None and last[1] == shape and now_s - last[0] < self.refresh_s:
            return False
        if len(self._last) > MAX_LINKS:
            self._last.clear()
        self._last[region] = (now_s, shape)
        return True
