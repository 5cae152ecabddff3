"""The dashboard's HTTP surface (Starlette); it moves data between ClickHouse, Redis and the browser.

GET  /                          the live world map (viewer; without credentials: a redirect to /login)
GET  /login[?token=]            the sign-in form; with a token: sign in, set the session cookie, 303 to /
POST /login                     the sign-in form's target (field ``token``)
POST /logout                    forget the session cookie
GET  /api/session               who the caller is: name, roles, how they authenticated
GET  /api/...                   the map's JSON API (:mod:`dashboard.api`): topology, diff, timeline,
                                edges, traces, routes, groups, search, governance, alerts
POST /api/sql[?format=csv]      read-only SQL over the flow history (sql role)
WS   /ws/live                   live per-second edge statistics, link states, and a heartbeat every second
                                with the freshness of every region
GET  /metrics                   Prometheus text or OpenMetrics (any principal's bearer token): the
                                dashboard's own series and those of the collectors in its process
GET  /healthz                   public: ok or degraded (503), with why: a stale or unknown source of what
                                the map shows is a reason (``meshcore.freshness``)

Every request passes :class:`dashboard.auth.Gate` first (host, origin, caller, role).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from collector.errors import ClickHouseUnavailable, QueryError, StreamUnavailable
from dashboard.api import MapApi
from dashboard.assets import Assets
from dashboard.auth import DashboardAuth, Gate, login_routes
from dashboard.cache import ResponseCache
from dashboard.config import DashboardConfig
from dashboard.csvexport import spreadsheet_csv
from dashboard.live import LiveHub
from dashboard.params import BadRequest
from dashboard.sqlerrors import SqlRefused
from dashboard.sqlrun import run_user_sql
from dashboard.store import FlowStore
from meshcore.body import BodyTimeout, BodyTooLarge, read_limited
from meshcore.metrics import content_type_for
from meshcore.reqlog import RequestLog

log = logging.getLogger(__name__)


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, message: str, **extra: Any) -> JSON:
    return JSON({"error": message, **extra}, status_code=status)


def build_app(
    config: DashboardConfig,
    store: FlowStore,
    hub: LiveHub,
    auth: DashboardAuth,
    redis: aioredis.Redis,
    lifespan_hooks: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]] | None = None,
    cache: ResponseCache[bytes] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
    metrics: Callable[[bool], str] | None = None,
) -> Starlette:
    cache = cache if cache is not None else ResponseCache(config.cache_s)
    api = MapApi(config, store, redis, cache, watch=hub.watch, live_links=hub.links_now)

    assets = Assets()

    async def index(request: Request) -> Response:
        return assets.index(request)

    async def static_file(request: Request) -> Response:
        return assets.static(request)

    async def metrics_page(request: Request) -> Response:
        if metrics is None:
            return _error(404, "this dashboard exports no metrics")
        openmetrics, content_type = content_type_for(request.headers.get("accept"))
        return Response(await asyncio.to_thread(metrics, openmetrics), media_type=content_type)

    async def session(request: Request) -> Response:
        principal = request.state.principal
        return JSON({"principal": principal.name, "roles": sorted(principal.roles), "via": principal.via})

    async def sql(request: Request) -> Response:
        # the body is refused at the limit, before it is buffered whole, and when it trickles in
        try:
            body = await read_limited(request, config.sql_max_query_bytes, config.body_timeout_s)
        except BodyTooLarge as exc:
            return _error(413, str(exc), refused=True)
        except BodyTimeout as exc:
            return _error(408, str(exc))
        text: Any
        if request.headers.get("content-type", "").startswith("application/json"):
            try:
                text = orjson.loads(body).get("sql")
            except (orjson.JSONDecodeError, AttributeError):
                return _error(400, 'send {"sql": "SELECT ..."} as JSON, or the query as text/plain')
        else:
            text = body.decode("utf-8", "replace")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "the query is empty")
        try:
            result, truncated = await run_user_sql(store, text, config)
        except SqlRefused as exc:  # 403; 413 and 429 (with Retry-After) are its subclasses
            retry = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
            return JSON({"error": str(exc), "refused": True}, status_code=exc.status, headers=retry)
        except QueryError as exc:  # ClickHouse's error, sanitized by run_user_sql
            return _error(400, str(exc), clickhouse=True)
        if request.query_params.get("format") == "csv":
            return Response(
                spreadsheet_csv(result.columns, result.rows),
                media_type="text/csv",
                headers={"content-disposition": 'attachment; filename="meshscope.csv"'},
            )
        return JSON(
            {
                "columns": result.columns,
                "rows": result.rows,
                "elapsed_ms": round(result.elapsed_ms, 3),
                "rows_read": result.rows_read,
                "truncated": truncated,
                "row_limit": config.sql_max_rows,
            }
        )

    async def live(ws: WebSocket) -> None:
        await ws.accept()
        queue = hub.join()
        sender = asyncio.create_task(_send(ws, queue))
        reader = asyncio.create_task(_drain(ws))
        try:
            await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hub.leave(queue)
            sender.cancel()
            reader.cancel()
            for task in (sender, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):  # a failed send: the browser left
                    await task

    async def healthz(request: Request) -> Response:
        state: dict[str, Any] = health() if health is not None else {"status": "ok", "reasons": hub.problems()}
        fresh = await hub.watch.current(1.0)
        state["reasons"] = [*state["reasons"], *(r for r in fresh.problems() if r not in state["reasons"])]
        if state["reasons"]:
            state["status"] = "degraded"
        state["anonymous_allowed"] = auth.allow_anonymous
        return JSON(state, status_code=200 if state["status"] == "ok" else 503)

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        return JSON({"error": f"ClickHouse is unavailable: {exc}"}, status_code=503, headers={"Retry-After": "2"})

    async def redis_unavailable(request: Request, exc: Exception) -> Response:
        return JSON({"error": f"Redis is unavailable: {exc}"}, status_code=503, headers={"Retry-After": "2"})

    async def query_failed(request: Request, exc: Exception) -> Response:
        log.error("dashboard query failed", extra={"error": str(exc)[:500], "path": request.url.path})
        return _error(500, str(exc))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.start()
        if lifespan_hooks:
            await lifespan_hooks[0]()
        try:
            yield
        finally:
            if lifespan_hooks:
                await lifespan_hooks[1]()
            await hub.stop()
            await cache.close()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/static/{path:path}", static_file),
            *login_routes(auth, config.body_timeout_s),
            Route("/api/session", session),
            *api.routes(),
            Route("/api/sql", sql, methods=["POST"]),
            WebSocketRoute("/ws/live", live),
            Route("/healthz", healthz),
            Route("/metrics", metrics_page),
        ],
        middleware=[Middleware(RequestLog, logger="dashboard.requests"), Middleware(Gate, auth=auth)],
        exception_handlers={
            BadRequest: bad_request,
            ClickHouseUnavailable: unavailable,
            StreamUnavailable: redis_unavailable,
            QueryError: query_failed,
        },
        lifespan=lifespan,
    )


async def _send(ws: WebSocket, queue: asyncio.Queue[str]) -> None:
    """Send what the hub queues for this browser, in order, until the socket closes."""
    while True:
        await ws.send_text(await queue.get())


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the browser sends, so a close is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
