"""Running a Starlette app under uvicorn on a socket we bound, so port 0 works and the port is known."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import redis.asyncio as aioredis
import uvicorn
from starlette.types import ASGIApp


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free port, readable before the server starts."""
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without it
    # every keep-alive response waits ~40 ms on Nagle and delayed ACKs
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


class Server:
    """A uvicorn server bound to a socket we opened, so port 0 works and the port is known."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        fast: bool = True,
        sock: socket.socket | None = None,
    ):
        self.sock = sock or bind(host, port)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws_max_size=64 << 20,
            ws_ping_interval=None,
            http="httptools" if fast else "h11",
            ws="websockets-sansio",
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(self.config)
        self.task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> None:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self.task.done():
                self.sock.close()
                self.task.result()
                raise RuntimeError("server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
