"""Running one relay process under uvicorn: HTTPS/WSS when given a certificate, and a stop that drains.

SIGTERM (or SIGINT) stops the relay in order: it stops taking new work
(publishes get 503 with Retry-After, mesh frames are left for their sender to
send again), lets the commits in flight land and answers them, up to
``MESHSCOPE_DRAIN_TIMEOUT_S``; then the server closes its connections and the
relay writes its last flow records. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket

from meshcore.server import Server, client_name, redis_client
from meshcore.tls import server_context
from router.app import build_app
from router.config import RelayConfig
from router.relay import Relay
from router.workers import watch_parent

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve_relay(config: RelayConfig) -> None:
    """Run one relay until signalled (or cancelled), then drain and stop."""
    client = redis_client(config.redis_url, client_name("relay", config.region.id, config.relay_name))
    relay = Relay(config, client)
    ssl_context = server_context(config.tls) if config.tls is not None else None
    # a worker of ``--workers`` serves the socket its parent bound (``router.workers``)
    sock = socket.socket(fileno=config.listen_fd) if config.listen_fd >= 0 else None
    server = Server(
        build_app(relay),
        config.host,
        config.port,
        sock=sock,
        ssl_context=ssl_context,
        ws_max_size=config.max_body_bytes,
    )
    parent = asyncio.create_task(watch_parent(os.getppid())) if config.worker >= 0 else None
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signalled.set)
    try:
        await server.start()
        await signalled.wait()
        signalled.clear()
        log.info("stop requested")
        drain = asyncio.create_task(relay.drain(config.drain_timeout_s))
        again = asyncio.create_task(signalled.wait())
        await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drain, again):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await server.stop()
    finally:
        if parent is not None:
            parent.cancel()
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        await client.aclose()
