"""The relay's HTTP and WebSocket surface (Starlette); it only moves data to ``Relay``.

POST /v1/events              one CloudEvent or a JSON array (all or nothing)
WS   /v1/stream              high-rate publish: frames of one event or an array
WS   /v1/subscribe           ?topic=PATTERN (repeatable) [&group=NAME&consumer=ID]
DELETE /v1/groups/{name}     forget a durable consumer group
WS   /v1/mesh                peer relays
GET  /healthz, /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from meshcore.flowrecord import SCHEMA_REJECTED
from meshcore.topic import validate_pattern
from router import frame as fr
from router.envelope import decode_events, validate_event
from router.errors import Backpressure, EventTooLarge, FrameError, InvalidTopic, MalformedEvent, StreamUnavailable
from router.relay import Relay
from router.routing import UP

log = logging.getLogger(__name__)

CONTENT_TYPES = frozenset(("application/cloudevents+json", "application/cloudevents-batch+json", "application/json"))
# WebSocket close codes used on protocol abuse
CLOSE_UNSUPPORTED = 1003
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNAVAILABLE = 1013
MAX_SUBSCRIBE_BATCH = 1000


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def _event_error(exc: MalformedEvent | EventTooLarge) -> dict[str, Any]:
    if isinstance(exc, EventTooLarge):
        return {"status": 413, "error": str(exc), "index": exc.index}
    return {"status": 400, "error": str(exc), "attribute": exc.attribute, "index": exc.index}


def build_app(relay: Relay) -> Starlette:
    config = relay.config

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise EventTooLarge(int(declared), config.max_body_bytes)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise EventTooLarge(size, config.max_body_bytes)
            chunks.append(chunk)
        return b"".join(chunks)

    async def post_events(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in CONTENT_TYPES:
            relay.metrics.inc("rejected_total", status="415")
            return _error(415, f"content type must be one of {sorted(CONTENT_TYPES)} (structured mode)")
        try:
            events = decode_events(await read_body(request), config.max_event_bytes)
            relay.check_capacity()
        except EventTooLarge as exc:
            relay.metrics.inc("rejected_total", status="413")
            return _error(413, str(exc), index=exc.index, limit=exc.limit)
        except MalformedEvent as exc:
            relay.metrics.inc("rejected_total", status="400")
            _record_rejection(relay, exc.event)
            return _error(400, str(exc), attribute=exc.attribute, index=exc.index)
        except Backpressure as exc:
            relay.metrics.inc("rejected_total", status="429")
            return JSONResponse({"error": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after_s)})
        try:
            accepted, duplicates = await relay.publish(events)
        except StreamUnavailable as exc:
            return JSONResponse({"error": str(exc)}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"accepted": accepted, "duplicates": duplicates}, status_code=202)

    async def stream(ws: WebSocket) -> None:
        """High-rate publishing: each frame is one event or an array; each frame gets an ack."""
        await ws.accept()
        frames = 0
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes") or (message.get("text") or "").encode()
                if len(data) > config.max_body_bytes:
                    await ws.close(CLOSE_TOO_BIG, f"frame over {config.max_body_bytes} bytes")
                    return
                try:
                    decoded = orjson.loads(data)
                except orjson.JSONDecodeError:
                    await ws.close(CLOSE_INVALID_PAYLOAD, "frame is not JSON")
                    return
                if isinstance(decoded, dict):
                    decoded = [decoded]
                if not isinstance(decoded, list):
                    await ws.close(CLOSE_INVALID_PAYLOAD, "frame must be an event object or an array of them")
                    return
                frames += 1
                events, errors = [], []
                for i, obj in enumerate(decoded):
                    try:
                        events.append(validate_event(obj, config.max_event_bytes))
                    except (MalformedEvent, EventTooLarge) as exc:
                        err = _event_error(exc)
                        err["index"] = i
                        if isinstance(obj, dict):
                            err["id"] = obj.get("id")
                        errors.append(err)
                        if isinstance(exc, MalformedEvent):
                            _record_rejection(relay, exc.event)
                if relay.sink.full and not await relay.sink.wait_not_full(30.0):
                    await ws.close(CLOSE_UNAVAILABLE, "flow record queue full; try again later")
                    return
                accepted, duplicates = await relay.publish(events) if events else ([], [])
                await ws.send_bytes(
                    orjson.dumps({"frame": frames, "accepted": accepted, "duplicates": duplicates, "errors": errors})
                )
        except WebSocketDisconnect:
            return
        except StreamUnavailable as exc:
            await ws.close(CLOSE_UNAVAILABLE, str(exc)[:120])

    async def subscribe(ws: WebSocket) -> None:
        patterns = ws.query_params.getlist("topic")
        group = ws.query_params.get("group")
        batch_text = ws.query_params.get("batch", "1")
        await ws.accept()
        try:
            if not patterns:
                raise InvalidTopic("at least one topic=PATTERN is required")
            for p in patterns:
                validate_pattern(p)
            if not batch_text.isdigit() or not 1 <= int(batch_text) <= MAX_SUBSCRIBE_BATCH:
                raise InvalidTopic(f"batch must be a whole number from 1 to {MAX_SUBSCRIBE_BATCH}")
        except InvalidTopic as exc:
            await ws.close(CLOSE_POLICY, str(exc)[:120])
            return
        if group:
            await _serve_group(ws, group, patterns, ws.query_params.get("consumer") or uuid.uuid4().hex[:12])
            return
        sub = relay.subscribe(patterns)
        sender = asyncio.create_task(_pump(ws, sub.queue, int(batch_text)))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            sender.cancel()
            relay.unsubscribe(sub)

    async def _pump(ws: WebSocket, queue: asyncio.Queue[bytes], batch: int) -> None:
        """Send buffered events: one per message, or with ``batch`` > 1 a JSON array of what is waiting."""
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                first = await queue.get()
                if batch == 1:
                    await ws.send_text(first.decode())
                    continue
                items = [first]
                while len(items) < batch and not queue.empty():
                    items.append(queue.get_nowait())
                await ws.send_text((b"[" + b",".join(items) + b"]").decode())

    async def _serve_group(ws: WebSocket, group: str, patterns: list[str], consumer: str) -> None:
        try:
            await relay.ensure_group(group, patterns)
        except StreamUnavailable as exc:
            await ws.close(CLOSE_UNAVAILABLE, str(exc)[:120])
            return

        async def reader() -> None:
            pending = True
            while True:
                entries = await relay.groups.read(group, consumer, pending, 100, 500)
                if pending and not entries:
                    pending = False
                    continue
                for entry_id, event in entries:
                    await ws.send_text(orjson.dumps({"ack": entry_id, "event": event}).decode())
                if pending:
                    # pending entries were sent; move on to new ones (they stay pending until acked)
                    pending = False

        task = asyncio.create_task(reader())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    ids = orjson.loads(message.get("text") or message.get("bytes") or b"").get("ack")
                except (orjson.JSONDecodeError, AttributeError):
                    ids = None
                if isinstance(ids, str):
                    ids = [ids]
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    await ws.close(CLOSE_INVALID_PAYLOAD, 'expected {"ack": [entry ids]}')
                    break
                await relay.groups.ack(group, ids)
        except (WebSocketDisconnect, StreamUnavailable):
            pass
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def delete_group(request: Request) -> Response:
        name = request.path_params["name"]
        if not await relay.remove_group(name):
            return _error(404, f"no consumer group {name!r} in {relay.region}")
        return Response(status_code=204)

    async def mesh(ws: WebSocket) -> None:
        """A peer dialed us: it sends HELLO, EVENTS and PING; we answer and push INTEREST."""
        await ws.accept()
        peer: str | None = None
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue[bytes] = asyncio.Queue()
        send = outbox.put_nowait

        async def writer() -> None:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                while True:
                    await ws.send_bytes(await outbox.get())

        task = asyncio.create_task(writer())
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                msg = fr.decode(message.get("bytes") or message.get("text") or b"")
                kind = msg["t"]
                if kind == fr.HELLO:
                    peer = msg.get("region")
                    if not isinstance(peer, str):
                        raise FrameError("HELLO without a region")
                    send(fr.encode(fr.HELLO, **relay.hello))
                    send(relay.interest_frame())
                    relay.inbound.add(send)
                elif peer is None:
                    raise FrameError(f"{kind} before HELLO")
                elif kind == fr.EVENTS:
                    batch = fr.events_of(msg)
                    await relay.receive_mesh(peer, batch)
                    if batch:
                        send(fr.encode(fr.ACK, seq=batch[-1].seq))
                elif kind == fr.PING:
                    pong = fr.encode(fr.PONG, ts=msg.get("ts"))
                    delay_s = config.link_delays_ms.get(peer, 0.0) / 1000
                    if delay_s:
                        loop.call_later(delay_s, send, pong)
                    else:
                        send(pong)
        except FrameError as exc:
            log.warning("peer broke the mesh protocol", extra={"peer": peer, "error": str(exc)})
            if ws.application_state != WebSocketState.DISCONNECTED:
                await ws.close(CLOSE_INVALID_PAYLOAD, str(exc)[:120])
        except (WebSocketDisconnect, StreamUnavailable):
            pass
        finally:
            relay.inbound.discard(send)
            task.cancel()

    async def healthz(request: Request) -> Response:
        links = {link.peer_region or link.url: link.state for link in relay.links}
        return JSONResponse(
            {
                "status": "ok",
                "region": relay.region,
                "relay": relay.name,
                "links": links,
                "links_up": sum(1 for s in links.values() if s == UP),
            }
        )

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(relay.metrics.render(), media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    return Starlette(
        routes=[
            Route("/v1/events", post_events, methods=["POST"]),
            WebSocketRoute("/v1/stream", stream),
            WebSocketRoute("/v1/subscribe", subscribe),
            Route("/v1/groups/{name}", delete_group, methods=["DELETE"]),
            WebSocketRoute("/v1/mesh", mesh),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
    )


def _record_rejection(relay: Relay, obj: object) -> None:
    """Leave a schema_rejected drop record for a refused event that has an id (nothing of it is routed)."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        topic = obj.get("type") if isinstance(obj.get("type"), str) else ""
        relay.record_rejected(obj["id"], str(topic)[:255], SCHEMA_REJECTED, len(orjson.dumps(obj)))
