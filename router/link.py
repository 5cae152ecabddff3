"""An outbound mesh link: this relay dials one peer and sends it events.

The link only carries frames; what must be resent lives in the relay's
per-destination channels (``router.channel``), which rewind when a link goes
down. The dialing side authenticates with its region certificate (mutual TLS)
or, without one, with its mesh token, and checks that the peer it reached is
the region it expected: the HELLO names it, and under TLS with a CA the
peer's certificate must name the same region.

Liveness: a PING every ``ping_interval_s``; a link that receives nothing for
``3 x ping_interval_s`` is declared down at once (the transport is aborted, so
a black-holed TCP connection cannot hold it up), its RTT stops being reported,
and it is redialled with exponential backoff and jitter.

Clocks: the peer's HELLO carries its clock and the skew it accepts, so the
offset between the two clocks is known before the link is up; every PONG
carries the peer's clock again and refines it (the midpoint of the round
trip, as NTP does). While the offset is beyond what the peer accepts
(``clock_refusal``), the peer would refuse whatever this relay sends it: the
owner holds events instead of sending them, and refuses publishes for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from meshcore.backoff import backoff_s
from meshcore.tls import identity_of
from meshcore.viewstate import clock_refusal
from router import frame as fr
from router.envelope import now_us
from router.errors import FrameError
from router.routing import CONNECTING, DOWN, LINK_TRANSITIONS, MTLS, PLAIN, TLS, UP

log = logging.getLogger(__name__)


class PeerRefused(Exception):
    """The peer is not who we expected, or refused us; the link backs off and tries again."""


@dataclass(frozen=True)
class PeerAddress:
    """A peer to dial: its URL and, when configured, the region it must be."""

    url: str
    region: str | None = None

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        """``region=wss://host:port`` or a bare ``wss://host:port``."""
        region, sep, url = text.partition("=")
        if not sep:
            return cls(text.strip())
        return cls(url.strip(), region.strip())


@dataclass
class LinkCallbacks:
    on_up: Callable[[MeshLink], None]
    on_down: Callable[[MeshLink], None]
    on_acks: Callable[[MeshLink, list[tuple[str, str, int, int]]], None]
    on_lsas: Callable[[MeshLink, list[fr.LinkStateAd]], None]
    on_state: Callable[[MeshLink, str], None]
    on_governance: Callable[[MeshLink, dict[str, Any]], None]
    """A HELLO after the handshake, a GOV or a GOVRES (``router.authority``)."""
    on_behind: Callable[[MeshLink, list[tuple[str, str, int]]], None]
    on_clock: Callable[[MeshLink, str], None] = lambda link, reason: None
    """The link's clock refusal changed (``MeshLink.clock_refusal``; '' once the peer accepts our clock)."""


