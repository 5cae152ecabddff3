"""An outbound mesh link: this relay dials one peer and sends it events.

The link keeps every event it was handed until the peer ACKs it: on a
reconnect the un-acked ones are sent again (``attempt`` + 1) before new ones,
and the peer's dedup window drops any it already delivered. The peer answers
HELLO with its own HELLO and INTEREST, and pushes a new INTEREST whenever its
subscriptions change. Reconnects back off exponentially with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from meshcore.backoff import backoff_s
from router import frame as fr
from router.envelope import Event, now_us
from router.errors import FrameError
from router.routing import CONNECTING, DOWN, LINK_TRANSITIONS, UP

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Outbound:
    """One event waiting for (or awaiting the ACK of) a link send."""

    event: Event
    span_id: str
    parent_span_id: str
    received_us: int
    attempt: int = 0
    seq: int = 0


class MeshLink:
    def __init__(
        self,
        url: str,
        hello: dict[str, Any],
        *,
        queue_max: int,
        batch: int,
        backoff_base_s: float,
        backoff_max_s: float,
        ping_interval_s: float,
        on_hello: Callable[[MeshLink, dict[str, Any]], None],
        on_interest: Callable[[MeshLink, list[str], int], None],
        on_sent: Callable[[MeshLink, list[Outbound], int], None],
        on_state: Callable[[MeshLink, str], None],
        delays_ms: dict[str, float] | None = None,
    ):
        self.url = url.rstrip("/") + "/v1/mesh"
        self.hello = hello
        self.queue_max = queue_max
        self.batch = batch
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.ping_interval_s = ping_interval_s
        self.on_hello, self.on_interest, self.on_sent, self.on_state = on_hello, on_interest, on_sent, on_state
        self.delays_ms = delays_ms or {}
        self.peer_region: str | None = None
        self.peer_hello: dict[str, Any] = {}
        self.state = DOWN
        self.queue: deque[Outbound] = deque()
        self.unacked: OrderedDict[int, Outbound] = OrderedDict()
        self.next_seq = 1
        self.rtt_ms: float | None = None
        self.reconnects = 0
        self.connects = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None

    @property
    def depth(self) -> int:
        return len(self.queue) + len(self.unacked)

    def enqueue(self, item: Outbound) -> bool:
        """Queue an event for the peer; False when the link's queue is full."""
        if self.depth >= self.queue_max:
            return False
        self.queue.append(item)
        self._wake.set()
        return True

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link {self.url}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def kill(self) -> None:
        """Drop the current connection (fault injection); the link reconnects by itself."""
        if self._ws is not None:
            self._ws.transport.abort()

    def _set_state(self, state: str) -> None:
        if state != self.state and state not in LINK_TRANSITIONS[self.state]:
            log.error("unexpected link state change", extra={"peer": self.url, "from": self.state, "to": state})
        if state != self.state:
            self.state = state
            self.on_state(self, state)

    async def _run(self) -> None:
        failures = 0
        while True:
            self._set_state(CONNECTING)
            try:
                async with websockets.connect(
                    self.url, open_timeout=5, ping_interval=None, max_size=None, compression=None
                ) as ws:
                    self._ws = ws
                    await self._handshake(ws)
                    failures = 0
                    await self._serve(ws)
            except asyncio.CancelledError:
                self._set_state(DOWN)
                raise
            except (OSError, websockets.WebSocketException, FrameError, TimeoutError) as exc:
                log.info("mesh link down", extra={"peer": self.url, "error": repr(exc)})
            finally:
                self._ws = None
            self._set_state(DOWN)
            failures += 1
            self.reconnects += 1
            await asyncio.sleep(backoff_s(failures - 1, self.backoff_base_s, self.backoff_max_s, random.random()))

    async def _handshake(self, ws: ClientConnection) -> None:
        await ws.send(fr.encode(fr.HELLO, **self.hello))
        got_hello = got_interest = False
        while not (got_hello and got_interest):
            msg = fr.decode(await asyncio.wait_for(ws.recv(), 5))
            if msg["t"] == fr.HELLO:
                self._take_hello(msg)
                got_hello = True
            elif msg["t"] == fr.INTEREST:
                self._take_interest(msg)
                got_interest = True
        # resend what the peer never acknowledged, ahead of new events
        for item in reversed(self.unacked.values()):
            self.queue.appendleft(item)
        self.unacked.clear()
        self.connects += 1
        self._set_state(UP)

    def _take_hello(self, msg: dict[str, Any]) -> None:
        region = msg.get("region")
        if not isinstance(region, str):
            raise FrameError("HELLO without a region")
        self.peer_region = region
        self.peer_hello = msg
        self.on_hello(self, msg)

    def _take_interest(self, msg: dict[str, Any]) -> None:
        patterns, gen = msg.get("patterns"), msg.get("gen")
        if not isinstance(patterns, list) or not isinstance(gen, int):
            raise FrameError("malformed INTEREST")
        self.on_interest(self, [p for p in patterns if isinstance(p, str)], gen)

    async def _serve(self, ws: ClientConnection) -> None:
        delay_s = self.delays_ms.get(self.peer_region or "", 0.0) / 1000
        wire: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def transmit(data: bytes) -> None:
            if delay_s:
                wire.put_nowait((time.monotonic() + delay_s, data))
            else:
                await ws.send(data)

        async def delayed_writer() -> None:
            while True:
                due, data = await wire.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await ws.send(data)

        tasks = [
            asyncio.create_task(self._send_loop(transmit)),
            asyncio.create_task(self._recv_loop(ws)),
            asyncio.create_task(self._ping_loop(transmit)),
        ]
        if delay_s:
            tasks.append(asyncio.create_task(delayed_writer()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_loop(self, transmit: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            items = [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]
            sent_us = now_us()
            batch = []
            for item in items:
                item.attempt += 1
                item.seq = self.next_seq
                self.next_seq += 1
                self.unacked[item.seq] = item
                ev = item.event
                batch.append(
                    fr.MeshEvent(item.seq, item.span_id, sent_us, ev.published_us, item.attempt, ev.size, ev.body)
                )
            self.on_sent(self, items, sent_us)
            await transmit(fr.encode_events(batch))

    async def _recv_loop(self, ws: ClientConnection) -> None:
        async for raw in ws:
            msg = fr.decode(raw)
            kind = msg["t"]
            if kind == fr.ACK:
                seq = msg.get("seq")
                if not isinstance(seq, int):
                    raise FrameError("malformed ACK")
                while self.unacked:
                    first = next(iter(self.unacked))
                    if first > seq:
                        break
                    del self.unacked[first]
            elif kind == fr.PONG:
                ts = msg.get("ts")
                if isinstance(ts, int):
                    self.rtt_ms = (now_us() - ts) / 1000
            elif kind == fr.INTEREST:
                self._take_interest(msg)
            elif kind == fr.HELLO:
                self._take_hello(msg)

    async def _ping_loop(self, transmit: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            await transmit(fr.encode(fr.PING, ts=now_us()))
            await asyncio.sleep(self.ping_interval_s)
