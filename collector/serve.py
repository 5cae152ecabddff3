"""Running the collector as a process: the loop plus its /metrics and /healthz."""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from collector.config import CollectorConfig
from collector.service import Collector
from meshcore.metrics import content_type_for
from meshcore.server import Server, redis_client


def metrics_app(collector: Collector) -> Starlette:
    async def metrics(request: Request) -> Response:
        openmetrics, content_type = content_type_for(request.headers.get("accept"))
        return Response(await asyncio.to_thread(collector.metrics.render, openmetrics), media_type=content_type)

    async def healthz(request: Request) -> Response:
        health = collector.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    return Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz)])


async def serve_collector(config: CollectorConfig, host: str = "127.0.0.1") -> None:
    """Run one collector until cancelled."""
    client = redis_client(config.redis_url)
    collector = Collector(config, client)
    server = Server(metrics_app(collector), host, config.metrics_port) if config.metrics_port >= 0 else None
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