class MeshLink:
    def __init__(
        self,
        peer: PeerAddress,
        hello: dict[str, Any],
        callbacks: LinkCallbacks,
        *,
        ssl_context: ssl.SSLContext | None,
        client_cert: bool,
        token: str | None,
        frame_max_bytes: int,
        batch: int,
        queue_max: int,
        backoff_base_s: float,
        backoff_max_s: float,
        ping_interval_s: float,
        delay_ms: float = 0.0,
    ):
        base = peer.url.rstrip("/")
        self.url = base + "/v1/mesh"
        self.expected_region = peer.region
        self.hello = hello
        self.cb = callbacks
        self.ssl_context = ssl_context if base.startswith("wss://") else None
        self.client_cert = client_cert and self.ssl_context is not None
        self.token = None if self.client_cert else token
        self._cert_region: str | None = None
        self.frame_max_bytes = frame_max_bytes
        self.batch = batch
        self.queue_max = queue_max
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.ping_interval_s = ping_interval_s
        self.delay_ms = delay_ms
        self.peer_region: str | None = peer.region
        self.peer_hello: dict[str, Any] = {}
        self.peer_gov = ""
        self.peer_replicates = False  # the peer takes GOV frames (its HELLO says which governance home it follows)
        self.clock_offset_ms: float | None = None
        """The peer's clock minus ours, as last measured (None until its first HELLO)."""
        self.peer_skew_s = 0.0
        """The clock difference the peer accepts (0: it did not say)."""
        self.peer_clock_ok = True
        """False when the peer says its own clock is off from most of its peers'."""
        self.clock_refusal = ""
        """Why the peer refuses what we send for our clocks ('' when it accepts)."""
        self.state = DOWN
        self.security = PLAIN
        self.rtt_ms: float | None = None
        self.reconnects = 0
        self.connects = 0
        self.last_error = ""
        self.queue: deque[bytes] = deque()  # encoded items waiting for a frame
        self.controls: deque[bytes] = deque()  # whole control frames (a new HELLO), sent before items
        self._wake = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._last_heard = 0.0
        self._silent_until = 0.0  # fault injection: no byte moves either way until then

    @property
    def name(self) -> str:
        return self.peer_region or self.url

    @property
    def room(self) -> int:
        """How many more items the link takes now (0 unless it is up)."""
        return self.queue_max - len(self.queue) if self.state == UP else 0

    def send(self, encoded_items: list[bytes]) -> None:
        self.queue.extend(encoded_items)
        self._wake.set()

    def control(self, frame: bytes) -> None:
        """Send a control frame (a HELLO with a new governance version) on the current connection."""
        if self.state == UP:
            self.controls.append(frame)
            self._wake.set()

    def kill(self) -> None:
        """Drop the current connection (fault injection); the link reconnects by itself."""
        if self._ws is not None:
            self._ws.transport.abort()

    def black_hole(self, seconds: float) -> None:
        """Fault injection: for ``seconds`` nothing is sent or read on this link, and dials time out,
        as when a network silently drops every packet; the watchdog must notice."""
        self._silent_until = time.monotonic() + seconds

    @property
    def silenced(self) -> bool:
        return time.monotonic() < self._silent_until

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state not in LINK_TRANSITIONS[self.state]:
            log.error("unexpected link state change", extra={"peer": self.name, "from": self.state, "to": state})
        self.state = state
        if state != UP:
            self.rtt_ms = None
        self.cb.on_state(self, state)

    async def run(self) -> None:
        """Dial, serve, back off, forever; the owner supervises this task."""
        failures = 0
        while True:
            self._set_state(CONNECTING)
            try:
                await self._connect_and_serve()
                failures = 0
            except asyncio.CancelledError:
                self._went_down()
                raise
            except (OSError, websockets.WebSocketException, FrameError, TimeoutError, PeerRefused) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                level = logging.WARNING if isinstance(exc, PeerRefused | FrameError) else logging.INFO
                log.log(level, "mesh link down", extra={"peer": self.name, "error": self.last_error})
            self._went_down()
            failures += 1
            self.reconnects += 1
            await asyncio.sleep(backoff_s(failures - 1, self.backoff_base_s, self.backoff_max_s, random.random()))

    def _went_down(self) -> None:
        was_up = self.state == UP
        self._ws = None
        self.queue.clear()
        self.controls.clear()
        self._set_state(DOWN)
        if was_up:
            self.cb.on_down(self)

    async def _connect_and_serve(self) -> None:
        if self.silenced:  # a dial into a black hole times out
            await asyncio.sleep(min(5.0, self._silent_until - time.monotonic()))
            raise TimeoutError("the dial timed out (black-holed)")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        async with websockets.connect(
            self.url,
            ssl=self.ssl_context,
            additional_headers=headers,
            open_timeout=5,
            ping_interval=None,
            max_size=self.frame_max_bytes,
            compression=None,
        ) as ws:
            self._ws = ws
            self.security = self._security_of(ws)
            await self._handshake(ws)
            await self._serve(ws)

    def _security_of(self, ws: ClientConnection) -> str:
        ssl_object = ws.transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return PLAIN
        der = ssl_object.getpeercert(binary_form=True)
        ident = identity_of(der) if der else None
        if self.client_cert and (ident is None or ident.kind != "region"):
            raise PeerRefused("the peer's certificate names no region (meshscope://region/...)")
        if ident is not None and ident.kind == "region":
            if self.expected_region is not None and ident.name != self.expected_region:
                raise PeerRefused(f"the peer's certificate names {ident.name}, expected {self.expected_region}")
            self._cert_region = ident.name
        else:
            self._cert_region = None
        # mutual when we presented our certificate too (the server asked for it and verified it)
        return MTLS if self.client_cert and ident is not None else TLS

    def _clock(self, offset_ms: float | None, hello: dict[str, Any] | None = None) -> None:
        """A new measure of the peer's clock (and what it accepts): judge it, and say so when it changes."""
        if hello is not None:
            self.peer_skew_s = float(hello["skew_s"])
            self.peer_clock_ok = bool(hello["clock_ok"])
        first = self.clock_offset_ms is None and offset_ms is not None
        if offset_ms is not None:
            self.clock_offset_ms = offset_ms
        reason = clock_refusal(self.clock_offset_ms, self.peer_skew_s, self.name)
        if reason != self.clock_refusal or first:  # a first measure counts in the relay's own verdict
            self.clock_refusal = reason
            self.cb.on_clock(self, reason)

    async def _handshake(self, ws: ClientConnection) -> None:
        await ws.send(fr.encode(fr.HELLO, **{**self.hello, "ts": now_us()}))
        got_hello = got_interest = False
        deadline = time.monotonic() + 5
        while not (got_hello and got_interest):
            msg = fr.decode(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            if msg["t"] == fr.HELLO:
                hello = fr.hello_of(msg)
                region = hello["region"]
                if self.expected_region is not None and region != self.expected_region:
                    raise PeerRefused(f"peer says it is {region}, expected {self.expected_region}")
                if self._cert_region is not None and self._cert_region != region:
                    raise PeerRefused(f"peer says it is {region} but its certificate names {self._cert_region}")
                if region == self.hello["region"]:
                    raise PeerRefused("the peer has our own region id")
                self.peer_region = region
                self.peer_hello = hello
                self.peer_gov = hello["gov"]
                self.peer_replicates = hello["replicates"]
                self._clock(None if hello["ts"] is None else (hello["ts"] - now_us()) / 1000, hello)
                got_hello = True
            elif msg["t"] in (fr.INTEREST, fr.ROUTES) and got_hello:
                self.cb.on_lsas(self, fr.lsas_of(msg))
                got_interest = got_interest or msg["t"] == fr.INTEREST
            else:
                raise FrameError(f"unexpected {msg['t']} during the handshake")
        self.connects += 1
        self._last_heard = time.monotonic()
        self._set_state(UP)
        self.cb.on_up(self)

    async def _serve(self, ws: ClientConnection) -> None:
        delay_s = self.delay_ms / 1000
        wire: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def transmit(data: bytes) -> None:
            if self.silenced:
                return  # swallowed by the black hole
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
            asyncio.create_task(self._watchdog(ws)),
        ]
        if delay_s:
            tasks.append(asyncio.create_task(delayed_writer()))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise ConnectionError("mesh link closed")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _send_loop(self, transmit: Callable[[bytes], Any]) -> None:
        budget = self.frame_max_bytes - 64
        while True:
            while self.controls:
                await transmit(self.controls.popleft())
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            items: list[bytes] = []
            size = 0
            while self.queue and len(items) < self.batch and (not items or size + len(self.queue[0]) + 1 <= budget):
                item = self.queue.popleft()
                items.append(item)
                size += len(item) + 1
            await transmit(fr.encode_events(items))

    async def _recv_loop(self, ws: ClientConnection) -> None:
        async for raw in ws:
            if self.silenced:
                continue  # never arrived
            self._last_heard = time.monotonic()
            msg = fr.decode(raw)
            kind = msg["t"]
            if kind == fr.ACK:
                self.cb.on_acks(self, fr.acks_of(msg))
                if "r" in msg:
                    self.cb.on_behind(self, fr.behind_of(msg))
            elif kind == fr.PONG:
                sent, peer_now = fr.pong_of(msg)
                back = now_us()
                self.rtt_ms = max(0.0, (back - sent) / 1000)
                if peer_now is not None:  # the peer read its clock half a round trip after we sent
                    self._clock((peer_now - (sent + back) / 2) / 1000)
            elif kind in (fr.INTEREST, fr.ROUTES):
                self.cb.on_lsas(self, fr.lsas_of(msg))
            elif kind == fr.HELLO:
                hello = fr.hello_of(msg)
                self.peer_hello = hello
                self.peer_gov = hello["gov"]
                self.peer_replicates = hello["replicates"]
                self._clock(None, hello)
                self.cb.on_governance(self, msg)
            elif kind in (fr.GOV, fr.GOVRES):
                self.cb.on_governance(self, msg)
            else:
                raise FrameError(f"a dialing relay does not take {kind}")

    async def _ping_loop(self, transmit: Callable[[bytes], Any]) -> None:
        while True:
            await transmit(fr.encode(fr.PING, ts=now_us()))
            await asyncio.sleep(self.ping_interval_s)

    async def _watchdog(self, ws: ClientConnection) -> None:
        """Declare the link down when nothing arrived for three ping intervals."""
        deadline_s = 3 * self.ping_interval_s
        while True:
            await asyncio.sleep(self.ping_interval_s / 2)
            silent = time.monotonic() - self._last_heard
            if silent > deadline_s:
                log.warning("mesh link silent; declaring it down", extra={"peer": self.name, "silent_s": silent})
                with contextlib.suppress(Exception):
                    ws.transport.abort()
                raise TimeoutError(f"no frame from the peer for {silent:.1f} s")
