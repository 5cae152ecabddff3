"""One producer on WS /v1/stream: frames in, each answered in order once its events are durable.

A connection's rate must not be one over the commit's round trip: the session
goes on reading frames while earlier frames' commits are in flight, up to
``WINDOW_FRAMES`` frames or ``WINDOW_BYTES`` bytes a connection (then it reads
the next frame only once the oldest is answered, and TCP holds the producer
back). Each frame's publish is started as soon as the frame is validated;
whatever frames (of this and every other connection) are waiting while a
commit is in flight go into the next one, as the ``Committer`` merges what
waits. A second task sends the answers, in the order the frames came, each
only once its frame's publish returned, that is once its events are durable.

Why the order of events still holds: a publish does all its work up to the
commit without yielding, and the session lets each frame's publish run that
far before it looks at the next frame, so frames reach the committer in order. Two cases would break that and wait for
the frames before them instead: a frame over ``PUBLISH_CHUNK`` events (made
durable in several commits; the frames after it wait for it too) and a frame
holding an event whose earlier attempt is still in flight on this connection
(it is answered as a duplicate once that landed, not refused as in doubt).

A frame that cannot be made durable (Valkey failing, a commit late, the relay
stopping) ends the session with close 1013 after the frames before it were
answered; the frames after it are not answered (some may have landed: the
producer sends them again and hears ``duplicates``). A frame that is not JSON
or too big, or a flow record queue that stays full, closes the connection
once the frames before it were answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from meshcore.auth import Principal
from router.committer import Unavailable
from router.dedup import dedup_key
from router.envelope import DECODE_STEP, Event, validate_event
from router.errors import EventTooLarge, MalformedEvent
from router.outbox import StoreFull
from router.publish import PUBLISH_CHUNK, InDoubt, PublishResult

if TYPE_CHECKING:
    from router.relay import Relay

log = logging.getLogger(__name__)

CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
CLOSE_UNAVAILABLE = 1013
WINDOW_FRAMES = 32
"""Frames of one connection read and not yet answered, at most."""
WINDOW_BYTES = 8 << 20
"""Bytes of those frames, at most (a single frame is always let in; frames are bounded on their own)."""
SINK_WAIT_S = 30.0
"""How long a frame waits for room in the flow record queue before the connection is closed."""

Refusal = Callable[[Any, Principal], None]


@dataclass
class _Frame:
    number: int
    size: int
    errors: list[dict[str, Any]]
    publish: asyncio.Task[PublishResult] | None


class StreamSession:
    def __init__(
        self,
        ws: WebSocket,
        relay: Relay,
        principal: Principal,
        event_error: Callable[[MalformedEvent | EventTooLarge], dict[str, Any]],
        record_rejection: Refusal,
    ):
        self.ws = ws
        self.relay = relay
        self.principal = principal
        self.event_error = event_error
        self.record_rejection = record_rejection
        self.frames = 0
        self.window: deque[_Frame] = deque()  # read, not yet answered
        self.window_bytes = 0
        self._answered = asyncio.Event()  # set whenever a frame left the window
        self._read = asyncio.Event()  # set whenever a frame entered it
        self._reading = True

    async def serve(self) -> None:
        await self.ws.accept()
        reader = asyncio.create_task(self._read_frames())
        answerer = asyncio.create_task(self._answer())
        try:
            await asyncio.wait({reader, answerer}, return_when=asyncio.FIRST_COMPLETED)
            if answerer.done():  # a frame was refused as a whole and the connection closed: stop reading
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                    await reader
                answerer.result()
                return
            close = reader.result()
            self._reading = False
            self._read.set()
            await asyncio.wait({answerer})
            if answerer.result() and close is not None:
                with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                    await self.ws.close(*close)
        finally:
            for task in (reader, answerer):
                task.cancel()
            # frames never answered stop counting for a stopping relay; their publishes finish on their own
            self.relay.requests_in_flight -= len(self.window)
            self.window.clear()

    async def _read_frames(self) -> tuple[int, str] | None:
        """Read, check and start publishing frames; the close to send once the frames read are answered."""
        relay = self.relay
        config = relay.config
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return None
            data = message.get("bytes") or (message.get("text") or "").encode()
            if len(data) > config.max_body_bytes:
                return CLOSE_TOO_BIG, f"frame over {config.max_body_bytes} bytes"
            try:
                decoded = orjson.loads(data)
            except orjson.JSONDecodeError:
                return CLOSE_INVALID_PAYLOAD, "frame is not JSON"
            if isinstance(decoded, dict):
                decoded = [decoded]
            if not isinstance(decoded, list):
                return CLOSE_INVALID_PAYLOAD, "frame must be an event object or an array of them"
            self.frames += 1
            events, errors = await self._check(decoded)
            try:
                if events:
                    relay.check_governance()
            except Unavailable as exc:
                return CLOSE_UNAVAILABLE, str(exc)[:120]
            if relay.sink.full and not await relay.sink.wait_not_full(SINK_WAIT_S):
                return CLOSE_UNAVAILABLE, "flow record queue full; try again later"
            size = len(data)
            while self.window and (len(self.window) >= WINDOW_FRAMES or self.window_bytes + size > WINDOW_BYTES):
                await self._wait_answered()
            if events and self.window and (len(events) > PUBLISH_CHUNK or self._in_doubt_here(events)):
                while self.window:  # see the module's doc: this frame waits for the frames before it
                    await self._wait_answered()
            publish = asyncio.create_task(relay.publisher.publish_all(events, self.principal)) if events else None
            if publish is not None:
                publish.add_done_callback(_retrieved)
            relay.requests_in_flight += 1  # a stopping relay waits for this frame's answer
            self.window.append(_Frame(self.frames, size, errors, publish))
            self.window_bytes += size
            self._read.set()
            if publish is not None:
                await asyncio.sleep(0)  # the publish runs up to its commit before the next frame is looked at
            if publish is not None and len(events) > PUBLISH_CHUNK:
                while self.window:  # and the frames after it wait for it
                    await self._wait_answered()

    async def _check(self, decoded: list[Any]) -> tuple[list[Event], list[dict[str, Any]]]:
        """The frame's events that may be published, and what each other one gets."""
        relay = self.relay
        valid: list[tuple[int, Event]] = []
        errors: list[dict[str, Any]] = []
        for i, obj in enumerate(decoded):
            if i and i % DECODE_STEP == 0:
                await asyncio.sleep(0)  # a large frame does not hold the loop for its whole validation
            try:
                valid.append((i, validate_event(obj, relay.limits)))
            except (MalformedEvent, EventTooLarge) as exc:
                err = self.event_error(exc)
                err["index"] = i
                if isinstance(obj, dict) and isinstance(obj.get("id"), str):
                    err["id"] = obj["id"][:256]
                errors.append(err)
                if isinstance(exc, MalformedEvent):
                    self.record_rejection(exc.event, self.principal)
        events = []
        for (i, ev), refusal in zip(valid, relay.gate.check([ev for _, ev in valid], self.principal), strict=True):
            if refusal is None:
                events.append(ev)
            else:
                errors.append({"status": refusal.status, "error": refusal.error, "index": i, "id": ev.id,
                               **refusal.details})  # fmt: skip
        errors.sort(key=lambda e: int(e["index"]))
        return events, errors

    def _in_doubt_here(self, events: list[Event]) -> bool:
        """Whether an earlier attempt of one of ``events`` is still being made durable."""
        dedup, who = self.relay.dedup, self.principal.name
        return any(dedup.state(dedup_key(who, ev.source, ev.id)) == "pending" for ev in events)

    async def _wait_answered(self) -> None:
        self._answered.clear()
        await self._answered.wait()

    async def _answer(self) -> bool:
        """Answer frames in order, each once durable; False when a frame failed and the connection was closed."""
        relay = self.relay
        while True:
            if not self.window:
                if not self._reading:
                    return True
                self._read.clear()
                await self._read.wait()
                continue
            frame = self.window[0]
            result: PublishResult | None = None
            if frame.publish is not None:
                await asyncio.wait({frame.publish})  # never cancels the publish (its commit goes on anyway)
                try:
                    result = frame.publish.result()
                except (Unavailable, InDoubt, StoreFull) as exc:
                    # this frame was not acknowledged: the producer sends it again after reconnecting
                    with contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                        await self.ws.close(CLOSE_UNAVAILABLE, str(exc)[:120])
                    return False
            answer = {
                "frame": frame.number,
                "accepted": result.accepted if result else [],
                "duplicates": result.duplicates if result else [],
                "errors": frame.errors,
            }
            try:
                await self.ws.send_bytes(orjson.dumps(answer))
            except (WebSocketDisconnect, RuntimeError, OSError):
                return False
            finally:
                self.window.popleft()
                self.window_bytes -= frame.size
                relay.requests_in_flight -= 1
                self._answered.set()


def _retrieved(task: asyncio.Task[PublishResult]) -> None:
    """Mark a publish's failure as seen: once a frame failed, the frames after it are not answered."""
    if not task.cancelled():
        task.exception()
