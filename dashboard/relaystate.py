"""What the relays say about themselves, read for the dashboard, with no I/O.

Every relay writes its state to the Redis hash ``meshscope:relaystate`` every 2 s (field:
its region; value: JSON with ts in µs, routes, subscriptions, durable groups, interest and
links). It is read here into the API's shapes: the routes view, the "why does this flow
here" of an edge and the governance versions. Redis contents are input like any other: each field is taken only with
the type it should have, and an entry that is not JSON is skipped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dashboard.livemessage import json_object, number_of, text_of
from meshcore import storekeys as sk
from meshcore.freshness import LIMITS, RELAY
from meshcore.topic import matches

STATE_KEY = "meshscope:relaystate"
GOVERNANCE_KEY = sk.GOVERNANCE_CURRENT
GOVERNANCE_VERSIONS_KEY = sk.GOVERNANCE_VERSIONS
"""Every governance document applied, by version number (``router.registry.VERSIONS``)."""
STALE_S = LIMITS[RELAY].stale_s
"""A relay whose state is older than this is flagged ``stale`` (it writes every 2 s): the freshness table's."""
MAX_ITEMS = 1000


def _texts(value: Any) -> list[str]:
    return [text_of(v) for v in value[:MAX_ITEMS] if isinstance(v, str)] if isinstance(value, list) else []


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value[:MAX_ITEMS] if isinstance(v, dict)] if isinstance(value, list) else []


def _cut_off(authority: Any) -> bool:
    """Whether a relay said it is cut off from the governance authority."""
    return isinstance(authority, dict) and authority.get("authority_reachable") is False


def _route(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dst": text_of(r.get("dst")),
        "next_hop": text_of(r.get("next_hop")) or None,
        "path": _texts(r.get("path")),
        "cost_ms": number_of(r.get("cost_ms")),
        "direct": r.get("direct") is True,
    }


def _link(r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "peer": text_of(r.get("peer")),
        "state": text_of(r.get("state"), 16),
        "security": text_of(r.get("security"), 8),
        "rtt_ms": number_of(r.get("rtt_ms")),
        "queue_depth": int(number_of(r.get("queue_depth")) or 0),
        "reconnects": int(number_of(r.get("reconnects")) or 0),
        "via": text_of(r.get("via")),
        "gov": text_of(r.get("gov")),
        "governance_mismatch": r.get("governance_mismatch") is True,
        "last_error": text_of(r.get("last_error"), 500),
    }


def parse_state(region: str, raw: bytes | str, now_s: float) -> dict[str, Any] | None:
    """One relay's state, or None when the entry is not a JSON object."""
    data = json_object(raw)
    if data is None:
        return None
    ts_us = number_of(data.get("ts")) or 0.0
    ts = ts_us / 1e6
    return {
        "region": region,
        "relay": text_of(data.get("relay")),
        "ts": round(ts, 3),
        "age_s": round(max(0.0, now_s - ts), 3),
        "stale": now_s - ts > STALE_S,
        "governance": text_of(data.get("governance")),
        "governance_cut_off": _cut_off(data.get("governance_authority")),
        "routes": [_route(r) for r in _dicts(data.get("routes"))],
        "links": [_link(r) for r in _dicts(data.get("links"))],
        "subscriptions": [
            {
                "principal": text_of(s.get("principal")),
                "patterns": _texts(s.get("patterns")),
                "subscribers": int(number_of(s.get("subscribers")) or 0),
            }
            for s in _dicts(data.get("subscriptions"))
        ],
        "groups": [
            {
                "group": text_of(g.get("group")),
                "owner": text_of(g.get("owner")),
                "patterns": _texts(g.get("patterns")),
                "members": int(number_of(g.get("members")) or 0),
                "probe": g.get("probe") is True,
            }
            for g in _dicts(data.get("groups"))
        ],
        "interest": _texts(data.get("interest")),
    }


def parse_states(raw: Mapping[Any, Any], now_s: float) -> dict[str, dict[str, Any]]:
    """The hash as {region: state}; unreadable entries are left out."""
    out = {}
    for key, value in raw.items():
        region = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
        state = parse_state(region[:128], value, now_s)
        if state is not None:
            out[state["region"]] = state
    return dict(sorted(out.items()))


def routes_view(states: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    keep = ("region", "relay", "ts", "age_s", "stale", "governance", "routes", "links")
    return {"relays": [{k: s[k] for k in keep} for s in states.values()]}


def why(states: Mapping[str, Mapping[str, Any]], src: str, dst: str, topics: Sequence[str]) -> dict[str, Any]:
    """Why events flow from ``src`` to ``dst``: src's route there, and what at dst wants each topic."""
    route = None
    source = states.get(src)
    if source is not None and src != dst:
        route = next((r for r in source["routes"] if r["dst"] == dst), None)
        if route is not None:
            route = {**route, "stale": source["stale"]}
    target = states.get(dst)
    out = []
    for topic in topics:
        subs = groups = []
        if target is not None:
            subs = [s for s in target["subscriptions"] if any(matches(p, topic) for p in s["patterns"])]
            groups = [g for g in target["groups"] if any(matches(p, topic) for p in g["patterns"])]
        out.append({"topic": topic, "subscriptions": subs, "groups": groups})
    return {"route": route, "topics": out, "known": {"src": source is not None, "dst": target is not None}}


def document_view(raw: bytes | str | None) -> dict[str, Any] | None:
    """The governance document in brief: version id, author, time, how many rules and schema versions."""
    data = json_object(raw) if raw else None
    if data is None:
        return None
    number = data.get("version")
    digest = text_of(data.get("digest"), 64)
    policies = data.get("policies")
    return {
        "version": f"{number}-{digest}" if isinstance(number, int) and digest else text_of(str(number)),
        "number": number if isinstance(number, int) else None,
        "digest": digest,
        "author": text_of(data.get("author")),
        "changed_at": text_of(data.get("changed_at"), 64),
        "policies": len(policies) if isinstance(policies, list) else None,
        "subjects": [
            {
                "subject": text_of(s.get("subject")),
                "versions": len(s["versions"]) if isinstance(s.get("versions"), list) else 0,
            }
            for s in _dicts(data.get("subjects"))
        ],
    }


def governance_view(
    states: Mapping[str, Mapping[str, Any]], document: dict[str, Any] | None, refusals: list[dict[str, Any]]
) -> dict[str, Any]:
    """Which version each relay enforces; a mismatch when they differ (a stale relay counts with the last
    version it reported: a region cut off from the authority is a mismatch while it lasts)."""
    relays = [
        {"region": r, "version": s["governance"], "stale": s["stale"], "cut_off": s.get("governance_cut_off", False)}
        for r, s in states.items()
    ]
    versions = sorted({r["version"] for r in relays if r["version"]})
    links = [
        {"src": region, "dst": link["peer"], "local_gov": s["governance"], "peer_gov": link["gov"]}
        for region, s in states.items()
        if not s["stale"]
        for link in s["links"]
        if link["governance_mismatch"]
    ]
    return {
        "relays": relays,
        "versions": versions,
        "mismatch": len(versions) > 1 or bool(links),
        "links": links,
        "refusals": refusals,
        "document": document,
    }
