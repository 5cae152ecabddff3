"""One member of a durable group on one WebSocket: its entries out, its acknowledgements in.

Why a member never blocks in Redis, and is never cancelled:

- A blocking XREADGROUP holds a pooled connection for its whole block time, so
  N idle members need N connections: 120 members took a pool of 100, and
  publishes and governance then failed for everyone. Reads here return at
  once; a member then waits in the relay, for the group's wake-up (set when a
  commit of this relay appended to the group) or ``group_poll_interval_s``
  (what other relays of the region appended).
- redis-py does not survive cancellation in the middle of a command: a
  cancelled command may leave its connection checked out, or swallow the
  cancellation and run on (a reader in a loop then never ends, and neither
  does the relay's shutdown). So the worker is never cancelled. When the
  session ends it is told to stop; it finishes the command it is in (bounded
  by the session pool's socket timeout), lands the acknowledgements it was
  sent (for at most ``ACK_FLUSH_S``), and returns.
- Its commands run on the relay's session pool (``session_client``): bounded,
  waited for when busy, and separate from the pool publishes use.

What a member gets: first its own un-acknowledged entries, then new ones, then
now and then entries idle on another consumer of its principal (one that went
away), and entries parked for members that may read them. An entry its policy
does not let it read is not sent: it is parked (``GroupStore.park``) for a
member that may, never acknowledged for it. An acknowledgement counts only for
entries this member was given (``GroupStore.ack_own``); the rest are ignored
and counted (``group_acks_refused_total``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection
from starlette.websockets import WebSocket, WebSocketDisconnect

from meshcore.auth import Principal
from meshcore.backoff import backoff_s
from meshcore.errors import StreamUnavailable
from router.subscription import MAX_ACK_IDS, is_entry_id

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_UNAVAILABLE = 1013
READ_COUNT = 100
"""Entries read per XREADGROUP."""
ACK_FLUSH_S = 3.0
"""How long a member that ended keeps trying to land the acknowledgements it was sent."""
STOP_WAIT_S = 5.0
"""How long the end of a session waits for its worker (which then ends by itself)."""
MAX_QUEUED_ACK_IDS = 50_000
"""Acknowledged ids waiting to land; past it the member's next message is read only once they did."""
SESSION_CLIENT_NAME = "meshscope-sessions"
"""The name the session pool's connections carry in Valkey's CLIENT LIST."""
SESSION_SOCKET_TIMEOUT_S = 5.0
"""The longest one command of a member may take (the session pool's socket timeout)."""


CLUSTER_SETTINGS = ("username", "password", "socket_connect_timeout", "socket_timeout")
"""The settings of the relay's cluster client that its session client keeps."""


def session_client(client: aioredis.Redis, max_connections: int) -> aioredis.Redis:
    """A client for members' commands: ``client``'s server and settings, on a pool of its own, waited for when busy.

    On a cluster: a cluster client of its own, ``max_connections`` per node.
    """
    if isinstance(client, RedisCluster):
        known = client.nodes_manager
        kwargs = {k: v for k, v in known.connection_kwargs.items() if k in CLUSTER_SETTINGS}
        kwargs["socket_timeout"] = kwargs.get("socket_timeout") or SESSION_SOCKET_TIMEOUT_S
        kwargs["ssl"] = issubclass(known.connection_kwargs.get("connection_class", object), SSLConnection)
        nodes = [ClusterNode(n.host, n.port) for n in known.startup_nodes.values()]
        own = RedisCluster(
            startup_nodes=nodes, max_connections=max_connections, client_name=SESSION_CLIENT_NAME, **kwargs
        )
        return cast(aioredis.Redis, own)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["socket_timeout"] = kwargs.get("socket_timeout") or SESSION_SOCKET_TIMEOUT_S
    kwargs.setdefault("socket_connect_timeout", 2)
    kwargs["client_name"] = SESSION_CLIENT_NAME  # in CLIENT LIST, so an operator sees which pool holds what
    own = aioredis.BlockingConnectionPool(
        connection_class=pool.connection_class,
        max_connections=max_connections,
        timeout=SESSION_SOCKET_TIMEOUT_S,
        **kwargs,
    )
    return aioredis.Redis.from_pool(own)  # closing the client closes its pool


