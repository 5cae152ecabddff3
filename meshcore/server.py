"""Running a Starlette app under uvicorn on a socket we bound, so port 0 works and the port is known.

With an SSL context the server speaks HTTPS and WSS. uvicorn keeps the TLS session to itself, yet
the mesh endpoint must know which certificate a peer presented, so the server uses small subclasses
of uvicorn's HTTP (httptools, h11) and WebSocket (websockets-sansio) protocols. When a connection is
made, after the TLS handshake, each wraps its app in one that adds the ASGI TLS extension
(``scope["extensions"]["tls"]``, built by :func:`meshcore.tls.scope_extension`) to every scope of
that connection. Without TLS the app is left as it is and scopes carry no ``tls`` extension, as the
ASGI spec says. A WebSocket upgrade hands the same transport to the WebSocket protocol, so both
protocols see the same handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable, Generator
from typing import Any, cast

import redis.asyncio as aioredis
import uvicorn
from redis.asyncio.cluster import RedisCluster
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from meshcore.tls import TLS_EXTENSION, scope_extension

WS_MAX_SIZE = 64 << 20
"""Default largest WebSocket message in bytes; callers pass their own body limit."""


def client_name(service: str, region: str = "", name: str = "") -> str:
    """The name a service's store connections carry (CLIENT SETNAME), so CLIENT LIST tells who is connected:
    ``meshscope:relay:aws:us-east-1:relay-aws:us-east-1``; anything but letters, digits and ``:._-`` becomes ``_``."""
    text = ":".join(part for part in ("meshscope", service, region, name) if part)
    return "".join(c if c.isascii() and (c.isalnum() or c in ":._-") else "_" for c in text)[:200]


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss", "valkey+cluster": "redis"}
"""A store URL with one of these schemes names a node of a Valkey/Redis cluster (any one: the rest are found)."""


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_cluster(client: aioredis.Redis) -> bool:
    """Whether ``client`` talks to a cluster (``redis_client`` built it from a ``redis+cluster://`` URL)."""
    return isinstance(client, RedisCluster)


def redis_client(url: str, name: str | None = None) -> aioredis.Redis:
    """A client for one store; ``name`` (see ``client_name``) is set on each of its connections.

    ``redis+cluster://host:port`` (or ``rediss+cluster://``) gives redis-py's cluster client, typed
    as the plain one: every command a service sends names keys of one slot (``meshcore.storekeys``).
    """
    scheme, _, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None:
        return aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10, client_name=name)
    # no socket timeout, as with one server: blocking reads wait as long as they asked to
    cluster = RedisCluster.from_url(
        f"{plain}://{rest}", socket_connect_timeout=2, socket_timeout=None, client_name=name
    )
    return cast(aioredis.Redis, cluster)


async def store_run_id(client: aioredis.Redis, key: str) -> str:
    """The run_id of the server holding ``key`` (new at each of its starts); on a cluster, of that key's node."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(key)
        info: Any = await client.info("server", target_nodes=node)
    else:
        info = await client.info("server")
    return str(info.get("run_id", ""))


async def node_time(client: aioredis.Redis, key: str) -> Any:
    """TIME of the server holding ``key`` (seconds, microseconds); on a cluster, of that key's node."""
    if isinstance(client, RedisCluster):
        return await client.time(target_nodes=client.get_node_from_key(key))
    return await client.time()


def bind(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free port, readable before the server starts."""
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and without it
    # every keep-alive response waits ~40 ms on Nagle and delayed ACKs
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _with_tls(app: ASGIApp, transport: Any) -> ASGIApp:
    """``app`` adding this connection's TLS extension to each scope; ``app`` itself on plain TCP."""
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return app
    extension = scope_extension(ssl_object)

    async def with_tls(scope: Scope, receive: Receive, send: Send) -> None:
        scope["extensions"] = {**(scope.get("extensions") or {}), TLS_EXTENSION: dict(extension)}
        await app(scope, receive, send)

    return with_tls


class _HttpToolsTls(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_tls(self.app, transport)


class _H11Tls(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.app = _with_tls(self.app, transport)


class _WebSocketTls(WebSocketsSansIOProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.app = _with_tls(self.app, transport)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.handshake_exc is not None and not self.handshake_initiated and not self.transport.is_closing():
            # websockets refused the upgrade request itself (a request line or header over its limits,
            # or no HTTP at all) and queued its answer (414, 431) without an event for uvicorn, which
            # would leave the connection open, unanswered, for ever: send the answer and close
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    async def send(self, message: Any) -> None:
        await super().send(message)
        # a refusal sent as a plain HTTP response (the WebSocket denial response) ends the handshake;
        # without this uvicorn logs "returned without completing handshake" for every refusal
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, which takes SIGINT/SIGTERM only when it is the process's one server.

    ``serve()`` catches those signals in the main thread for its own graceful exit. A server
    started inside a larger program (``Server.start``: tests, ``meshscope up``, a collector's
    metrics) must leave them to that program, or a SIGTERM meant for the process would stop
    one server and be lost.
    """

    handle_signals = True

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if self.handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


class Server:
    """A uvicorn server bound to a socket we opened, so port 0 works and the port is known.

    ``ssl_context`` turns on HTTPS/WSS (build it with :func:`meshcore.tls.server_context`).
    ``ws_max_size`` is the largest WebSocket message in bytes: a frame announcing more is refused
    (close code 1009) from its header, before its payload is read.
    """

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        fast: bool = True,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ws_max_size: int = WS_MAX_SIZE,
    ):
        if ws_max_size < 1:
            raise ValueError(f"ws_max_size={ws_max_size}: it must be at least 1 byte")
        self.sock = sock or bind(host, port)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.ssl_context = ssl_context
        factory: Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext] | None = None
        if ssl_context is not None:
            factory = lambda _config, _default: ssl_context  # noqa: E731
        self.config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws_max_size=ws_max_size,
            ws_ping_interval=None,
            http=_HttpToolsTls if fast else _H11Tls,
            ws=_WebSocketTls,
            timeout_graceful_shutdown=5,
            ssl_context_factory=factory,
        )
        self.server = _Uvicorn(self.config)
        self.task: asyncio.Task[None] | None = None

    @property
    def _authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self._authority}"

    @property
    def ws_url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://{self._authority}"

    async def start(self) -> None:
        """Serve in a task of the running loop; signals stay with the program that started it."""
        self.server.handle_signals = False
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
