"""Running the collector as a process: the loop plus its /metrics and /healthz.

``/healthz`` answers anyone (ok or degraded, with why); ``/metrics`` takes a
bearer token of any principal when a principals file is configured. They listen
on loopback unless ``MESHSCOPE_COLLECTOR_METRICS_HOST`` says otherwise, and
listening anywhere else needs the principals file (HTTPS with
``MESHSCOPE_TLS_CERT``/``MESHSCOPE_TLS_KEY``), so a scrape port is never open
to everyone by accident.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from collector.config import MESHSCOPE_AUTH_FILE, MESHSCOPE_COLLECTOR_METRICS_HOST, CollectorConfig
from collector.service import Collector
from meshcore.auth import Authenticator, bearer_of, load_principals
from meshcore.metrics import content_type_for
from meshcore.server import Server, client_name, redis_client
from meshcore.settings import SettingError
from meshcore.tls import server_context


def metrics_app(collector: Collector, auth: Authenticator | None = None) -> Starlette:
    async def metrics(request: Request) -> Response:
        if auth is not None and auth.from_token(bearer_of(request.headers.get("authorization"))) is None:
            return JSONResponse(
                {"error": "credentials required: Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        openmetrics, content_type = content_type_for(request.headers.get("accept"))
        return Response(await asyncio.to_thread(collector.metrics.render, openmetrics), media_type=content_type)

    async def healthz(request: Request) -> Response:
        health = collector.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


def scrape_auth(config: CollectorConfig) -> Authenticator | None:
    """Who may scrape /metrics: None (anyone who reaches loopback) or the principals file's principals."""
    if config.auth_file:
        return load_principals(config.auth_file)
    if not _loopback(config.metrics_host):
        raise SettingError(
            f"{MESHSCOPE_COLLECTOR_METRICS_HOST}={config.metrics_host} listens beyond loopback: "
            f"set {MESHSCOPE_AUTH_FILE} so that /metrics asks for credentials"
        )
    return None


STOP_GRACE_S = 15.0
"""After SIGTERM, how long the collector may take to finish its batch before it is cancelled."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve_collector(config: CollectorConfig) -> None:
    """Run one collector until cancelled."""
    listen = config.metrics_port >= 0
    auth = scrape_auth(config) if listen else None  # a setting error stops the start, before anything runs
    ssl_context = server_context(config.tls) if listen and config.tls is not None else None
    client = redis_client(config.redis_url, client_name("collector", config.region))
    collector = Collector(config, client)
    server = None
    if listen:
        app = metrics_app(collector, auth)
        server = Server(app, config.metrics_host, config.metrics_port, ssl_context=ssl_context)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_term() -> None:
        # stop the loop where it stands and flush, rather than cancel it inside a Redis call
        # (redis-py can swallow that cancellation); cancel only if stopping takes too long
        collector.stop()
        if task is not None:
            loop.call_later(STOP_GRACE_S, task.cancel)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGTERM, on_term)
    try:
        if server is not None:
            await server.start()
        await collector.run()
    finally:
        collector.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(collector.flush(), 10)
        if server is not None:
            await server.stop()
        await client.aclose()
