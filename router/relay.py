"""The relay: takes published and mesh events, routes them, and records every hop.

This module joins the pure parts (routing, channels, trace context, flow
records) to the I/O parts (links, subscribers, the committer, the flow sink).

Order of work for a publish: validate, check duplicates (by principal, source
and id), decide where the event goes, then make it durable in ONE commit:
local group appends, the outbound store of every destination region, and the
publish/deliver/drop records that say so. Only once that commit landed is the
event marked as seen, handed to live subscribers and sent over the mesh, and
the publisher answered 202. When Redis fails the publisher gets 503 with
Retry-After and a retry is accepted, not called a duplicate.

A mesh batch is applied the same way on the receiving side: group appends,
deliver records and the receiver's applied state (which makes resends
idempotent) in one commit, and the batch is acknowledged only after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore import flowrecord as fk
from meshcore.auth import Authenticator, Principal, load_principals
from meshcore.breaker import CircuitBreaker
from meshcore.errors import StreamUnavailable
from meshcore.flowrecord import FlowRecord, pack
from meshcore.governance import Governance
from meshcore.loopmon import monitor_loop
from meshcore.metrics import E2E_LATENCY_MS, HOP_LATENCY_MS, Registry
from meshcore.policy import Action
from meshcore.supervise import Supervisor
from meshcore.tls import client_context
from router import frame as fr
from router.channel import OriginState
from router.committer import Committer, Ops, Unavailable
from router.config import RelayConfig
from router.envelope import Event, EventLimits, now_us, validate_event
from router.errors import FrameError, InvalidInput
from router.flowsink import FlowSink
from router.gate import Gate
from router.link import LinkCallbacks, MeshLink, PeerAddress
from router.outbox import Dropped, Outbox, StoreFull, ranges_of
from router.registry import GovernanceStore, GovernanceWatcher
from router.routing import LINK_STATE_VALUE, SECURITY_VALUE, UP, DedupWindow, LinkStateTable, LocalInterest
from router.spans import HopTracer, otlp_exporter
from router.status import Status, describe_metrics
from router.subscription import GroupConflict, GroupInfo, GroupStore, Subscriber
from router.tracecontext import new_span_id, parse_traceparent

log = logging.getLogger(__name__)

REGIONS_KEY = "meshscope:regions"
LSA_KEY = "meshscope:lsa"
LSA_REFRESH_S = 5.0
ROUTE_AGE_S = 30.0


class InDoubt(Exception):
    """An earlier attempt of this event is still being made durable; the publisher retries later."""


@dataclass
class PublishResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


@dataclass
class Inbound:
    """A peer relay that dialed us: where to push link state and acknowledgements."""

    region: str
    send: Callable[[bytes], None]
    security: str
    principal: str
    gov: str = ""


class Relay:
    def __init__(
        self,
        config: RelayConfig,
        client: aioredis.Redis,
        tracer: HopTracer | None = None,
        auth: Authenticator | None = None,
    ):
        self.config = config
        self.region = config.region.id
        self.name = config.relay_name
        self.redis = client
        self.auth = auth or load_principals(config.auth_file, config.allow_anonymous)
        self.limits = EventLimits(max_event_bytes=config.max_event_bytes, max_depth=config.max_json_depth)
        self.metrics = m = Registry(topic_label_max=config.topic_label_max, process=True)
        describe_metrics(m)
        m.set("anonymous", 1 if self.auth.allow_anonymous else 0)
        self.supervisor = Supervisor(on_restart=lambda task: m.inc("task_restarts_total", task=task))
        self.breaker = CircuitBreaker("redis")
        self.committer = Committer(
            client, f"{self.region}/{self.name}", self.breaker, lambda err: m.inc("redis_errors_total", error=err)
        )
        self.local = LocalInterest()
        self.routes = LinkStateTable(self.region, config.hop_limit, ROUTE_AGE_S, config.link_store_max_age_s)
        self.dedup = DedupWindow(config.dedup_window)
        self.subscribers: dict[int, Subscriber] = {}
        self.groups = GroupStore(client, self.region, config.group_max_entries)
        self.inbound: dict[int, Inbound] = {}
        self.origins: dict[str, OriginState] = {}
        self.applied_key = f"meshscope:applied:{self.region}"
        self.sink = FlowSink(
            client,
            config.flow_stream,
            config.flow_stream_maxlen,
            config.flow_queue_max,
            config.flow_batch,
            config.flow_flush_interval_s,
            m,
            writer=f"{self.region}/{self.name}/flows",
        )
        if tracer is None:
            exporter = otlp_exporter(config.otlp_endpoint) if config.otlp_endpoint else None
            tracer = HopTracer(self.region, self.name, config.trace_sample_ratio, exporter)
        self.tracer = tracer
        self.registry = GovernanceStore(client)
        self.watcher = GovernanceWatcher(self.registry, self._governance_changed)
        self.gate = Gate(self.region, self.auth, self.groups, lambda: self.watcher.governance, self.record_rejected)
        self.gov_version = ""
        self.hello = {
            "region": self.region,
            "relay": self.name,
            "provider": config.region.provider,
            "lat": config.region.lat,
            "lon": config.region.lon,
            "city": config.region.city,
            "gov": self.gov_version,
        }
        tls = config.tls
        ssl_ctx = client_context(tls, tls.ca) if tls is not None and tls.ca else None
        callbacks = LinkCallbacks(self._link_up, self._link_down, self._link_acks, self._link_lsas, self._link_state)
        self.links: list[MeshLink] = []
        for text in config.peers:
            peer = PeerAddress.parse(text)
            self.links.append(
                MeshLink(
                    peer,
                    self.hello,
                    callbacks,
                    ssl_context=ssl_ctx,
                    client_cert=ssl_ctx is not None,
                    token=config.mesh_token,
                    frame_max_bytes=config.max_body_bytes,
                    batch=config.link_batch,
                    queue_max=config.link_queue_max,
                    backoff_base_s=config.link_backoff_base_s,
                    backoff_max_s=config.link_backoff_max_s,
                    ping_interval_s=config.ping_interval_s,
                    delay_ms=config.link_delays_ms.get(peer.region or "", 0.0),
                )
            )
        self.links_by_region: dict[str, MeshLink] = {}
        self.status = Status(self)
        self.group_members: Counter[str] = Counter()  # group -> members connected here
        self.outbox = Outbox(config, client, self.routes, self.links_by_region, self.record, self.limits)
        self._lsa_seq = now_us()
        self._out: Counter[tuple[str, str]] = Counter()
        self._wake = asyncio.Event()
        # set once groups, stored events and applied state are loaded: mesh events and publishes wait
        # for it, or events right after a restart would be routed without knowing the durable groups
        self.ready = asyncio.Event()

    # ---- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving even when Redis is down: state loads once it is back."""
        if self.auth.allow_anonymous:
            log.warning("clients without credentials are let in (MESHSCOPE_ALLOW_ANONYMOUS); development only")
        sup = self.supervisor
        sup.spawn("committer", self.committer.run)
        sup.spawn("flow-sink", self.sink.run)
        sup.spawn("load", self._load, restart=False)
        sup.spawn("dispatch", self._dispatch_loop)
        sup.spawn("link-samples", self.status.sample_links)
        sup.spawn("group-samples", self.status.sample_groups)
        sup.spawn("state", self.status.publish_state)
        sup.spawn("group-trim", self._trim_groups)
        sup.spawn("link-state", self._advertise_loop)
        sup.spawn("governance", self._watch_governance)
        sup.spawn("loop-monitor", lambda: monitor_loop(self.metrics))
        for link in self.links:
            sup.spawn(f"link {link.url}", link.run)
        if self.config.chaos_flap_interval_s > 0:
            sup.spawn("link-flaps", self._flap_links)
        log.info("relay started", extra={"peers": list(self.config.peers)})

    async def _load(self) -> None:
        attempt = 0
        while True:
            try:
                groups = await self.groups.load()
                applied: Any = await self.redis.hgetall(self.applied_key)
                lsas: Any = await self.redis.hgetall(LSA_KEY)
                dropped = await self.outbox.load()
                await self.watcher.refresh()
                await self.redis.hset(REGIONS_KEY, self.region, orjson.dumps({**self.hello, "ts": now_us()}))
            except (StreamUnavailable, RedisError) as exc:
                delay = min(5.0, 0.2 * 2**attempt) * (0.5 + random.random() / 2)
                log.warning("cannot load relay state yet", extra={"error": str(exc)[:300], "retry_in_s": delay})
                attempt += 1
                await asyncio.sleep(delay)
                continue
            break
        for origin, raw in applied.items():
            self.origins[origin.decode()] = OriginState.from_json(orjson.loads(raw))
        now = now_us()
        for raw in lsas.values():
            try:
                self.routes.merge(fr.lsa_of(orjson.loads(raw)), now)
            except (FrameError, ValueError):
                continue
        changed = False
        for info in groups.values():
            changed = self.local.add(sorted(info.patterns.patterns)) or changed
        self._drop_records(dropped)
        if changed:
            self._advertise()
        self.ready.set()
        self._wake.set()
        log.info("relay state loaded", extra={"groups": len(groups), "held": self.outbox.depth})

    async def stop(self) -> None:
        await self.supervisor.stop()
        await self.sink.shutdown()
        self.tracer.shutdown()

    # ---- records ----------------------------------------------------------------------------

    def record(
        self,
        ev: Event | None,
        kind: str,
        span_id: str,
        parent: str,
        src: str,
        dst: str,
        ts: int,
        hop_ms: float,
        status: str = fk.OK,
        attempt: int = 1,
        seq: int = 0,
        principal: str = "",
        via: str = "",
        seq_end: int = 0,
        item: fr.Item | None = None,
        into: list[FlowRecord] | None = None,
    ) -> None:
        """One flow record: into a commit's records when ``into`` is given, else through the sink."""
        if ev is not None:
            event_id, trace_id, topic, size, published = ev.id, ev.trace.trace_id, ev.topic, ev.size, ev.published_us
            schema = ev.body.get("dataschema", "")
        elif item is not None:
            body = item.event
            tp = parse_traceparent(body.get("traceparent"))
            event_id, topic = str(body.get("id", ""))[:256], str(body.get("type", ""))[:255]
            trace_id, size, published = (tp.trace_id if tp else ""), 0, item.published_us
            schema = body.get("dataschema", "")
        else:
            event_id = trace_id = topic = schema = ""
            size = published = 0
        rec = FlowRecord(
            ts,
            event_id,
            trace_id,
            span_id,
            parent,
            topic,
            kind,
            src,
            dst,
            self.name,
            hop_ms,
            (ts - published) / 1000 if published else 0.0,
            status,
            size,
            attempt,
            seq,
            principal,
            via,
            seq_end,
            schema if isinstance(schema, str) else "",
        )
        if into is not None:
            into.append(rec)
        else:
            self.sink.add(rec)
        if kind == fk.FORWARD:
            self._out[(dst, topic)] += 1
        elif kind == fk.DELIVER:
            self._out[("local", topic)] += 1
        if status != fk.OK:
            self.metrics.inc("drops_total", reason=status)
        if self.tracer.enabled and trace_id and parent:
            self.tracer.hop(
                f"meshscope {kind}",
                trace_id,
                span_id,
                parent,
                ts - int(hop_ms * 1000),
                ts,
                {
                    "messaging.destination.name": topic,
                    "meshscope.kind": kind,
                    "meshscope.status": status,
                    "meshscope.src_region": src,
                    "meshscope.dst_region": dst,
                    "messaging.message.id": event_id,
                    "enduser.id": principal,
                },
            )

    def record_rejected(
        self,
        event_id: str,
        topic: str,
        status: str,
        size: int,
        principal: str,
        trace_id: str = "",
        dataschema: str = "",
    ) -> None:
        """A drop record for an event known by its attributes: refused at the edge, or given up by a group."""
        rec = FlowRecord(
            now_us(), event_id[:256], trace_id, new_span_id(), "", topic[:255], fk.DROP, self.region, self.region,
            self.name, 0.0, 0.0, status, size, 1, 0, principal, "", 0, dataschema[:2048],
        )  # fmt: skip
        self.sink.add(rec)
        self.metrics.inc("drops_total", reason=status)

    def _drop_records(self, dropped: list[Dropped]) -> None:
        for d in dropped:
            for held in d.items:
                self.record(
                    held.event, fk.DROP, new_span_id(), held.span_id, self.region, d.channel.dst, now_us(), 0.0,
                    d.status, held.attempt or 1, held.seq, held.principal,
                )  # fmt: skip

    # ---- governance ---------------------------------------------------------------------------

    @property
    def governance(self) -> Governance:
        return self.watcher.governance

    async def _watch_governance(self) -> None:
        await self.ready.wait()
        await self.watcher.run()

    def _governance_changed(self, gov: Governance) -> None:
        old = self.gov_version
        self.gov_version = self.hello["gov"] = gov.version_id
        if old:
            self.metrics.remove("governance_info", version=old)
        self.metrics.set("governance_info", 1, version=gov.version_id)
        for sub in self.subscribers.values():
            sub.gate = self.gate.read_gate(sub.principal)
        self.gate.changed()
        hello = fr.encode(fr.HELLO, **self.hello)
        for conn in list(self.inbound.values()):
            conn.send(hello)
        for link in self.links:
            link.control(hello)

    # ---- publish ----------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise when events cannot be accepted now: Redis is failing (503) or flow records back up (429)."""
        self.committer.available()
        if self.sink.full:
            from router.errors import Backpressure

            raise Backpressure("the relay's flow record queue is full", retry_after_s=1)

    async def publish(self, events: list[Event], principal: Principal) -> PublishResult:
        """Make accepted events durable, then route them; raise Unavailable (503) when Redis fails."""
        if not self.ready.is_set():
            raise Unavailable("the relay is still loading its state from Redis", 1.0)
        self.committer.available()
        result = PublishResult()
        ops = Ops()
        records: list[FlowRecord] = []
        reserved: list[tuple[str, ...]] = []
        held: list[tuple[str, Any]] = []
        lives: list[tuple[Event, str, list[Subscriber]]] = []
        appended: Counter[str] = Counter()
        topics: Counter[tuple[str, str]] = Counter()
        region = self.region
        try:
            for ev in events:
                key = (principal.name, ev.source, ev.id)
                state = self.dedup.state(key)
                start = now_us()
                ev.published_us = start
                span = new_span_id()
                if state == "pending":
                    raise InDoubt(f"an earlier attempt of event {ev.id!r} is still being stored; retry shortly")
                if state == "seen":
                    result.duplicates.append(ev.id)
                    self.record(ev, fk.DROP, span, ev.trace.span_id, region, region, start, 0.0, fk.DUPLICATE,
                                principal=principal.name)  # fmt: skip
                    continue
                self.dedup.reserve(key)
                reserved.append(key)
                result.accepted.append(ev.id)
                topics[("producer", ev.topic)] += 1
                local = self.local.patterns.matches(ev.topic)
                remote = self.routes.interested(ev.topic)
                if not local and not remote:
                    self.record(ev, fk.DROP, span, ev.trace.span_id, region, region, start, 0.0, fk.NO_ROUTE,
                                principal=principal.name, into=records)  # fmt: skip
                    continue
                ts = now_us()
                self.record(ev, fk.PUBLISH, span, ev.trace.span_id, region, region, ts, (ts - start) / 1000,
                            principal=principal.name, into=records)  # fmt: skip
                if local:
                    subs = self._local(ev, span, region, ts, 1, 0, principal.name, "", ops, records)
                    if subs:
                        lives.append((ev, span, subs))
                for dst in remote:
                    item, overflow = self.outbox.append(ops, dst, ev, span, principal.name, start, appended[dst])
                    appended[dst] += 1
                    held.append((dst, item))
                    for old in overflow:
                        self.record(old.event, fk.DROP, new_span_id(), old.span_id, region, dst, ts, 0.0, fk.EXPIRED,
                                    old.attempt or 1, old.seq, old.principal, into=records)  # fmt: skip
        except (InDoubt, StoreFull):
            for reserved_key in reserved:
                self.dedup.release(reserved_key)
            for dst, n in appended.items():
                self.outbox.channels[dst].next_seq -= n
            self.outbox.discard()
            raise
        self.outbox.persist(ops, set(appended))
        if records:
            ops.xadd(self.config.flow_stream, pack(records))

        def landed() -> None:
            for key in reserved:
                self.dedup.commit(key)
            for dst, item in held:
                self.outbox.channel(dst).hold(item)
            for ev, span, subs in lives:
                self._offer(ev, span, region, subs, principal.name)
            if held:
                self._wake.set()

        ops.then.append(landed)
        self.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        await self.committer.commit(ops, self.config.publish_timeout_s)
        self._flush_out()
        return result

    def _local(
        self,
        ev: Event,
        parent: str,
        src: str,
        sent_us: int,
        attempt: int,
        seq: int,
        principal: str,
        via: str,
        ops: Ops,
        records: list[FlowRecord],
    ) -> list[Subscriber]:
        """Add the group appends and the deliver (or drop) record of one event; return its live subscribers."""
        ts = now_us()
        hop_ms = (ts - sent_us) / 1000
        region = self.region
        if self.config.failure_rate and random.random() < self.config.failure_rate:
            self.record(ev, fk.DROP, new_span_id(), parent, src, region, ts, hop_ms, fk.DELIVERY_FAILED, attempt, seq,
                        principal, via, into=records)  # fmt: skip
            return []
        topic = ev.topic
        subs = []
        filtered = 0
        for s in self.subscribers.values():
            if s.patterns.matches(topic):
                if s.gate is None or s.gate(topic):
                    subs.append(s)
                else:
                    filtered += 1
        groups = []
        for g in self.groups.matching(topic):
            gate = self.gate.group_gate(g)
            if gate is None or gate(topic):
                groups.append(g)
            else:
                filtered += 1
        if filtered:
            self.metrics.inc("policy_filtered_total", filtered)
        data = ev.encoded or orjson.dumps(ev.body)
        for group in groups:
            ops.xadd(self.groups.stream(group), {b"e": data})  # trimmed by _trim_groups only
        if subs or groups:
            self.record(ev, fk.DELIVER, new_span_id(), parent, src, region, ts, hop_ms, fk.OK, attempt, seq,
                        principal, via, into=records)  # fmt: skip
            trace_id = ev.trace.trace_id
            self.metrics.observe(HOP_LATENCY_MS, hop_ms, trace_id, peer=src, topic=topic)
            if ev.published_us:
                self.metrics.observe(E2E_LATENCY_MS, (ts - ev.published_us) / 1000, trace_id, peer=src, topic=topic)
        else:
            status = fk.POLICY_DENIED if filtered else fk.NO_ROUTE
            self.record(ev, fk.DROP, new_span_id(), parent, src, region, ts, hop_ms, status, attempt, seq,
                        principal, via, into=records)  # fmt: skip
        return subs

    def _offer(self, ev: Event, parent: str, src: str, subs: list[Subscriber], principal: str) -> None:
        """Hand a durable event to live subscribers; a full buffer costs that subscriber the event, recorded."""
        data = ev.encoded or orjson.dumps(ev.body)
        for sub in subs:
            if sub.id in self.subscribers and not sub.offer(data):
                self.record(ev, fk.DROP, new_span_id(), parent, src, self.region, now_us(), 0.0, fk.BACKPRESSURE,
                            principal=principal)  # fmt: skip

    # ---- mesh, accepting side ---------------------------------------------------------------

    async def receive_mesh(self, peer: str, frame: dict[str, Any], reply: Callable[[bytes], None]) -> None:
        """Apply an EVENTS frame from authenticated ``peer``; acknowledge once its durable steps landed."""
        await self.ready.wait()
        self.committer.available()
        now = now_us()
        good, bad = fr.items_of(
            frame,
            peer,
            self.region,
            now,
            int(self.config.link_store_max_age_s * 1_000_000) + int(self.config.clock_skew_s * 1_000_000),
            int(self.config.clock_skew_s * 1_000_000),
            self.config.hop_limit,
        )
        acks: list[tuple[str, str, int]] = []
        records: list[FlowRecord] = []
        for b in bad:
            self._refuse_item(peer, b.reason, b.key, acks, records)
        ops = Ops()
        lives: list[tuple[Event, str, str, str, list[Subscriber]]] = []
        onward: list[fr.Item] = []
        changed: set[str] = set()
        topics: Counter[tuple[str, str]] = Counter()
        for item in good:
            key = (item.origin, item.epoch, item.seq)
            if item.dst != self.region:
                onward.append(item)
                continue
            tp = parse_traceparent(item.event.get("traceparent"))
            try:
                if tp is None:
                    raise InvalidInput("a mesh event must carry a valid traceparent")
                ev = validate_event(item.event, self.limits)
            except InvalidInput as exc:
                self._refuse_item(peer, f"event: {exc}", key, acks, records, item)
                continue
            state = self.origins.setdefault(item.origin, OriginState())
            apply, gaps = state.admit(item.epoch, item.seq, item.floor, item.high)
            changed.add(item.origin)
            acks.append(key)
            for first, last in gaps:
                log.error("events lost in transit", extra={"origin": item.origin, "first": first, "last": last})
                self.record(None, fk.DROP, new_span_id(), "", item.origin, self.region, now_us(), 0.0, fk.GAP,
                            seq=first, seq_end=last, into=records)  # fmt: skip
            if not apply:
                self.metrics.inc("mesh_duplicates_total")
                continue
            ev.published_us = item.published_us
            topics[(item.origin, ev.topic)] += 1
            via = peer if peer != item.origin else ""
            subs = self._local(ev, item.span_id, item.origin, item.sent_us, item.attempt, item.seq, item.principal,
                               via, ops, records)  # fmt: skip
            if subs:
                lives.append((ev, item.span_id, item.origin, item.principal, subs))
        for origin in changed:
            ops.hset(self.applied_key, origin, orjson.dumps(self.origins[origin].to_json()))
        if records:
            ops.xadd(self.config.flow_stream, pack(records))

        def landed() -> None:
            for ev, parent, src, who, subs in lives:
                self._offer(ev, parent, src, subs, who)
            if acks:
                reply(fr.encode(fr.ACK, a=ranges_of(acks)))

        ops.then.append(landed)
        if onward:
            self.outbox.transit(onward, lambda ranges: reply(fr.encode(fr.ACK, a=ranges)))
            self.metrics.inc("transit_total", len(onward))
        self.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        self._flush_out()
        done = self.committer.submit(ops)
        if self.committer.backlog > 20:
            await done  # Redis is slow: stop reading this peer until it catches up

    def _refuse_item(
        self,
        peer: str,
        reason: str,
        key: tuple[str, str, int] | None,
        acks: list[Any],
        records: list[FlowRecord],
        item: fr.Item | None = None,
    ) -> None:
        """Refuse one mesh item for good: logged, counted, and, when it can be named, a drop record.

        The record names the item by origin and sequence number (the origin's ``forward``
        record carries the same pair), and by event id and topic when the item parsed that far.
        """
        log.warning("peer sent a malformed mesh item; refused", extra={"peer": peer, "reason": reason[:200]})
        self.metrics.inc("mesh_refused_items_total", peer=peer)
        if key is None:
            self.metrics.inc("drops_total", reason=fk.MALFORMED)
            return
        acks.append(key)  # refused for good: the sender must not send it forever
        origin, _, seq = key
        self.record(None, fk.DROP, new_span_id(), item.span_id if item else "", origin, self.region, now_us(), 0.0,
                    fk.MALFORMED, item.attempt if item else 1, seq, item.principal if item else "",
                    peer if peer != origin else "", item=item, into=records)  # fmt: skip

    def register_inbound(self, conn: Inbound) -> int:
        key = id(conn)
        self.inbound[key] = conn
        conn.send(fr.encode(fr.HELLO, **self.hello))
        conn.send(fr.encode(fr.INTEREST, lsa=self._own_lsa().to_json()))
        conn.send(fr.encode(fr.ROUTES, lsas=[ad.to_json() for ad in self.routes.fresh()]))
        return key

    def unregister_inbound(self, key: int) -> None:
        self.inbound.pop(key, None)

    # ---- link state ---------------------------------------------------------------------------

    def _up_links(self) -> dict[str, float]:
        """Our up outbound links and their cost: the last RTT measured (1 ms until the first pong)."""
        return {
            link.peer_region: round(link.rtt_ms or 1.0, 3)
            for link in self.links
            if link.state == UP and link.peer_region is not None
        }

    def _own_lsa(self) -> fr.LinkStateAd:
        return fr.LinkStateAd(self.region, self._lsa_seq, self._up_links(), tuple(sorted(self.local.patterns.patterns)),
                              self.config.transit)  # fmt: skip

    def _advertise(self) -> None:
        """Our link state changed (links or interest): a new advertisement to everyone who dialed in."""
        self._lsa_seq = max(now_us(), self._lsa_seq + 1)
        ad = self._own_lsa()
        data = fr.encode(fr.INTEREST, lsa=ad.to_json())
        for conn in list(self.inbound.values()):
            conn.send(data)
        ops = Ops()
        ops.hset(LSA_KEY, self.region, orjson.dumps(ad.to_json()))
        if self.breaker.healthy:
            self.committer.submit(ops)

    async def _advertise_loop(self) -> None:
        while True:
            await asyncio.sleep(LSA_REFRESH_S * (0.8 + random.random() * 0.4))
            self.routes.set_own_links(self._up_links())  # RTTs measured since: our own routes' costs too
            self._advertise()
            if self.routes.refresh(now_us()):
                self._wake.set()

    def _flood(self, ads: list[fr.LinkStateAd]) -> None:
        data = fr.encode(fr.ROUTES, lsas=[ad.to_json() for ad in ads])
        for conn in list(self.inbound.values()):
            conn.send(data)

    def _own_links_changed(self) -> None:
        if self.routes.set_own_links(self._up_links()):
            self._advertise()
        self._wake.set()

    def _link_up(self, link: MeshLink) -> None:
        assert link.peer_region is not None
        self.links_by_region[link.peer_region] = link
        self.metrics.set("link_security", SECURITY_VALUE[link.security], peer=link.peer_region)
        self._own_links_changed()

    def _link_down(self, link: MeshLink) -> None:
        if link.peer_region is not None:
            resent = self.outbox.link_down(link.peer_region)
            if resent:
                log.info("events will be sent again", extra={"peer": link.peer_region, "events": resent})
        self._own_links_changed()

    def _link_acks(self, link: MeshLink, ranges: list[tuple[str, str, int, int]]) -> None:
        if self.outbox.acked(ranges):
            self._wake.set()

    def _link_lsas(self, link: MeshLink, ads: list[fr.LinkStateAd]) -> None:
        now = now_us()
        newer = [ad for ad in ads if self.routes.merge(ad, now)]
        if newer:
            self._flood(newer)
            self._wake.set()

    def _link_state(self, link: MeshLink, state: str) -> None:
        peer = link.name
        self.metrics.set("link_state", LINK_STATE_VALUE[state], peer=peer)
        if state != UP:
            self.metrics.remove("link_rtt_ms", peer=peer)
        if state == "connecting" and link.connects:
            self.metrics.inc("link_reconnects_total", peer=peer)
        log.info("link state", extra={"peer": peer, "state": state})

    # ---- dispatch -----------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Send held events whenever something changed, and check ages and late acknowledgements."""
        await self.ready.wait()
        last_check = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            self._wake.clear()
            self.outbox.dispatch()
            self._flush_out()
            now = time.monotonic()
            if now - last_check >= 0.5:
                last_check = now
                if self.outbox.overdue():
                    self.outbox.dispatch()
                self._drop_records(self.outbox.expire(now_us()))
                if self.outbox.dirty and self.breaker.healthy:
                    ops = Ops()
                    self.outbox.persist(ops, set())
                    if ops:
                        self.committer.submit(ops)

    def _flush_out(self) -> None:
        if self._out:
            self.metrics.inc_many("events_out_total", ("destination", "topic"), self._out)
            self._out.clear()

    # ---- local subscribers ------------------------------------------------------------------

    def subscribe(self, patterns: list[str], principal: Principal | None = None) -> Subscriber:
        sub = Subscriber(patterns, self.config.subscriber_buffer, principal)
        sub.gate = self.gate.read_gate(principal)
        self.subscribers[sub.id] = sub
        if self.local.add(patterns):
            self._advertise()
        self.metrics.set("subscribers", len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.id, None) is not None and self.local.remove(sorted(sub.patterns.patterns)):
            self._advertise()
        self.metrics.set("subscribers", len(self.subscribers))

    async def join_group(
        self, group: str, patterns: list[str], principal: Principal, update: bool
    ) -> tuple[GroupInfo | None, GroupInfo]:
        decision = self.gate.authorize(principal, Action.JOIN, group)
        if not decision.allowed:
            raise GroupConflict(decision.reason, 403, decision.rule)
        for pattern in patterns:
            decision = self.gate.may_subscribe(principal, pattern)
            if not decision.allowed:
                raise GroupConflict(decision.reason, 403, decision.rule)
        old, new = await self.groups.join(group, patterns, principal, update, principal.has_role("admin"), now_us())
        self.gate.group_changed(group)
        if old is None or old.patterns != new.patterns:
            changed = self.local.add(sorted(new.patterns.patterns))
            if old is not None:
                changed = self.local.remove(sorted(old.patterns.patterns)) or changed
            if changed:
                self._advertise()
        return old, new

    async def remove_group(self, group: str, principal: Principal) -> GroupInfo | None:
        info = self.groups.groups.get(group)
        if info is not None and info.owner and info.owner != principal.name and not principal.has_role("admin"):
            raise GroupConflict(f"only the owner of group {group!r} ({info.owner}) or an admin may delete it", 403)
        old = await self.groups.remove(group)
        if old is not None and self.local.remove(sorted(old.patterns.patterns)):
            self._advertise()
        return old

    async def _trim_groups(self) -> None:
        """Keep each durable group's stream to what its members still owe; a drop record for each entry given up."""
        await self.ready.wait()
        while True:
            await asyncio.sleep(1.0)
            if not self.breaker.healthy:
                continue
            for group in list(self.groups.groups):
                try:
                    _, given = await self.groups.trim(group)
                except StreamUnavailable as exc:
                    log.warning("cannot trim a durable group", extra={"group": group, "error": str(exc)[:200]})
                    break
                if given:
                    log.error(
                        "durable group full: oldest unacknowledged entries given up",
                        extra={"group": group, "events": len(given), "max_entries": self.groups.max_entries},
                    )
                for ev in given:
                    tp = parse_traceparent(ev.get("traceparent"))
                    self.record_rejected(
                        str(ev.get("id", "")), str(ev.get("type", "")), fk.EXPIRED, 0, "", tp.trace_id if tp else "",
                        str(ev.get("dataschema", "")),
                    )  # fmt: skip

    async def _flap_links(self) -> None:
        """Drop a random up link now and then, so a demo shows reconnects and resends."""
        while True:
            await asyncio.sleep(random.expovariate(1 / self.config.chaos_flap_interval_s))
            up = [link for link in self.links if link.state == UP]
            if up:
                link = random.choice(up)
                log.info("dropping a mesh link on purpose", extra={"peer": link.peer_region})
                link.kill()
