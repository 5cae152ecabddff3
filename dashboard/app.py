"""The dashboard's HTTP surface (Starlette); it moves data between ClickHouse, Redis and the browser.

GET  /                          the live world map (viewer; without credentials: a redirect to /login)
GET  /login[?token=]            the sign-in form; with a token: sign in, set the session cookie, 303 to /
POST /login                     the sign-in form's target (field ``token``)
POST /logout                    forget the session cookie
GET  /api/session               who the caller is: name, roles, how they authenticated
GET  /api/topology?window=      regions, edges and links over a window
GET  /api/edges/{src}/{dst}     one edge: time series, topics, recent sampled events
GET  /api/edges?src=&dst=       the same, for region ids that hold a "/" (a path cannot carry them)
GET  /api/traces/{trace_id}     every hop of a trace in path order
POST /api/sql[?format=csv]      read-only SQL over the flow history (sql role)
WS   /ws/live                   live per-second edge statistics
GET  /healthz                   public: status only

Every request passes :class:`dashboard.auth.Gate` first (host, origin, caller, role).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
import plotly
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from collector.errors import ClickHouseUnavailable, QueryError
from dashboard import queries as q
from dashboard.auth import DashboardAuth, Gate, login_routes
from dashboard.config import DashboardConfig
from dashboard.csvexport import spreadsheet_csv
from dashboard.live import LiveHub
from dashboard.sqlguard import SqlRefused
from dashboard.sqlrun import run_user_sql
from dashboard.store import FlowStore

log = logging.getLogger(__name__)

STATIC_DIR = str(resources.files("static"))
PLOTLY_JS = os.path.join(os.path.dirname(plotly.__file__), "package_data", "plotly.min.js")


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
    lifespan_hooks: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]] | None = None,
) -> Starlette:
    db = config.store.database
    t = config.thresholds

    async def index(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), headers={"cache-control": "no-cache"})

    async def plotly_js(request: Request) -> Response:
        return FileResponse(
            PLOTLY_JS, media_type="application/javascript", headers={"cache-control": "public, max-age=86400"}
        )

    async def session(request: Request) -> Response:
        principal = request.state.principal
        return JSON({"principal": principal.name, "roles": sorted(principal.roles), "via": principal.via})

    async def topology(request: Request) -> Response:
        window_s = q.parse_window(request.query_params.get("window"))
        now = time.time()
        sp = q.span(window_s, now)
        edges, regions, links = await asyncio.gather(
            store.rows(q.topology_sql(db, sp)), store.rows(q.regions_sql(db)), store.rows(q.links_sql(db))
        )
        return JSON(q.shape_topology(edges, regions, links, sp, now, t, config.link_stale_s))

    async def edge(request: Request) -> Response:
        src = request.path_params.get("src", request.query_params.get("src"))
        dst = request.path_params.get("dst", request.query_params.get("dst"))
        if not src or not dst:
            return _error(400, "name the edge: /api/edges/{src}/{dst} or /api/edges?src=…&dst=…")
        sp = q.span(q.parse_window(request.query_params.get("window")), time.time(), max_bucket_s=60)
        params = {"src": src, "dst": dst}
        series, topics, samples = await asyncio.gather(
            store.rows(q.edge_series_sql(db, sp), params),
            store.rows(q.edge_topics_sql(db, sp), params),
            store.rows(q.edge_samples_sql(db, sp), params),
        )
        return JSON(q.shape_edge(src, dst, series, topics, samples, sp, t))

    async def trace(request: Request) -> Response:
        trace_id = request.path_params["trace_id"].lower()
        if not q.TRACE_ID.match(trace_id):
            return _error(400, "a trace id is 32 lower-case hex digits")
        params = {"trace_id": trace_id}
        first, last, edges, found = (await store.rows(q.trace_range_sql(db), params))[0]
        # no index entry (records older than the index): fall back to the bloom filter alone
        rows = await store.rows(q.trace_sql(db, (first, last, edges) if found and edges else None), params)
        if not rows:
            return _error(404, f"no flow records for trace {trace_id}")
        return JSON(q.shape_trace(trace_id, rows))

    async def sql(request: Request) -> Response:
        # the body is refused at the limit, before it is buffered whole
        limit = config.sql_max_query_bytes
        too_large = _error(413, f"the request body is over {limit} bytes", refused=True)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return too_large
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
        reader = asyncio.create_task(_drain(ws))
        try:
            while not reader.done():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await ws.send_text(getter.result().decode())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.leave(queue)
            reader.cancel()

    async def healthz(request: Request) -> Response:
        return JSON({"status": "ok", "anonymous_allowed": auth.allow_anonymous})

    async def bad_request(request: Request, exc: Exception) -> Response:
        return _error(400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        return JSON({"error": f"ClickHouse is unavailable: {exc}"}, status_code=503, headers={"Retry-After": "2"})

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

    return Starlette(
        routes=[
            Route("/", index),
            Route("/static/plotly.min.js", plotly_js),
            Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
            *login_routes(auth),
            Route("/api/session", session),
            Route("/api/topology", topology),
            Route("/api/edges/{src}/{dst}", edge),
            Route("/api/edges", edge),
            Route("/api/traces/{trace_id}", trace),
            Route("/api/sql", sql, methods=["POST"]),
            WebSocketRoute("/ws/live", live),
            Route("/healthz", healthz),
        ],
        middleware=[Middleware(Gate, auth=auth)],
        exception_handlers={q.BadRequest: bad_request, ClickHouseUnavailable: unavailable, QueryError: query_failed},
        lifespan=lifespan,
    )


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the browser sends, so a close is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
