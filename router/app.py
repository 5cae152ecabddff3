"""The relay's HTTP and WebSocket surface (Starlette); it only moves data to ``Relay``.

POST   /v1/events            one CloudEvent or a JSON array (all or nothing); binary mode too
WS     /v1/stream            high-rate publish: frames of one event or an array
WS     /v1/subscribe         ?topic=PATTERN (repeatable) [&batch=N] [&group=NAME&consumer=ID[&update=true][&probe=true]]
DELETE /v1/groups/{name}     forget a durable consumer group (its owner or an admin)
GET    /v1/governance        the governance document this relay enforces, and its history
PUT    /v1/governance        replace policies and schemas (admin; ``meshscope governance apply DIR``)
GET    /v1/policies          the policy rules; PUT replaces them (admin)
GET    /v1/schemas           the schema subjects; GET /v1/schemas/{subject} one subject's versions
POST   /v1/schemas/{subject} register the next version of a subject (admin; 409 when incompatible)
WS     /v1/mesh              peer relays (region certificate, or a relay token)
GET    /healthz              public: ok or degraded, with why
GET    /metrics              Prometheus text (any principal)

Every caller is a principal: a client certificate, or a bearer token
(``Authorization: Bearer …``, or ``?token=`` where a browser cannot set
headers on a WebSocket). Without one: 401, as a plain HTTP answer even on
WebSocket routes (the WebSocket denial response), so clients see the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from meshcore import flowrecord as fk
from meshcore.auth import ANONYMOUS, Principal, bearer_of
from meshcore.body import BodyTimeout, BodyTooLarge, read_limited
from meshcore.metrics import content_type_for
from meshcore.names import InvalidName, group_name
from meshcore.reqlog import RequestLog
from meshcore.settings import whole_number
from meshcore.tls import peer_identity
from meshcore.topic import InvalidTopic, validate_pattern
from router.admin import admin_routes
from router.committer import Unavailable
from router.envelope import Event
from router.errors import (
    Backpressure,
    EventTooLarge,
    MalformedEvent,
    StreamUnavailable,
    UnsupportedMediaType,
)
from router.faults import fault_routes
from router.groupsession import GroupSession
from router.hop import Subject
from router.httpbinding import combine_headers, decode_http_steps
from router.inbound import serve_peer
from router.outbox import StoreFull
from router.publish import InDoubt
from router.relay import Relay
from router.routing import MTLS, PLAIN, TLS
from router.streamsession import StreamSession
from router.subscription import GroupConflict, GroupStore

log = logging.getLogger(__name__)

# WebSocket close codes used on protocol abuse
CLOSE_POLICY = 1008
MAX_SUBSCRIBE_BATCH = 1000
MAX_PATTERNS = 100


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def _event_error(exc: MalformedEvent | EventTooLarge) -> dict[str, Any]:
    if isinstance(exc, EventTooLarge):
        return {"status": 413, "error": str(exc), "index": exc.index}
    return {"status": 400, "error": str(exc), "attribute": exc.attribute, "index": exc.index}


def build_app(relay: Relay) -> Starlette:
    config = relay.config
    auth = relay.auth
    relay_allowlist = any(name.startswith("relay:") for name in auth.by_name)

    def principal_of(conn: HTTPConnection, allow_query_token: bool = False) -> Principal | None:
        ident = peer_identity(conn.scope)
        if ident is not None:
            return auth.from_certificate(ident.kind, ident.name)
        token = bearer_of(conn.headers.get("authorization"))
        if token is None and allow_query_token:
            token = conn.query_params.get("token")
        principal = auth.from_token(token)
        if principal is None and token is None and auth.allow_anonymous:
            return ANONYMOUS
        return principal

    def unauthorized() -> JSONResponse:
        return _error(
            401,
            "authentication required: a client certificate or Authorization: Bearer <token>",
            headers={"WWW-Authenticate": 'Bearer realm="meshscope"'},
        )

    async def read_body(request: Request) -> bytes:
        try:
            return await read_limited(request, config.max_body_bytes, config.body_timeout_s)
        except BodyTooLarge as exc:
            raise EventTooLarge(exc.size, exc.limit) from None

    def unavailable(message: str, retry_after_s: float) -> JSONResponse:
        relay.metrics.inc("rejected_total", status="503")
        return _error(503, message, headers={"Retry-After": str(max(1, round(retry_after_s)))})

    async def post_events(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None:
            relay.metrics.inc("rejected_total", status="401")
            return unauthorized()
        try:
            body = await read_body(request)
            steps = decode_http_steps(combine_headers(request.headers.raw), body, relay.limits)
            events = await _stepwise(steps)
            # policy and schema first: they need no Redis, so a relay cut off from it still refuses what it refused
            refusals = relay.gate.check(events, principal)
            for index, refusal in enumerate(refusals):
                if refusal is not None:  # a batch is all or nothing
                    relay.metrics.inc("rejected_total", status=str(refusal.status))
                    where: dict[str, Any] = {"index": index} if len(events) > 1 else {}
                    return _error(refusal.status, refusal.error, **refusal.details, **where)
            relay.check_capacity()
            result = await relay.publisher.publish_all(events, principal)
        except UnsupportedMediaType as exc:
            relay.metrics.inc("rejected_total", status="415")
            return _error(415, str(exc))
        except EventTooLarge as exc:
            relay.metrics.inc("rejected_total", status="413")
            return _error(413, str(exc), index=exc.index, limit=exc.limit)
        except MalformedEvent as exc:
            relay.metrics.inc("rejected_total", status="400")
            _record_rejection(relay, exc.event, principal)
            return _error(400, str(exc), attribute=exc.attribute, index=exc.index)
        except BodyTimeout as exc:
            relay.metrics.inc("rejected_total", status="408")
            return _error(408, str(exc))
        except Backpressure as exc:
            relay.metrics.inc("rejected_total", status="429")
            return _error(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})
        except Unavailable as exc:
            return unavailable(str(exc), exc.retry_after_s)
        except (InDoubt, StoreFull) as exc:
            return unavailable(str(exc), 1.0)
        return JSONResponse({"accepted": result.accepted, "duplicates": result.duplicates}, status_code=202)

    def drained(handler: Any) -> Any:
        """``handler``, counted while it runs so that a stopping relay waits for it (``Relay.drain``).

        Should the server still cancel it on its way out, the answer is 503, never 500: the
        publisher retries, and a retry of what did land is recognized as a duplicate.
        """

        async def counted(request: Request) -> Response:
            relay.requests_in_flight += 1
            try:
                response: Response = await handler(request)
                return response
            except asyncio.CancelledError:
                if not relay.draining:
                    raise
                return unavailable("the relay stopped before it could answer; publish again", 1.0)
            finally:
                relay.requests_in_flight -= 1

        return counted

    async def deny(ws: WebSocket, response: JSONResponse) -> None:
        """Refuse a WebSocket before it is accepted, with a real HTTP status the client can read."""
        try:
            await ws.send_denial_response(response)
        except RuntimeError:
            await ws.close(CLOSE_POLICY)

    async def within_quota(ws: WebSocket, serve: Callable[[WebSocket, Principal], Awaitable[None]]) -> None:
        """Authenticate a WebSocket session and count it against its principal's open sessions (429 past them)."""
        principal = principal_of(ws, allow_query_token=True)
        if principal is None:
            await deny(ws, unauthorized())
            return
        if not relay.sessions.acquire(principal.name):
            relay.metrics.inc("sessions_refused_total")
            limit = relay.sessions.max_per_principal
            message = f"principal {principal.name!r} has {limit} sessions open here, the most allowed; close one"
            await deny(ws, _error(429, message, headers={"Retry-After": "5"}))
            return
        try:
            await serve(ws, principal)
        finally:
            relay.sessions.release(principal.name)

    async def stream(ws: WebSocket) -> None:
        await within_quota(ws, stream_session)

    async def stream_session(ws: WebSocket, principal: Principal) -> None:
        """High-rate publishing: each frame is one event or an array; each frame gets an ack, in order."""
        await StreamSession(
            ws, relay, principal, _event_error, lambda obj, who: _record_rejection(relay, obj, who)
        ).serve()

    async def subscribe(ws: WebSocket) -> None:
        await within_quota(ws, subscribe_session)

    async def subscribe_session(ws: WebSocket, principal: Principal) -> None:
        patterns = ws.query_params.getlist("topic")
        group = ws.query_params.get("group")
        batch_text = ws.query_params.get("batch", "1")
        try:
            if not patterns:
                raise InvalidTopic("at least one topic=PATTERN is required")
            if len(patterns) > MAX_PATTERNS:
                raise InvalidTopic(f"at most {MAX_PATTERNS} patterns per subscription")
            for p in patterns:
                validate_pattern(p)
            batch = whole_number(batch_text, 1, MAX_SUBSCRIBE_BATCH)
            if batch is None:
                raise InvalidTopic(f"batch must be a whole number from 1 to {MAX_SUBSCRIBE_BATCH}")
            consumer = ws.query_params.get("consumer") or uuid.uuid4().hex[:12]
            if group is not None:
                group_name(group)
                group_name(consumer, "consumer")
        except (InvalidTopic, InvalidName) as exc:
            await deny(ws, _error(400, str(exc)))
            return
        try:
            relay.check_governance()
        except Unavailable as exc:
            await deny(ws, _error(503, str(exc), headers={"Retry-After": str(round(exc.retry_after_s))}))
            return
        for pattern in patterns:
            decision = relay.gate.may_subscribe(principal, pattern)
            if not decision.allowed:
                await deny(ws, _error(403, decision.reason, rule=decision.rule))
                return
        if group is not None:
            update = ws.query_params.get("update", "").lower() in ("1", "true", "yes")
            probe = ws.query_params.get("probe", "").lower() in ("1", "true", "yes")  # never alerted on
            try:
                await relay.group_keeper.join(group, patterns, principal, update, probe)
            except GroupConflict as exc:
                await deny(ws, _error(exc.status, str(exc), rule=exc.rule))
                return
            except StreamUnavailable as exc:
                await deny(ws, _error(503, str(exc)[:300], headers={"Retry-After": "1"}))
                return
            await ws.accept()
            await GroupSession(ws, relay, group, GroupStore.consumer(principal, consumer), principal).serve()
            return
        await ws.accept()
        sub = relay.subscribe(patterns, principal)
        sender = asyncio.create_task(_pump(ws, sub.queue, batch))
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            sender.cancel()
            relay.unsubscribe(sub)

    async def delete_group(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None:
            return unauthorized()
        name = request.path_params["name"]
        try:
            group_name(name)
            if await relay.group_keeper.remove(name, principal) is None:
                return _error(404, f"no consumer group {name!r} in {relay.region}")
        except InvalidName as exc:
            return _error(400, str(exc))
        except GroupConflict as exc:
            return _error(exc.status, str(exc))
        except StreamUnavailable as exc:
            return _error(503, str(exc)[:300], headers={"Retry-After": "1"})
        return Response(status_code=204)

    async def mesh(ws: WebSocket) -> None:
        ident = peer_identity(ws.scope)
        principal: Principal | None
        if ident is not None:
            principal = auth.from_certificate(ident.kind, ident.name)
            security = MTLS
        else:
            principal = auth.from_token(bearer_of(ws.headers.get("authorization")))
            security = TLS if ws.url.scheme == "wss" else PLAIN
        if principal is None or principal.region is None:
            log.warning(
                "mesh connection refused: no relay identity",
                extra={"client": str(ws.client), "principal": principal.name if principal else None},
            )
            await deny(ws, _error(401 if principal is None else 403, "a mesh peer needs a region certificate or token"))
            return
        if relay_allowlist and principal.name not in auth.by_name:
            # the principals file names the mesh's relays: a certificate of the CA alone is not enough
            log.warning("mesh connection refused: region not in the principals file", extra={"peer": principal.name})
            await deny(ws, _error(403, f"{principal.region} is not a relay of this mesh"))
            return
        await ws.accept()
        await serve_peer(ws, relay, principal.region, security, principal.name)

    async def healthz(request: Request) -> Response:
        health = relay.status.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    async def metrics(request: Request) -> Response:
        if principal_of(request) is None:
            return unauthorized()
        openmetrics, content_type = content_type_for(request.headers.get("accept"))
        # rendering takes a while with many series: off the event loop, so links and publishes go on
        return Response(await asyncio.to_thread(relay.metrics.render, openmetrics), media_type=content_type)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    return Starlette(
        routes=[
            Route("/v1/events", drained(post_events), methods=["POST"]),
            WebSocketRoute("/v1/stream", stream),
            WebSocketRoute("/v1/subscribe", subscribe),
            Route("/v1/groups/{name}", delete_group, methods=["DELETE"]),
            WebSocketRoute("/v1/mesh", mesh),
            *admin_routes(relay, principal_of, unauthorized),
            *(fault_routes(relay, principal_of) if config.fault_injection else []),
            Route("/healthz", healthz),
            Route("/metrics", metrics),
        ],
        middleware=[Middleware(RequestLog, logger="router.requests")],
        lifespan=lifespan,
    )


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


async def _stepwise(steps: Generator[None, None, list[Event]]) -> list[Event]:
    """Run a stepwise decode, letting the loop serve other work at each step."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            events: list[Event] = done.value
            return events
        await asyncio.sleep(0)


def _record_rejection(relay: Relay, obj: object, principal: Principal) -> None:
    """Leave a ``malformed`` drop record for a refused event that has an id (nothing of it is routed)."""
    if isinstance(obj, dict) and isinstance(obj.get("id"), str):
        size = len(orjson.dumps({k: v for k, v in obj.items() if k != "data"})) if len(obj) < 100 else 0
        relay.record.refused(Subject.of_body(obj)._replace(size=size), fk.MALFORMED, principal.name)