class GroupSessions:
    """The members connected to this relay, by group: to wake them, and to end them all when the relay stops."""

    def __init__(self) -> None:
        self.by_group: defaultdict[str, set[GroupSession]] = defaultdict(set)
        self.workers: set[asyncio.Task[None]] = set()

    def wake(self, groups: Iterable[str]) -> None:
        """Entries were appended to ``groups``: their members read now."""
        for group in groups:
            for session in self.by_group.get(group, ()):
                session.wake.set()

    async def close_all(self, timeout_s: float = STOP_WAIT_S) -> None:
        """End every member; wait (at most ``timeout_s``) for their workers to land what they owe."""
        for sessions in self.by_group.values():
            for session in sessions:
                session.stop()
        if self.workers:
            await asyncio.wait(set(self.workers), timeout=timeout_s)


class GroupSession:
    def __init__(self, ws: WebSocket, relay: Relay, group: str, consumer: str, principal: Principal):
        self.ws = ws
        self.relay = relay
        self.group = group
        self.consumer = consumer
        self.principal = principal
        self.wake = asyncio.Event()
        self.stopping = False
        self.acks: list[str] = []
        self.acks_landed = asyncio.Event()
        self.acks_landed.set()
        self._pending = True  # first the member's own un-acknowledged entries, all of them, then new ones
        self._after = "0"
        self._next_claim = 0.0
        self._next_parked = 0.0
        self._parked_after = "-"

    def stop(self) -> None:
        """The session ended: the worker stops after its current command."""
        self.stopping = True
        self.wake.set()

    # ---- the WebSocket side: acknowledgements in --------------------------------------------

    async def serve(self) -> None:
        """Run the member until its WebSocket closes; the worker is told to stop, never cancelled."""
        r = self.relay
        worker = asyncio.create_task(self.work(), name=f"group member {self.group}")
        r.group_sessions.workers.add(worker)
        worker.add_done_callback(r.group_sessions.workers.discard)
        r.group_sessions.by_group[self.group].add(self)
        r.group_members[self.group] += 1
        receive: asyncio.Task[Any] | None = None
        try:
            while True:
                if len(self.acks) > MAX_QUEUED_ACK_IDS:
                    await self._wait_or_end(self.acks_landed, worker)
                    if worker.done():
                        break
                receive = asyncio.create_task(self.ws.receive())
                done, _ = await asyncio.wait({receive, worker}, return_when=asyncio.FIRST_COMPLETED)
                if receive not in done:
                    break  # the worker ended: the member's WebSocket is gone, or it failed (logged)
                message, receive = receive.result(), None
                if message["type"] == "websocket.disconnect":
                    break
                ids = _ack_ids(message)
                if ids is None:
                    await self.ws.close(CLOSE_INVALID_PAYLOAD, 'expected {"ack": [entry ids]}')
                    break
                self.acks.extend(ids)
                self.acks_landed.clear()
                self.wake.set()
        except WebSocketDisconnect:
            pass
        finally:
            if receive is not None:
                receive.cancel()
            self.stop()
            r.group_members[self.group] -= 1
            members = r.group_sessions.by_group[self.group]
            members.discard(self)
            if not members:
                del r.group_sessions.by_group[self.group]
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({worker}, timeout=STOP_WAIT_S)
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            log.error("group member stopped", extra={"group": self.group, "error": repr(worker.exception())})
            with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                await self.ws.close(CLOSE_UNAVAILABLE, "group reader stopped; reconnect")

    async def _wait_or_end(self, event: asyncio.Event, worker: asyncio.Task[None]) -> None:
        waiter = asyncio.create_task(event.wait())
        try:
            await asyncio.wait({waiter, worker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    # ---- the worker: entries out, acknowledgements landed -------------------------------------

    async def work(self) -> None:
        """Read, send, land acknowledgements; survive Redis outages; return soon after ``stop``."""
        failures = 0
        while not self.stopping:
            try:
                await self._step()
                failures = 0
            except StreamUnavailable as exc:
                failures += 1
                self.relay.metrics.inc("task_restarts_total", task="group-reader")
                if failures == 1:
                    extra = {"group": self.group, "error": str(exc)[:200]}
                    log.warning("group member lost Redis; retrying", extra=extra)
                self._pending, self._after = True, "0"  # its un-acked entries again: nothing lost across the outage
                await self._pause(backoff_s(failures - 1, 0.1, 5.0, random.random()))
            except (WebSocketDisconnect, RuntimeError, OSError):
                break  # the member's WebSocket is gone
        await self._flush_acks()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)

    async def _step(self) -> None:
        r, groups = self.relay, self.relay.groups
        if self.acks:
            await self._land_acks()
            return
        now = time.monotonic()
        if now >= self._next_claim:
            # entries left un-acknowledged by a member of the same principal that went away
            self._next_claim = now + r.config.group_claim_idle_s / 2
            if await groups.claim_idle(self.group, self.consumer, int(r.config.group_claim_idle_s * 1000)):
                self._pending, self._after = True, "0"
        self.wake.clear()
        entries = await groups.read(self.group, self.consumer, self._pending, READ_COUNT, self._after)
        if self._pending:
            if not entries:
                self._pending = False
                return
            self._after = entries[-1][0]
        await self._send(entries)
        if not self._pending and now >= self._next_parked:
            # after the member's own pending entries, which would otherwise include these a second time
            self._next_parked = now + r.config.group_poll_interval_s * 4
            await self._take_parked()
        if not entries and not self.stopping and not self.acks:
            await self._pause(r.config.group_poll_interval_s)

    async def _send(self, entries: list[tuple[str, Any]]) -> None:
        """Send what the member may read; park the rest for a member that may."""
        r = self.relay
        gate = r.gate.read_gate(self.principal)
        withheld = []
        for entry_id, event in entries:
            topic = event.get("type") if isinstance(event, dict) else None
            if gate is not None and (not isinstance(topic, str) or not gate(topic)):
                withheld.append(entry_id)
                continue
            await self.ws.send_text(orjson.dumps({"ack": entry_id, "event": event}).decode())
        if withheld:
            await r.groups.park(self.group, withheld)
            r.metrics.inc("group_entries_withheld_total", len(withheld), group=self.group)

    async def _take_parked(self) -> None:
        """Entries parked by members that may not read them: take those this member may read, and send them."""
        r, groups = self.relay, self.relay.groups
        if not await groups.has_parked(self.group):
            return
        gate = r.gate.read_gate(self.principal)
        rows = await groups.parked(self.group, self._parked_after, READ_COUNT)
        self._parked_after = rows[-1][0] if len(rows) == READ_COUNT else "-"  # go round when at the end
        readable = {}
        for entry_id, event in rows:
            topic = event.get("type") if isinstance(event, dict) else None
            if isinstance(topic, str) and (gate is None or gate(topic)):
                readable[entry_id] = event
        if readable:
            taken = await groups.take(self.group, self.consumer, list(readable))
            for entry_id in taken:
                await self.ws.send_text(orjson.dumps({"ack": entry_id, "event": readable[entry_id]}).decode())

    async def _land_acks(self) -> None:
        ids, self.acks = self.acks, []
        try:
            acked = await self.relay.groups.ack_own(self.group, self.consumer, ids)
        except StreamUnavailable:
            self.acks[:0] = ids  # kept, in order, for the next attempt
            raise
        if acked < len(ids):
            self.relay.metrics.inc("group_acks_refused_total", len(ids) - acked, group=self.group)
        if not self.acks:
            self.acks_landed.set()

    async def _flush_acks(self) -> None:
        """The session ended: land what the member acknowledged, for a little while; the rest is redelivered."""
        deadline = time.monotonic() + ACK_FLUSH_S
        attempt = 0
        while self.acks and time.monotonic() < deadline:
            try:
                await self._land_acks()
            except StreamUnavailable:
                await asyncio.sleep(min(backoff_s(attempt, 0.1, 1.0, random.random()), deadline - time.monotonic()))
                attempt += 1
        if self.acks:
            log.warning(
                "acknowledgements not landed; those entries will be delivered again",
                extra={"group": self.group, "entries": len(self.acks)},
            )
        self.acks_landed.set()


def _ack_ids(message: Any) -> list[str] | None:
    """The ids of ``{"ack": id or [ids]}``, each a valid entry id; None for anything else."""
    try:
        ids = orjson.loads(message.get("text") or message.get("bytes") or b"").get("ack")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(ids, str):
        ids = [ids]
    if not isinstance(ids, list) or len(ids) > MAX_ACK_IDS or not all(is_entry_id(i) for i in ids):
        return None
    return ids
