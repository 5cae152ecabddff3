"""What the relays reported at a past moment, for the Routes and Governance views in time travel,
with no I/O.

A relay's report (``meshscope:relaystate``) holds only the present. The past comes from two
histories: the link samples in ClickHouse (``dashboard.queries.links_sql`` at the window's end:
per link its state, security, RTT, the region a route to the peer detoured through, and both
ends' governance versions), and the governance registry's versions
(``meshscope:{governance}:versions``: every document with the time it was applied). From them:
each relay's links and the next hop it used towards each peer as at the moment (a route's full
path beyond the detour and its cost are not kept: they are ``None``), which version each relay
enforced, which links joined different versions, and the document in force then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from dashboard.livemessage import json_object
from dashboard.relaystate import STALE_S, document_view

Row = Sequence[Any]


def _relays(rows: Sequence[Row], end_s: float) -> dict[str, dict[str, Any]]:
    """Per source region, its links (from the newest sample of each at ``end_s``) as a report would hold them."""
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (str(r[0]), str(r[1]))):
        src, dst, state, rtt, queue, reconnects, ts, security, via, peer_gov, gov = row[:11]
        src, dst, via, ts = str(src), str(dst), str(via or ""), float(ts)
        relay = out.setdefault(src, {"region": src, "relay": "", "ts": ts, "governance": str(gov or ""), "links": []})
        if ts >= relay["ts"]:
            relay["ts"], relay["governance"] = ts, str(gov or "")
        relay["links"].append(
            {
                "peer": dst,
                "state": str(state),
                "security": str(security or ""),
                "rtt_ms": round(float(rtt), 3),
                "queue_depth": int(queue),
                "reconnects": int(reconnects),
                "via": via,
                "gov": str(peer_gov or ""),
                "governance_mismatch": bool(peer_gov) and bool(gov) and peer_gov != gov,
                "last_error": "",
                "sampled_at": round(ts, 3),
            }
        )
    for relay in out.values():
        relay["ts"] = round(relay["ts"], 3)
        relay["age_s"] = round(max(0.0, end_s - relay["ts"]), 3)
        relay["stale"] = end_s - relay["ts"] > STALE_S
    return out


def routes_at(rows: Sequence[Row], end_s: float) -> dict[str, Any]:
    """The Routes view as at ``end_s``: each relay's links and, per peer, the next hop it used then."""
    relays = []
    for relay in _relays(rows, end_s).values():
        routes = [
            {
                "dst": link["peer"],
                "next_hop": link["via"] or link["peer"],
                "path": [link["via"], link["peer"]] if link["via"] else [link["peer"]],
                "cost_ms": None,
                "direct": not link["via"],
            }
            for link in relay["links"]
        ]
        relays.append({**relay, "routes": routes})
    return {"relays": relays, "at": end_s, "from_history": True}


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def document_at(versions: Mapping[Any, Any], end_s: float) -> dict[str, Any] | None:
    """The governance document in force at ``end_s``: the newest version applied by then (None: none was)."""
    best: tuple[int, Any] | None = None
    for raw in versions.values():
        data = json_object(raw)
        if data is None or not isinstance(data.get("version"), int):
            continue
        applied = _epoch(data.get("changed_at"))
        if applied is None or applied > end_s:
            continue
        if best is None or data["version"] > best[0]:
            best = (data["version"], raw)
    return document_view(best[1]) if best else None


def governance_at(
    rows: Sequence[Row], versions: Mapping[Any, Any], end_s: float, refusals: list[dict[str, Any]]
) -> dict[str, Any]:
    """The Governance view as at ``end_s``, in ``relaystate.governance_view``'s shape."""
    relays = _relays(rows, end_s)
    listed = [
        {"region": r, "version": s["governance"], "stale": s["stale"], "cut_off": False}
        for r, s in sorted(relays.items())
    ]
    found = sorted({r["version"] for r in listed if r["version"]})
    links = [
        {"src": region, "dst": link["peer"], "local_gov": s["governance"], "peer_gov": link["gov"]}
        for region, s in sorted(relays.items())
        for link in s["links"]
        if link["governance_mismatch"]
    ]
    return {
        "relays": listed,
        "versions": found,
        "mismatch": len(found) > 1 or bool(links),
        "links": links,
        "refusals": refusals,
        "document": document_at(versions, end_s),
        "at": end_s,
        "from_history": True,
    }
