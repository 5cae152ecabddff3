"""A TCP proxy on loopback that can stop forwarding: the network faults of tests and benchmarks.

``forward``   bytes flow both ways (the normal case)
``blackhole`` connections stay open but no byte moves either way (a silent network)
``cut``       every connection is closed and new ones are refused until ``forward`` again

It is a real socket path (asyncio streams), so relays, links and Redis clients
see exactly what they would see on a network that fails. ``delay_ms`` holds
every chunk that long, each way, in order: a link across an ocean on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

FORWARD, BLACKHOLE, CUT = "forward", "blackhole", "cut"


STOP_WAIT_S = 5.0
"""How long ``stop`` waits for the proxy's connections to go once it closed them."""


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, delay_ms: float = 0.0):
        self.target = (target_host, target_port)
        self.delay_s = delay_ms / 1000
        self.mode = FORWARD
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.connections = 0

    async def start(self, port: int = 0) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def forward(self) -> None:
        self.mode = FORWARD
        self._flowing.set()

    def blackhole(self) -> None:
        self.mode = BLACKHOLE
        self._flowing.clear()

    def cut(self) -> None:
        self.mode = CUT
        self._flowing.clear()
        for client, upstream in list(self._conns):
            for w in (client, upstream):
                with contextlib.suppress(Exception):
                    w.transport.abort()
        self._conns.clear()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            # on Python 3.11 wait_closed waits for every accepted transport, and one whose handler was
            # cancelled before it closed its writer never goes: bounded, so a stop cannot hang
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), STOP_WAIT_S)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._relay(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == CUT:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        sock = up_writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        pair = (writer, up_writer)
        self._conns.add(pair)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        self._conns.discard(pair)
        for w in pair:
            with contextlib.suppress(Exception):
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.delay_s:
            await self._pipe_delayed(reader, writer)
            return
        while True:
            data = await reader.read(65536)
            if not data:
                break
            await self._flowing.wait()  # a black hole holds the bytes (and the connection) forever
            if self.mode == CUT:
                break
            writer.write(data)
            await writer.drain()
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def _pipe_delayed(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Each chunk leaves ``delay_s`` after it arrived, in order (latency, not a bandwidth limit)."""
        loop = asyncio.get_running_loop()
        wire: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await wire.get()
                if not data:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._flowing.wait()
                if self.mode == CUT:
                    break
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(Exception):
                writer.write_eof()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                wire.put_nowait((loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
