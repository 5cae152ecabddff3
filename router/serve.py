"""Running one relay process under uvicorn: HTTPS/WSS when given a certificate."""

from __future__ import annotations

from meshcore.server import Server, client_name, redis_client
from meshcore.tls import server_context
from router.app import build_app
from router.config import RelayConfig
from router.relay import Relay


async def serve_relay(config: RelayConfig) -> None:
    """Run one relay until cancelled or signalled."""
    client = redis_client(config.redis_url, client_name("relay", config.region.id, config.relay_name))
    relay = Relay(config, client)
    ssl_context = server_context(config.tls) if config.tls is not None else None
    server = Server(
        build_app(relay), config.host, config.port, ssl_context=ssl_context, ws_max_size=config.max_body_bytes
    )
    try:
        await server.server.serve(sockets=[server.sock])
    finally:
        await client.aclose()
