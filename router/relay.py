"""The relay: takes published and mesh events, routes them, and records every hop.

This module joins the pure parts (routing, trace context, flow records) to the
I/O parts (links, subscribers, the flow sink). Its per-event path is
synchronous and allocation-light; the only awaits are Redis appends for
durable groups, done once per batch.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore import flowrecord as fk
from meshcore.backoff import backoff_s
from meshcore.flowrecord import FlowRecord
from meshcore.metrics import Registry
from router import frame as fr
from router.config import RelayConfig
from router.envelope import Event, now_us
from router.errors import Backpressure, StreamUnavailable
from router.flowsink import FlowSink
from router.link import MeshLink, Outbound
from router.routing import LINK_STATE_VALUE, DedupWindow, InterestTable
from router.spans import HopTracer, otlp_exporter
from router.subscription import GroupStore, Subscriber
from router.tracecontext import new_span_id, parse_traceparent

log = logging.getLogger(__name__)

LINK_STREAM = "meshscope:links"
REGIONS_KEY = "meshscope:regions"


class Relay:
    def __init__(self, config: RelayConfig, client: aioredis.Redis, tracer: HopTracer | None = None):
        self.config = config
        self.region = config.region.id
        self.name = config.relay_name
        self.redis = client
        self.metrics = m = Registry()
        m.describe("events_in_total", "counter", "Events received, by topic and source (producer or peer region)")
        m.describe("events_out_total", "counter", "Events sent, by topic and destination (local or peer region)")
        m.describe("drops_total", "counter", "Events dropped, by reason")
        m.describe("rejected_total", "counter", "Publish requests or events refused, by HTTP status")
        m.describe("mesh_duplicates_total", "counter", "Resent mesh events already delivered")
        m.describe("link_state", "gauge", "Link state: 0 down, 1 connecting, 2 up, 3 draining")
        m.describe("link_rtt_ms", "gauge", "Last measured round trip time of a link")
        m.describe("link_queue_depth", "gauge", "Events queued or awaiting ACK on a link")
        m.describe("link_reconnects_total", "counter", "Reconnect attempts of a link")
        m.describe("subscribers", "gauge", "Connected live subscribers")
        m.describe("subscriber_queue_depth", "gauge", "Events buffered for live subscribers, summed")
        self.interest = InterestTable()
        self.dedup = DedupWindow(config.dedup_window)
        self.mesh_dedup = DedupWindow(config.dedup_window)
        self.subscribers: dict[int, Subscriber] = {}
        self.groups = GroupStore(client, self.region)
        self.inbound: set[Callable[[bytes], None]] = set()
        self.sink = FlowSink(
            client,
            config.flow_stream,
            config.flow_stream_maxlen,
            config.flow_queue_max,
            config.flow_batch,
            config.flow_flush_interval_s,
            m,
        )
        if tracer is None:
            exporter = otlp_exporter(config.otlp_endpoint) if config.otlp_endpoint else None
            tracer = HopTracer(self.region, self.name, config.trace_sample_ratio, exporter)
        self.tracer = tracer
        self.hello = {
            "region": self.region,
            "relay": self.name,
            "provider": config.region.provider,
            "lat": config.region.lat,
            "lon": config.region.lon,
            "city": config.region.city,
        }
        self.links: list[MeshLink] = [
            MeshLink(
                url,
                self.hello,
                queue_max=config.link_queue_max,
                batch=config.link_batch,
                backoff_base_s=config.link_backoff_base_s,
                backoff_max_s=config.link_backoff_max_s,
                ping_interval_s=config.ping_interval_s,
                on_hello=self._on_hello,
                on_interest=self._on_interest,
                on_sent=self._on_sent,
                on_state=self._on_link_state,
                delays_ms=config.link_delays_ms,
            )
            for url in config.peers
        ]
        self.links_by_region: dict[str, MeshLink] = {}
        self._out: Counter[tuple[str, str]] = Counter()  # (destination, topic) -> events, flushed per batch
        self._tasks: list[asyncio.Task[None]] = []
        # set once the durable groups are loaded: mesh events wait for it (un-acked at the sender), or
        # events for a group arriving right after a restart would be dropped as having no route
        self.groups_loaded = asyncio.Event()

    # ---- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving even when Redis is down: groups and the region register once it is back."""
        self._tasks.append(asyncio.create_task(self._register(), name="register"))
        self.sink.start()
        for link in self.links:
            link.start()
        self._tasks.append(asyncio.create_task(self._sample_links(), name="link-samples"))
        if self.config.chaos_flap_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._flap_links(), name="link-flaps"))
        log.info("relay started", extra={"peers": list(self.config.peers)})

    async def _register(self) -> None:
        attempt = 0
        while True:
            try:
                groups = await self.groups.load()
                await self.redis.hset(REGIONS_KEY, self.region, orjson.dumps({**self.hello, "ts": now_us()}))
            except (StreamUnavailable, RedisError) as exc:
                delay = backoff_s(attempt, 0.2, 5.0, random.random())
                log.warning("cannot load consumer groups yet", extra={"error": str(exc), "retry_in_s": delay})
                attempt += 1
                await asyncio.sleep(delay)
                continue
            changed = False
            for patterns in groups.values():
                changed = self.interest.add_local(sorted(patterns.patterns)) or changed
            if changed:
                self._push_interest()
            self.groups_loaded.set()
            return

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        # wait for them, so no Redis command is cut off after its client is closed
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self.links:
            await link.stop()
        await self.sink.shutdown()
        self.tracer.shutdown()

    # ---- records ----------------------------------------------------------------------

    def _record(
        self,
        ev: Event,
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
    ) -> None:
        e2e_ms = (ts - ev.published_us) / 1000 if ev.published_us else 0.0
        self.sink.add(
            FlowRecord(
                ts,
                ev.id,
                ev.trace.trace_id,
                span_id,
                parent,
                ev.topic,
                kind,
                src,
                dst,
                self.name,
                hop_ms,
                e2e_ms,
                status,
                ev.size,
                attempt,
                seq,
            )
        )
        if status != fk.OK:
            self.metrics.inc("drops_total", reason=status)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "event dropped",
                    extra={
                        "status": status,
                        "event_id": ev.id,
                        "topic": ev.topic,
                        "trace_id": ev.trace.trace_id,
                        "span_id": span_id,
                        "dst": dst,
                    },
                )
        if self.tracer.enabled:
            self.tracer.hop(
                f"meshscope {kind}",
                ev.trace.trace_id,
                span_id,
                parent,
                ts - int(hop_ms * 1000),
                ts,
                {
                    "messaging.destination.name": ev.topic,
                    "meshscope.kind": kind,
                    "meshscope.status": status,
                    "meshscope.src_region": src,
                    "meshscope.dst_region": dst,
                    "messaging.message.id": ev.id,
                },
            )

    def record_rejected(self, event_id: str, topic: str, status: str, size: int) -> None:
        """A drop record for an event refused at the edge (nothing of it is routed)."""
        ts = now_us()
        self.sink.add(
            FlowRecord(
                ts,
                event_id,
                "",
                new_span_id(),
                "",
                topic,
                fk.DROP,
                self.region,
                self.region,
                self.name,
                0.0,
                0.0,
                status,
                size,
                1,
                0,
            )
        )
        self.metrics.inc("drops_total", reason=status)

    # ---- publish ----------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise Backpressure when flow records could not be kept."""
        if self.sink.full:
            raise Backpressure("the relay's flow record queue is full", retry_after_s=1)

    async def publish(self, events: list[Event]) -> tuple[list[str], list[str]]:
        """Route accepted events; returns (accepted ids, duplicate ids)."""
        accepted: list[str] = []
        duplicates: list[str] = []
        group_appends: list[tuple[str, bytes]] = []
        region = self.region
        topics: Counter[tuple[str, str]] = Counter()
        for ev in events:
            start = now_us()
            ev.published_us = start
            topics[("producer", ev.topic)] += 1
            span = new_span_id()
            if self.dedup.seen(ev.source, ev.id):
                duplicates.append(ev.id)
                self._record(ev, fk.DROP, span, ev.trace.span_id, region, region, start, 0.0, fk.DUPLICATE)
                continue
            accepted.append(ev.id)
            route = self.interest.route(ev.topic)
            if route.empty:
                self._record(ev, fk.DROP, span, ev.trace.span_id, region, region, start, 0.0, fk.NO_ROUTE)
                continue
            ts = now_us()
            self._record(ev, fk.PUBLISH, span, ev.trace.span_id, region, region, ts, (ts - start) / 1000)
            if route.local:
                self._deliver(ev, span, region, ts, 1, 0, group_appends)
            for peer in route.peers:
                link = self.links_by_region.get(peer)
                if link is None or not link.enqueue(Outbound(ev, new_span_id(), span, ts)):
                    self._record(ev, fk.DROP, new_span_id(), span, region, peer, now_us(), 0.0, fk.LINK_DOWN)
        self.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        self._flush_out()
        if group_appends:
            await self.groups.append(group_appends)
        return accepted, duplicates

    def _deliver(
        self,
        ev: Event,
        parent: str,
        src: str,
        sent_us: int,
        attempt: int,
        seq: int,
        group_appends: list[tuple[str, bytes]],
    ) -> None:
        """Hand one event to every matching local subscriber and group; record the outcome."""
        ts = now_us()
        hop_ms = (ts - sent_us) / 1000
        region = self.region
        if self.config.failure_rate and random.random() < self.config.failure_rate:
            self._record(ev, fk.DROP, new_span_id(), parent, src, region, ts, hop_ms, fk.DELIVERY_FAILED, attempt, seq)
            return
        data = ev.encoded or orjson.dumps(ev.body)
        delivered = dropped = False
        for sub in self.subscribers.values():
            if sub.patterns.matches(ev.topic):
                if sub.offer(data):
                    delivered = True
                else:
                    dropped = True
                    self._record(
                        ev, fk.DROP, new_span_id(), parent, src, region, ts, hop_ms, fk.BACKPRESSURE, attempt, seq
                    )
        for group in self.groups.matching(ev.topic):
            group_appends.append((group, data))
            delivered = True
        if delivered:
            self._record(ev, fk.DELIVER, new_span_id(), parent, src, region, ts, hop_ms, fk.OK, attempt, seq)
            self._out[("local", ev.topic)] += 1
        elif not dropped:
            self._record(ev, fk.DROP, new_span_id(), parent, src, region, ts, hop_ms, fk.NO_ROUTE, attempt, seq)

    # ---- mesh, accepting side -----------------------------------------------------------

    async def receive_mesh(self, peer_region: str, batch: list[fr.MeshEvent]) -> None:
        """Deliver events that arrived from a peer; they are never forwarded again."""
        if not self.groups_loaded.is_set():
            await self.groups_loaded.wait()
        group_appends: list[tuple[str, bytes]] = []
        topics: Counter[tuple[str, str]] = Counter()
        for me in batch:
            body = me.body
            event_id, source, topic = body.get("id"), body.get("source"), body.get("type")
            trace = parse_traceparent(body.get("traceparent"))
            if not (isinstance(event_id, str) and isinstance(source, str) and isinstance(topic, str) and trace):
                log.warning("peer sent an event without id, source, type or traceparent", extra={"peer": peer_region})
                self.metrics.inc("drops_total", reason="malformed_mesh_event")
                continue
            if self.mesh_dedup.seen(source, event_id):
                self.metrics.inc("mesh_duplicates_total")
                continue
            ev = Event(event_id, source, topic, trace, body, me.size, me.published_us)
            topics[(peer_region, topic)] += 1
            if self.interest.route(topic).local:
                self._deliver(ev, me.span_id, peer_region, me.sent_us, me.attempt, me.seq, group_appends)
            else:
                ts = now_us()
                self._record(
                    ev,
                    fk.DROP,
                    new_span_id(),
                    me.span_id,
                    peer_region,
                    self.region,
                    ts,
                    (ts - me.sent_us) / 1000,
                    fk.NO_ROUTE,
                    me.attempt,
                    me.seq,
                )
        self.metrics.inc_many("events_in_total", ("source", "topic"), topics)
        self._flush_out()
        if group_appends:
            await self.groups.append(group_appends)

    def _flush_out(self) -> None:
        if self._out:
            self.metrics.inc_many("events_out_total", ("destination", "topic"), self._out)
            self._out.clear()

    def interest_frame(self) -> bytes:
        return fr.encode(fr.INTEREST, patterns=sorted(self.interest.local.patterns), gen=self.interest.generation)

    def _push_interest(self) -> None:
        data = self.interest_frame()
        for send in list(self.inbound):
            send(data)

    # ---- local subscribers ------------------------------------------------------------

    def subscribe(self, patterns: list[str]) -> Subscriber:
        sub = Subscriber(patterns, self.config.subscriber_buffer)
        self.subscribers[sub.id] = sub
        if self.interest.add_local(patterns):
            self._push_interest()
        self.metrics.set("subscribers", len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.id, None) is not None and self.interest.remove_local(sorted(sub.patterns.patterns)):
            self._push_interest()
        self.metrics.set("subscribers", len(self.subscribers))

    async def ensure_group(self, group: str, patterns: list[str]) -> None:
        old, new = await self.groups.ensure(group, patterns)
        if old != new:
            changed = self.interest.add_local(sorted(new.patterns))
            if old is not None:
                changed = self.interest.remove_local(sorted(old.patterns)) or changed
            if changed:
                self._push_interest()

    async def remove_group(self, group: str) -> bool:
        old = await self.groups.remove(group)
        if old is not None and self.interest.remove_local(sorted(old.patterns)):
            self._push_interest()
        return old is not None

    # ---- mesh, dialing side -----------------------------------------------------------

    def _on_hello(self, link: MeshLink, msg: dict[str, Any]) -> None:
        region = msg["region"]
        if region == self.region:
            log.warning("peer has our own region id", extra={"peer": link.url})
        self.links_by_region[region] = link

    def _on_interest(self, link: MeshLink, patterns: list[str], gen: int) -> None:
        if link.peer_region is not None:
            self.interest.set_peer(link.peer_region, patterns, gen)

    def _on_sent(self, link: MeshLink, items: list[Outbound], sent_us: int) -> None:
        peer = link.peer_region or "?"
        out = self._out
        for item in items:
            ev = item.event
            self._record(
                ev,
                fk.FORWARD,
                item.span_id,
                item.parent_span_id,
                self.region,
                peer,
                sent_us,
                (sent_us - item.received_us) / 1000 if item.attempt == 1 else 0.0,
                fk.OK,
                item.attempt,
                item.seq,
            )
            out[(peer, ev.topic)] += 1
        self._flush_out()

    def _on_link_state(self, link: MeshLink, state: str) -> None:
        peer = link.peer_region or link.url
        self.metrics.set("link_state", LINK_STATE_VALUE[state], peer=peer)
        if state == "connecting" and link.connects:
            self.metrics.inc("link_reconnects_total", peer=peer)
        log.info("link state", extra={"peer": peer, "state": state})

    async def _flap_links(self) -> None:
        """Drop a random up link now and then, so a demo shows reconnects and queued resends."""
        while True:
            await asyncio.sleep(random.expovariate(1 / self.config.chaos_flap_interval_s))
            up = [link for link in self.links if link.state == "up"]
            if up:
                link = random.choice(up)
                log.info("dropping a mesh link on purpose", extra={"peer": link.peer_region})
                link.kill()

    async def _sample_links(self) -> None:
        while True:
            await asyncio.sleep(self.config.link_stats_interval_s)
            samples = []
            ts = now_us()
            queued = 0
            for link in self.links:
                peer = link.peer_region or link.url
                self.metrics.set("link_queue_depth", link.depth, peer=peer)
                queued += link.depth
                if link.rtt_ms is not None:
                    self.metrics.set("link_rtt_ms", link.rtt_ms, peer=peer)
                samples.append(
                    [ts, self.name, self.region, peer, link.state, link.rtt_ms or 0.0, link.depth, link.reconnects]
                )
            self.metrics.set("subscriber_queue_depth", sum(s.queue.qsize() for s in self.subscribers.values()))
            if samples:
                try:
                    await self.redis.xadd(
                        LINK_STREAM, {b"v": b"1", b"r": orjson.dumps(samples)}, maxlen=100_000, approximate=True
                    )
                except RedisError as exc:
                    log.warning("cannot write link samples", extra={"error": str(exc)})
