"""What a relay reports about itself: /healthz, link and group samples, its state for the dashboard.

Samples go into the history the collector keeps (``meshscope:links``,
``meshscope:groups:lag``); the relay's state (routes, subscriptions, groups,
links) goes to ``meshscope:relaystate`` every two seconds, for the dashboard's
"why this flows here".

/healthz says whether the relay can do its work now, not only whether it runs:
writing its state every two seconds is also a write probe (an idle relay learns
that Valkey refuses writes, out of memory say, before a producer does: the probe
feeds the circuit breaker that answers publishes 503), and every link whose peer
refuses this relay's clock is a reason of its own, with the offset and the skew
the peer accepts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError, ResponseError

from meshcore import flowrecord as fk
from meshcore.errors import StreamUnavailable
from meshcore.metrics import E2E_LATENCY_MS, HOP_LATENCY_MS, Registry
from router.envelope import now_us
from router.routing import UP

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

LINK_STREAM = "meshscope:links"
STATE_KEY = "meshscope:relaystate"
GROUPS_STREAM = "meshscope:groups:lag"

METRICS = (
    (HOP_LATENCY_MS, "histogram", "Latency of the last hop of delivered events, by source region and topic"),
    (E2E_LATENCY_MS, "histogram", "Publish-to-delivery latency of delivered events, by origin and topic"),
    ("events_in_total", "counter", "Events received, by topic and source (producer or peer region)"),
    ("events_out_total", "counter", "Events sent, by topic and destination (local or peer region)"),
    ("drops_total", "counter", "Events dropped, by reason"),
    ("rejected_total", "counter", "Publish requests or events refused, by HTTP status"),
    ("mesh_duplicates_total", "counter", "Resent mesh events already applied"),
    ("mesh_refused_items_total", "counter", "Mesh items refused as malformed, by peer"),
    ("sequence_rollbacks_total", "counter", "Sequences continued in a new epoch after the store went back, by finder"),
    ("mesh_items_held_back_total", "counter", "Mesh items not applied: their origin's sequence went back, by origin"),
    ("link_state", "gauge", "Link state: 0 down, 1 connecting, 2 up, 3 draining"),
    ("link_security", "gauge", "Link security: 0 plain, 1 tls (token), 2 mtls"),
    ("link_rtt_ms", "gauge", "Round trip time of an up link (absent while down)"),
    ("link_queue_depth", "gauge", "Events held for a destination region, sent or not"),
    ("link_reconnects_total", "counter", "Reconnect attempts of a link"),
    ("subscribers", "gauge", "Connected live subscribers"),
    ("subscriber_queue_depth", "gauge", "Events buffered for live subscribers, summed"),
    ("task_restarts_total", "counter", "Background tasks restarted after a crash, by task"),
    ("redis_errors_total", "counter", "Failed Redis commits (retried), by error"),
    ("redis_up", "gauge", "1 while commits to Redis succeed"),
    ("transit_total", "counter", "Events passed on for other regions (detours)"),
    ("anonymous", "gauge", "1 when clients without credentials are let in"),
    ("governance_info", "gauge", "1 for the governance version this relay enforces"),
    ("governance_registry_up", "gauge", "1 while the governance registry answers"),
    ("policy_filtered_total", "counter", "Events not delivered to a subscriber its policy forbids"),
    ("group_pending", "gauge", "Entries of a durable group delivered and not yet acknowledged"),
    ("group_lag", "gauge", "Entries of a durable group not yet delivered to any member"),
    ("group_oldest_age_seconds", "gauge", "Age of a durable group's oldest unacknowledged entry"),
    ("group_consumers", "gauge", "Members of a durable group connected to this relay"),
    ("group_acks_refused_total", "counter", "Acknowledged ids a group member was not given (ignored), by group"),
    ("group_entries_withheld_total", "counter", "Group entries a member may not read, parked for one that may"),
    ("sessions_refused_total", "counter", "WebSocket sessions refused: the principal had its most open here"),
    (
        "sibling_events_total",
        "counter",
        "Events of the region's other workers: delivered to live subscribers here, or routed to other regions",
    ),
    ("sibling_events_lost_total", "counter", "Times worker 0 found the region stream trimmed past what it had routed"),
)
"""Every metric family a relay exports: name, type, help."""


REFUSAL_STATUSES = ("400", "401", "403", "408", "413", "415", "422", "429", "503")
"""The HTTP statuses ``rejected_total`` counts."""
ZEROED: dict[str, tuple[dict[str, str], ...]] = {
    "drops_total": tuple({"reason": status} for status in fk.STATUSES if status != fk.OK),
    "rejected_total": tuple({"status": status} for status in REFUSAL_STATUSES),
    "mesh_duplicates_total": ({},),
    "transit_total": ({},),
    "policy_filtered_total": ({},),
}
"""Counter series that exist from the start at 0, so the first increment shows in ``rate()``."""


def describe_metrics(m: Registry, peers: Iterable[str] = ()) -> None:
    """Declare every family, and the counters whose label values are known up front at 0."""
    for name, kind, text in METRICS:
        m.describe(name, kind, text)
    for name, label_sets in ZEROED.items():
        for labels in label_sets:
            m.zero(name, **labels)
    for peer in peers:
        m.zero("link_reconnects_total", peer=peer)
        m.zero("mesh_refused_items_total", peer=peer)


STATE_INTERVAL_S = 2.0


class Status:
    """Reads a relay's parts; changes nothing but metrics, what it writes to Redis and what its write probe finds."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.write_error = ""
        """Why the last write probe failed ('' when it landed)."""
        self.write_refused = False
        """Whether Valkey answered that probe with a refusal (rather than not answering)."""

    def link_rows(self) -> list[dict[str, Any]]:
        """Every outbound link with its state, security, RTT (while up) and what is held for its region."""
        r = self.relay
        rows = []
        for link in r.links:
            peer = link.peer_region or link.url
            ch = r.outbox.channels.get(peer)
            route = r.routes.route(peer) if link.peer_region else None
            rows.append(
                {
                    "peer": peer,
                    "state": link.state,
                    "security": link.security if link.state == UP else "",
                    "rtt_ms": link.rtt_ms if link.state == UP else None,
                    "queue_depth": ch.depth if ch else 0,
                    "reconnects": link.reconnects,
                    "via": route.next_hop if route and route.reachable and not route.direct else "",
                    "gov": link.peer_gov,
                    "governance_mismatch": bool(
                        link.state == UP and link.peer_gov and r.gov_version and link.peer_gov != r.gov_version
                    ),
                    "last_error": link.last_error if link.state != UP else "",
                    "clock_offset_ms": None if link.clock_offset_ms is None else round(link.clock_offset_ms, 1),
                    "peer_skew_s": link.peer_skew_s,
                    "clock_refusal": link.clock_refusal,
                    "peer_clock_ok": link.peer_clock_ok,
                }
            )
        return rows

    async def sample_links(self) -> None:
        r = self.relay
        while True:
            await asyncio.sleep(r.config.link_stats_interval_s)
            ts = now_us()
            samples = []
            for row in self.link_rows():
                peer = row["peer"]
                r.metrics.set("link_queue_depth", row["queue_depth"], peer=peer)
                if row["rtt_ms"] is not None:
                    r.metrics.set("link_rtt_ms", row["rtt_ms"], peer=peer)
                samples.append(
                    [ts, r.name, r.region, peer, row["state"], row["rtt_ms"] or 0.0, row["queue_depth"],
                     row["reconnects"], row["security"], row["via"], row["gov"], r.gov_version,
                     row["clock_offset_ms"] or 0.0, row["peer_skew_s"]]
                )  # fmt: skip
            r.metrics.set("subscriber_queue_depth", sum(s.queue.qsize() for s in r.subscribers.values()))
            r.metrics.set("redis_up", 1 if r.breaker.healthy else 0)
            r.metrics.set("governance_registry_up", 0 if r.watcher.stale_s() is not None else 1)
            if samples and r.breaker.healthy:
                try:
                    await r.redis.xadd(
                        LINK_STREAM, {b"v": b"2", b"r": orjson.dumps(samples)}, maxlen=100_000, approximate=True
                    )
                    await r.redis.publish(LINK_STREAM, orjson.dumps({"region": r.region, "links": samples}))
                except RedisError as exc:
                    log.warning("cannot write link samples", extra={"error": str(exc)[:200]})

    async def sample_groups(self) -> None:
        """Every few seconds, each durable group's position, into the history (meshscope:groups:lag) and /metrics."""
        r = self.relay
        await r.ready.wait()
        while True:
            await asyncio.sleep(max(1.0, r.config.link_stats_interval_s))
            if not r.breaker.healthy:
                continue
            ts = now_us()
            rows = []
            for group, info in list(r.groups.groups.items()):
                try:
                    lag = await r.groups.lag(group)
                except StreamUnavailable as exc:
                    log.warning("cannot sample group lag", extra={"group": group, "error": str(exc)[:200]})
                    break
                if not lag:
                    continue
                members = r.group_members.get(group, 0)
                oldest_s = (ts / 1000 - lag["oldest_pending_ms"]) / 1000 if lag["oldest_pending_ms"] else 0.0
                r.metrics.set("group_pending", lag["pending"], group=group)
                r.metrics.set("group_lag", lag["lag"], group=group)
                r.metrics.set("group_oldest_age_seconds", max(0.0, oldest_s), group=group)
                r.metrics.set("group_consumers", members, group=group)
                rows.append(
                    [ts, r.region, group, info.owner, sorted(info.patterns.patterns), lag["added"], lag["acked"],
                     lag["pending"], lag["lag"], round(max(0.0, oldest_s), 3), members, info.probe]
                )  # fmt: skip
            if rows:
                try:
                    await r.redis.xadd(GROUPS_STREAM, {b"v": b"1", b"r": orjson.dumps(rows)}, maxlen=100_000,
                                          approximate=True)  # fmt: skip
                except RedisError as exc:
                    log.warning("cannot write group samples", extra={"error": str(exc)[:200]})

    def state(self) -> dict[str, Any]:
        """What this relay knows and decides, for the dashboard's "why this flows here": routes and interest."""
        r = self.relay
        subs: Counter[tuple[str, tuple[str, ...]]] = Counter()
        for sub in r.subscribers.values():
            subs[(sub.principal.name if sub.principal else "", tuple(sorted(sub.patterns.patterns)))] += 1
        return {
            "ts": now_us(),
            "region": r.region,
            "relay": r.name,
            "governance": r.gov_version,
            "governance_authority": r.authority.health(),
            "routes": [
                {
                    "dst": r.dst,
                    "next_hop": r.next_hop,
                    "path": list(r.path),
                    "cost_ms": None if r.cost_ms == float("inf") else round(r.cost_ms, 3),
                    "direct": r.direct,
                }
                for r in r.routes.table()
            ],
            "subscriptions": [
                {"principal": who, "patterns": list(patterns), "subscribers": n}
                for (who, patterns), n in sorted(subs.items())
            ],
            "groups": [
                {
                    "group": g,
                    "owner": info.owner,
                    "patterns": sorted(info.patterns.patterns),
                    "members": r.group_members.get(g, 0),
                    "probe": info.probe,
                }
                for g, info in sorted(r.groups.groups.items())
            ],
            "interest": sorted(r.local.patterns.patterns),
            "links": self.link_rows(),
            "clock_ok": r.hello["clock_ok"],
        }

    async def publish_state(self) -> None:
        """Write this relay's state every two seconds, whatever the circuit says: the write is the probe
        that tells whether Valkey takes writes now; its outcome feeds the breaker and /healthz."""
        r = self.relay
        await r.ready.wait()
        # of a region's several workers, worker 0 (its routes, its links) speaks for the region on the map;
        # the others write theirs apart, by name, which is still their write probe
        key, field = (STATE_KEY, r.region) if r.siblings.owner else (f"{STATE_KEY}:workers", r.name)
        while True:
            await asyncio.sleep(STATE_INTERVAL_S)
            try:
                await r.redis.hset(key, field, orjson.dumps(self.state()))
            except (RedisError, OSError) as exc:
                if not self.write_error:
                    log.warning("this relay cannot write to Valkey", extra={"error": str(exc)[:200]})
                self.write_error = f"{type(exc).__name__}: {exc}"[:300]
                self.write_refused = isinstance(exc, ResponseError)  # it answered no (OOM, read-only), not silence
                r.breaker.failure(time.monotonic(), self.write_error)
                continue
            if self.write_error:
                log.info("Valkey takes this relay's writes again")
                self.write_error = ""
                r.breaker.success()

    def health(self) -> dict[str, Any]:
        r = self.relay
        reasons = []
        if r.draining:
            reasons.append("stopping: new publishes are refused while commits in flight finish")
        if self.write_error and self.write_refused:
            reasons.append(f"Valkey refuses this relay's writes: {self.write_error}")
        elif self.write_error:
            reasons.append(f"redis unavailable: {self.write_error}")
        elif not r.breaker.healthy:
            reasons.append(f"redis unavailable: {r.breaker.last_error or 'circuit ' + r.breaker.state}")
        if not r.ready.is_set():
            reasons.append("state not loaded from Redis yet")
        if r.sink.full:
            reasons.append("flow record queue full")
        stale = r.watcher.stale_s()
        if stale is not None:
            reasons.append(
                f"governance registry unreachable for {stale:.0f} s; enforcing version {r.gov_version or 'none'}"
            )
        authority = r.authority.health()
        cut = r.authority.cut_off_s()
        if cut is not None:
            reasons.append(
                f"cut off from the governance authority ({authority['home']}) for {cut:.0f} s; "
                f"enforcing version {r.gov_version or 'none'}, the last it had"
            )
        if authority["fork"]:
            reasons.append(str(authority["fork"]))
        if not r.authority.known():
            reasons.append(
                f"governance version not known yet: the store holds none and the authority ({authority['home']}) "
                "has not been reached; publishes and subscriptions wait (503)"
            )
        reasons += r.supervisor.problems()
        rows = self.link_rows()
        reasons += [
            f"{row['clock_refusal']}: events for {row['peer']} are held and publishes for it answered 503"
            for row in rows
            if row["clock_refusal"]
        ]
        links = {row["peer"]: row["state"] for row in rows}
        workers = r.siblings.health() if r.siblings.on else None
        if workers is not None and not r.siblings.owner:
            # worker 0 holds the region's links: its last heartbeat says how they are
            owner_links = r.siblings.owner_links()
            links = owner_links if owner_links is not None else {}
            workers["links_from"] = r.siblings.names[0]
            if owner_links is None:
                reasons.append(f"the region's links are unknown: worker {r.siblings.names[0]} sent no heartbeat")
        if workers is not None:
            for name, member in workers["members"].items():
                if member["state"] != "up" and name != r.name:
                    why = member.get("why") or f"no heartbeat for {member['heartbeat_age_s']} s"
                    held = "; it holds the region's links: events for other regions wait" if member.get("links") else ""
                    reasons.append(f"worker {name} of this region is {member['state']} ({why}){held}")
        health: dict[str, Any] = {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "region": r.region,
            "relay": r.name,
            "anonymous_allowed": r.auth.allow_anonymous,
            "governance": {
                "version": r.gov_version,
                "registry_reachable": stale is None,
                "policy_enforced": r.governance.policy.enforcing,
                "subjects": len(r.governance.schemas.subjects),
                **authority,
            },
            "links": links,
            "links_up": sum(1 for s in links.values() if s == UP),
            "clock": {
                "ok": r.hello["clock_ok"],
                "accepted_skew_s": r.config.clock_skew_s,
                "offsets_ms": {row["peer"]: row["clock_offset_ms"] for row in rows},
                "refused_by": {row["peer"]: row["clock_refusal"] for row in rows if row["clock_refusal"]},
            },
            "held": r.outbox.depth,
            "inbound": sorted({c.region for c in r.inbound.values()}),
        }
        if workers is not None:
            health["workers"] = workers
        return health
