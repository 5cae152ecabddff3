"""The accepting side of a mesh link: a peer relay dialed us and sends HELLO, EVENTS and PING.

The peer is authenticated before the WebSocket is accepted (a region
certificate under mutual TLS, or a relay principal's token bound to a
region). Its HELLO must name that same region: a HELLO that claims another
region is refused and logged. The region of everything that arrives is the
authenticated one, never a field of a frame. A peer that sends nothing for
three ping intervals is disconnected. A dialing peer also sends governance
documents (GOV) and changes for the authority (GOVPROP, answered with GOVRES;
``router.authority``).

Liveness never waits behind bulk work: frames are read as they arrive, a PING
is answered at once, and EVENTS frames are applied in order by a task of their
own (each waits for its commit). Otherwise a PING behind a few EVENTS frames
waiting on Valkey went unanswered, the frames behind it went unread, and both
sides declared the link dead. At most ``MAX_QUEUED_FRAMES`` EVENTS frames
wait; a peer sends no more than its window anyway, and one that does is read
no further until they are applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from router import frame as fr
from router.committer import Unavailable
from router.envelope import now_us
from router.errors import FrameError
from router.meshstate import Inbound
from router.relay import Relay

log = logging.getLogger(__name__)

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_UNAVAILABLE = 1013
MAX_QUEUED_FRAMES = 64
"""EVENTS frames read and waiting to be applied, at most."""


async def serve_peer(ws: WebSocket, relay: Relay, region: str, security: str, principal: str) -> None:
    """Run one inbound mesh connection from the authenticated ``region`` until it closes."""
    config = relay.config
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    delay_s = config.link_delays_ms.get(region, 0.0) / 1000
    last_heard = time.monotonic()

    def send(data: bytes) -> None:
        if relay.isolated:
            return  # fault injection: nothing leaves an isolated region
        if delay_s:
            loop.call_later(delay_s, outbox.put_nowait, data)
        else:
            outbox.put_nowait(data)

    async def writer() -> None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                await ws.send_bytes(await outbox.get())

    async def watchdog() -> None:
        while True:
            await asyncio.sleep(config.ping_interval_s / 2)
            if time.monotonic() - last_heard > 3 * config.ping_interval_s:
                log.warning("inbound mesh link silent; closing it", extra={"peer": region})
                return

    frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    applied = asyncio.Event()

    async def apply() -> None:
        """EVENTS frames in the order they came, each applied and committed before the next."""
        nonlocal last_heard
        while True:
            msg = await frames.get()
            await relay.receiver.receive(region, msg, send)
            last_heard = time.monotonic()  # work done for the peer counts as hearing from it
            applied.set()

    conn = Inbound(region, send, security, principal)
    key: int | None = None
    tasks = [asyncio.create_task(writer()), asyncio.create_task(watchdog()), asyncio.create_task(apply())]
    receiver = asyncio.create_task(ws.receive())
    try:
        while True:
            done, _ = await asyncio.wait({receiver, tasks[1], tasks[2]}, return_when=asyncio.FIRST_COMPLETED)
            if tasks[2] in done:
                tasks[2].result()  # FrameError or Unavailable: handled below
            if tasks[1] in done:
                await _close(ws, CLOSE_POLICY, "no frames within three ping intervals")
                return
            if receiver not in done:
                continue
            message = receiver.result()
            if message["type"] == "websocket.disconnect":
                return
            while frames.qsize() >= MAX_QUEUED_FRAMES and not tasks[2].done():
                applied.clear()  # a peer past its window: read no further until its frames are applied
                waiter = asyncio.create_task(applied.wait())
                await asyncio.wait({waiter, tasks[2]}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            receiver = asyncio.create_task(ws.receive())
            if relay.isolated:
                continue  # fault injection: nothing reaches an isolated region
            last_heard = time.monotonic()
            msg = fr.decode(message.get("bytes") or message.get("text") or b"")
            kind = msg["t"]
            if kind == fr.HELLO:
                hello = fr.hello_of(msg)
                if hello["region"] != region:
                    log.warning(
                        "peer's HELLO claims another region; refused",
                        extra={"peer": region, "claimed": hello["region"], "principal": principal},
                    )
                    await _close(ws, CLOSE_POLICY, f"you are {region}, not {hello['region']}")
                    return
                conn.gov = hello["gov"]
                conn.replicates = hello["replicates"]
                if key is None:
                    await relay.siblings.peer_joined(region)
                    key = relay.mesh.register_inbound(conn)
                else:
                    relay.authority.peer_version(conn.gov, conn.replicates, send)
            elif key is None:
                raise FrameError(f"{kind} before HELLO")
            elif kind == fr.EVENTS:
                frames.put_nowait(msg)
            elif kind == fr.PING:
                send(fr.encode(fr.PONG, ts=fr.ts_of(msg), now=now_us()))
            elif kind == fr.GOV:
                relay.authority.on_document(region, msg, send)
            elif kind == fr.GOVPROP:
                await relay.authority.on_proposal(region, msg, send)
            else:
                raise FrameError(f"an accepting relay does not take {kind}")
    except FrameError as exc:
        log.warning("peer broke the mesh protocol", extra={"peer": region, "error": str(exc)[:300]})
        await _close(ws, CLOSE_INVALID_PAYLOAD, str(exc)[:120])
    except Unavailable as exc:
        await _close(ws, CLOSE_UNAVAILABLE, str(exc)[:120])
    except WebSocketDisconnect:
        pass
    finally:
        if key is not None:
            relay.mesh.unregister_inbound(key)
        receiver.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(receiver, *tasks, return_exceptions=True)


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close(code, reason)
