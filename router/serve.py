"""Running one relay process under uvicorn."""

from __future__ import annotations

from meshcore.server import Server, redis_client
from router.app import build_app
from router.config import RelayConfig
from router.relay import Relay


async def serve_relay(config: RelayConfig) -> None:
    """Run one relay until cancelled or signalled."""
    client = redis_client(config.redis_url)
    relay = Relay(config, client)
    server = Server(build_app(relay), config.host, config.port)
    try:
        await server.server.serve(sockets=[server.sock])
    finally:
        await client.aclose()
