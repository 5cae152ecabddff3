"""The relay: wires the pure parts (routing, channels, trace context) to the I/O parts, and runs them.

Each path an event can take lives in a module of its own, and this one only
joins them and owns their shared state:

- ``router.publish``: a producer's events, made durable in one commit, then routed;
- ``router.receive``: an EVENTS frame from a peer, applied once, then acknowledged;
- ``router.delivery``: delivery in this region (durable groups, live subscribers);
- ``router.outbox``: events held for other regions, sent over the current route;
- ``router.meshstate``: links up and down, link state advertisements, peers that dialed in;
- ``router.groupkeeper``: joining, deleting and trimming durable groups;
- ``router.authority``: governance versions ordered by one authority, copied to every region;
- ``router.recorder``: every hop as a flow record, counters and a hop span (``router.hop``).

Start-up loads the durable state (groups, held events, what was applied from
each origin, known link states) before any publish or mesh event is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore import storekeys as sk
from meshcore.auth import Authenticator, Principal, load_principals
from meshcore.breaker import CircuitBreaker
from meshcore.errors import StreamUnavailable
from meshcore.governance import Governance
from meshcore.loopmon import monitor_loop
from meshcore.metrics import Registry
from meshcore.server import is_cluster, store_run_id
from meshcore.sublist import SubList
from meshcore.supervise import Supervisor
from meshcore.tls import client_context
from router import frame as fr
from router.authority import Authority
from router.committer import Committer, Ops, Unavailable
from router.config import RelayConfig
from router.dedup import DedupLog, DedupWindow, unpack_keys
from router.delivery import LocalDelivery
from router.envelope import EventLimits, now_us
from router.errors import Backpressure, FrameError
from router.flowsink import FlowSink
from router.gate import Gate
from router.groupkeeper import GroupKeeper
from router.groupsession import GroupSessions, session_client
from router.hop import dropped, trimmed
from router.link import LinkCallbacks, MeshLink, PeerAddress
from router.meshstate import LSA_KEY, MeshState
from router.origin import OriginState
from router.outbox import DISPATCH_MAX_ITEMS, Dropped, Outbox
from router.publish import Publisher
from router.quota import SessionQuota
from router.receive import MeshReceiver
from router.recorder import Recorder
from router.registry import GovernanceStore, GovernanceWatcher
from router.routing import LinkStateTable, LocalInterest
from router.siblings import Siblings
from router.spans import HopTracer, otlp_exporter, resource_attributes
from router.status import Status, describe_metrics
from router.storemigration import migrate
from router.subscription import GroupStore, Subscriber

log = logging.getLogger(__name__)

REGIONS_KEY = "meshscope:regions"
ROUTE_AGE_S = 30.0


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
        self.limits = EventLimits(
            max_event_bytes=config.max_event_bytes,
            max_depth=config.max_json_depth,
            new_trace_sample_ratio=min(max(config.trace_sample_ratio, 0.0), 1.0),
        )
        self.metrics = m = Registry(
            topic_label_max=config.topic_label_max, process=True, const_labels={"region": self.region}
        )
        describe_metrics(m, [p for p in (PeerAddress.parse(text).region for text in config.peers) if p])
        m.set("anonymous", 1 if self.auth.allow_anonymous else 0)
        self.supervisor = Supervisor(on_restart=lambda task: m.inc("task_restarts_total", task=task))
        self.breaker = CircuitBreaker("redis")
        self.cluster = is_cluster(client)
        self.committer = Committer(
            client,
            f"{self.region}/{self.name}",
            self.breaker,
            lambda err: m.inc("redis_errors_total", error=err),
            wait=config.store_wait,
            home=self.region,
            cluster=self.cluster,
        )
        # the flow stream's shard this relay writes (every record of its commits and its sink)
        self.flow_stream = sk.flow_shard(config.flow_stream, config.flow_shards, f"{self.region}/{self.name}")
        self.local = LocalInterest()
        self.routes = LinkStateTable(self.region, config.hop_limit, ROUTE_AGE_S, config.link_store_max_age_s)
        self.dedup = DedupWindow(config.dedup_window)
        # the keys of accepted events, in the store, so a retry is recognized after a restart too
        self.dedup_stream = sk.dedup(self.region, self.name)
        self.dedup_log = DedupLog(config.dedup_restart_s, config.dedup_window) if config.dedup_restart_s else None
        self.draining = False  # stopping: new publishes get 503, commits in flight finish
        self.requests_in_flight = 0  # publish requests being handled (the body may still be arriving)
        self.subscribers: dict[int, Subscriber] = {}
        self.wanted: SubList[Subscriber] = SubList()  # live subscribers by pattern, for delivery
        # group members' commands run on a pool of their own: they never take a connection a publish needs
        self.session_redis = session_client(client, config.group_connections)
        self.groups = GroupStore(
            client, self.region, config.group_max_entries, self.session_redis, config.max_groups_per_principal
        )
        self.group_sessions = GroupSessions()
        self.sessions = SessionQuota(config.max_sessions_per_principal)
        self.origins: dict[str, OriginState] = {}
        self.applied_key = sk.applied(self.region)
        self.sink = FlowSink(
            client,
            self.flow_stream,
            config.flow_stream_maxlen,
            config.flow_queue_max,
            config.flow_batch,
            config.flow_flush_interval_s,
            m,
            writer=f"{self.region}/{self.name}/flows",
            home=self.region,
            cluster=self.cluster,
            on_trimmed=lambda records, oldest_us: self.record(trimmed(self.region, records, oldest_us)),
        )
        if tracer is None:
            exporter = otlp_exporter(config.otlp_endpoint) if config.otlp_endpoint else None
            resource = resource_attributes(
                self.region, self.name, config.otel_service_name, config.otel_resource_attributes
            )
            tracer = HopTracer(self.region, self.name, config.trace_sample_ratio, exporter, resource=resource)
        self.tracer = tracer
        self.record = Recorder(self.region, self.name, self.sink, m, tracer)
        self.registry = GovernanceStore(client)
        self.watcher = GovernanceWatcher(self.registry, self._governance_changed, lambda doc: self.authority.ahead(doc))
        self.gate = Gate(self.region, self.auth, self.groups, lambda: self.watcher.governance, self.record.refused)
        self.gov_version = ""
        self.hello = {
            "region": self.region,
            "relay": self.name,
            "provider": config.region.provider,
            "lat": config.region.lat,
            "lon": config.region.lon,
            "city": config.region.city,
            "gov": self.gov_version,
            "gov_home": config.governance_home or "",
            "gov_cut_off": False,
            "skew_s": config.clock_skew_s,
            "clock_ok": True,
        }
        self.clock_refused: dict[str, str] = {}
        """Peer region -> why it refuses this relay's clock: publishes for it are answered 503."""
        self.authority = Authority(self)
        # the paths an event takes, each in its own module
        self.mesh = MeshState(self)
        self.delivery = LocalDelivery(self)
        self.publisher = Publisher(self)
        self.receiver = MeshReceiver(self)
        self.group_keeper = GroupKeeper(self)
        self.siblings = Siblings(self)
        tls = config.tls
        ssl_ctx = client_context(tls, tls.ca) if tls is not None and tls.ca else None
        mesh = self.mesh
        callbacks = LinkCallbacks(
            mesh.link_up,
            mesh.link_down,
            mesh.link_acks,
            mesh.link_lsas,
            mesh.link_state,
            mesh.link_governance,
            mesh.link_behind,
            mesh.link_clock,
        )
        self.links: list[MeshLink] = []
        for text in config.peers if self.siblings.owner else ():  # worker 0 holds the region's links
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
        self._wake = asyncio.Event()
        self.isolated_until = 0.0  # fault injection: every link silent until then (``isolate``)
        self._store_check_at = 0.0
        # set once groups, stored events and applied state are loaded: mesh events and publishes wait
        # for it, or events right after a restart would be routed without knowing the durable groups
        self.ready = asyncio.Event()

    @property
    def inbound(self) -> dict[int, Any]:
        """The peers that dialed in (``router.meshstate.Inbound``), by connection."""
        return self.mesh.inbound

    def wake(self) -> None:
        """Something to send changed (held events, routes): the dispatch loop runs now."""
        self._wake.set()

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
        sup.spawn("group-trim", self.group_keeper.trim_loop)
        sup.spawn("link-state", self.mesh.advertise_loop)
        sup.spawn("governance", self._watch_governance)
        sup.spawn("governance-store", self.authority.persist_loop)
        sup.spawn("governance-contact", self.authority.watch_contact)
        sup.spawn("loop-monitor", lambda: monitor_loop(self.metrics))
        if self.siblings.on:
            sup.spawn("siblings", self.siblings.run)
            sup.spawn("heartbeat", self.siblings.heartbeat)
            sup.spawn("group-reload", self.siblings.reload_groups)
        for link in self.links:
            sup.spawn(f"link {link.url}", link.run)
        if self.config.chaos_flap_interval_s > 0:
            sup.spawn("link-flaps", self.mesh.flap_links)
        for task in sup.tasks:
            self.metrics.zero("task_restarts_total", task=task)
        log.info("relay started", extra={"peers": list(self.config.peers)})

    async def _load(self) -> None:
        attempt = 0
        while True:
            try:
                await migrate(self.redis, self.region, self.name)
                groups = await self.groups.load()
                dedup_keys = await self._load_dedup_keys()
                applied: Any = await self.redis.hgetall(self.applied_key)
                lsas: Any = await self.redis.hgetall(LSA_KEY)
                # the region's link store is worker 0's alone: another worker never loads or writes it
                dropped = await self.outbox.load() if self.siblings.owner else []
                await self.watcher.refresh()
                await self.siblings.load()
                self.authority.heard = self.authority.heard or await self.registry.has_version()
                await self.redis.hset(REGIONS_KEY, self.region, orjson.dumps({**self.hello, "ts": now_us()}))
            except (StreamUnavailable, RedisError) as exc:
                delay = min(5.0, 0.2 * 2**attempt) * (0.5 + random.random() / 2)
                log.warning("cannot load relay state yet", extra={"error": str(exc)[:300], "retry_in_s": delay})
                attempt += 1
                await asyncio.sleep(delay)
                continue
            break
        self.dedup.load(dedup_keys)
        for origin, raw in applied.items():
            self.origins[origin.decode()] = OriginState.from_json(orjson.loads(raw))
        now = now_us()
        for raw in lsas.values():
            try:
                self.routes.merge(fr.lsa_of(orjson.loads(raw)), now)
            except (FrameError, ValueError):
                continue
        for info in groups.values():
            self.local.add(sorted(info.patterns.patterns))
        self._drop_records(dropped)
        if self.outbox.rolled_back:
            self.metrics.inc("sequence_rollbacks_total", self.outbox.rolled_back, found_by="origin")
        self.ready.set()
        self.mesh.advertise()  # the first advertisement: none went out before the groups' interest was loaded
        self.wake()
        log.info(
            "relay state loaded",
            extra={"groups": len(groups), "held": self.outbox.depth, "dedup_keys": len(dedup_keys)},
        )

    async def _load_dedup_keys(self) -> list[bytes]:
        """Keys this relay accepted within the restart window (the newest, up to the window size), oldest first."""
        if self.dedup_log is None:
            return []
        oldest_ms = now_us() // 1000 - self.dedup_log.window_ms
        newest_first: list[bytes] = []
        top = "+"
        while len(newest_first) < self.config.dedup_window:
            entries: Any = await self.redis.xrevrange(self.dedup_stream, top, str(oldest_ms), count=1000)
            for _, fields in entries:
                newest_first.extend(reversed(unpack_keys(fields.get(b"k", b""))))
            if len(entries) < 1000:
                break
            top = "(" + entries[-1][0].decode()
        return newest_first[: self.config.dedup_window][::-1]

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking new work and let what is in flight finish; whether it all did within ``timeout_s``.

        New publishes get 503 with Retry-After, mesh frames are left unacknowledged (their sender
        sends them again), and every publish already being committed gets its answer.
        """
        self.draining = True
        log.info("relay stopping: draining", extra={"publishes": self.publisher.in_flight})
        deadline = time.monotonic() + timeout_s
        while self.requests_in_flight or self.publisher.in_flight or self.committer.busy:
            if time.monotonic() >= deadline:
                log.warning(
                    "relay stopping with work in flight",
                    extra={
                        "requests": self.requests_in_flight,
                        "publishes": self.publisher.in_flight,
                        "commits": self.committer.backlog,
                    },
                )
                return False
            await asyncio.sleep(0.01)
        log.info("relay drained")
        return True

    async def stop(self) -> None:
        await self.group_sessions.close_all()
        await self.supervisor.stop()
        await self.sink.shutdown()
        self.tracer.shutdown()
        await self.session_redis.aclose()

    def _drop_records(self, given_up: list[Dropped]) -> None:
        for d in given_up:
            for held in d.items:
                self.record(dropped(held, self.region, d.channel.dst, d.status, now_us()))

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
        self.send_hello()
        if gov.document is not None:
            self.authority.flood(gov.document)

    def send_hello(self) -> None:
        """Our HELLO again to every peer, over every connection: what we enforce changed, our contact, or
        whether peers accept our clock; it carries our clock now."""
        hello = fr.encode(fr.HELLO, **self.hello, ts=now_us())
        self.mesh.broadcast(hello)
        for link in self.links:
            link.control(hello)

    # ---- admission ----------------------------------------------------------------------------

    def check_capacity(self) -> None:
        """Raise when events cannot be accepted now: Redis is failing (503) or flow records back up (429)."""
        self.committer.available()
        self.check_governance()
        if self.sink.full:
            raise Backpressure("the relay's flow record queue is full", retry_after_s=1)

    def check_governance(self) -> None:
        """Raise Unavailable (503) while the governance version to enforce is not known (never fall open)."""
        if not self.authority.known():
            raise Unavailable(
                f"the governance version to enforce is not known yet: {self.region}'s store holds none and the "
                f"authority ({self.config.governance_home}) has not been reached",
                2.0,
            )

    # ---- dispatch -----------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        """Send held events whenever something changed, and check ages and late acknowledgements."""
        await self.ready.wait()
        last_check = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)
            self._wake.clear()
            if self.outbox.dispatch() >= DISPATCH_MAX_ITEMS:
                self._wake.set()  # more waits: sent on the next round, after the loop served the rest
            self.record.flush_counts()
            now = time.monotonic()
            if now - last_check >= 0.5:
                last_check = now
                await self._check_store()
                if self.outbox.overdue() and self.outbox.dispatch() >= DISPATCH_MAX_ITEMS:
                    self._wake.set()
                self._drop_records(self.outbox.expire(now_us()))
                if self.outbox.dirty and self.breaker.healthy:
                    ops = Ops()
                    self.outbox.persist(ops, set())
                    if ops:
                        self.committer.submit(ops)

    async def _check_store(self) -> None:
        """Follow the store's restarts: one that kept every commit of this relay is the same store.

        The channels' stored state names the store's run_id; a relay that loads state written before
        the store last restarted numbers on in a new epoch. After a restart whose commit counter
        is still where this relay left it (it lost nothing of ours), the new run_id is adopted,
        so a later restart of this relay does not take it for a rollback.
        """
        now = time.monotonic()
        if now < self._store_check_at:
            return
        self._store_check_at = now + 5.0
        outbox, committer = self.outbox, self.committer
        if not outbox.store_run or not self.breaker.healthy:
            return
        try:
            run = await store_run_id(self.redis, committer.key)
            if not run or run == outbox.store_run:
                return
            counter = int(await self.redis.get(committer.key) or 0)
        except (RedisError, ValueError):
            return
        if counter < committer.confirmed or committer.lost:
            self._store_check_at = float("inf")  # the stored run_id stays: a restart of this relay moves on
            log.error("the store restarted without commits of this relay; its numbering moves on at restart")
            return
        log.info("the store restarted and kept every commit of this relay", extra={"run_id": run})
        outbox.store_run = run
        outbox.dirty.update(outbox.channels)

    # ---- live subscribers ---------------------------------------------------------------------

    def subscribe(self, patterns: list[str], principal: Principal | None = None) -> Subscriber:
        sub = Subscriber(patterns, self.config.subscriber_buffer, principal)
        sub.gate = self.gate.read_gate(principal)
        self.subscribers[sub.id] = sub
        for pattern in sub.patterns.patterns:
            self.wanted.insert(pattern, sub)
        if self.local.add(patterns):
            self.mesh.advertise()
        else:
            self.siblings.interest_changed()
        self.metrics.set("subscribers", len(self.subscribers))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        if self.subscribers.pop(sub.id, None) is None:
            return
        for pattern in sub.patterns.patterns:
            self.wanted.remove(pattern, sub)
        if self.local.remove(sorted(sub.patterns.patterns)):
            self.mesh.advertise()
        else:
            self.siblings.interest_changed()
        self.metrics.set("subscribers", len(self.subscribers))

    def isolate(self, seconds: float) -> None:
        """Fault injection: every link silent for ``seconds``, both ways (``router.faults``)."""
        self.isolated_until = time.monotonic() + seconds
        for link in self.links:
            link.black_hole(seconds)

    @property
    def isolated(self) -> bool:
        return time.monotonic() < self.isolated_until
