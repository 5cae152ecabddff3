"""The baseline for relay figures: a bare websockets forwarder doing no work, same framing.

``python -m bench.forwarder PORT [NEXT_URL]``: frames arriving on ``/in`` are sent
on to ``NEXT_URL/in`` unchanged, or, on the last hop, to every socket on ``/out``;
each frame on ``/in`` is answered with a one-byte ack, as the relay acks a frame.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
import websockets
from websockets.asyncio.server import ServerConnection


async def main(port: int, next_url: str | None) -> None:
    outs: set[ServerConnection] = set()
    downstream = await websockets.connect(next_url + "/in", max_size=None, compression=None) if next_url else None

    async def handler(ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if path == "/out":
            outs.add(ws)
            try:
                await ws.wait_closed()
            finally:
                outs.discard(ws)
            return
        async for frame in ws:
            if downstream is not None:
                await downstream.send(frame)
            else:
                for out in list(outs):
                    await out.send(frame)
            await ws.send(b"1")

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        drain = asyncio.create_task(_drain(downstream)) if downstream is not None else None
        await asyncio.Future()
        if drain is not None:
            drain.cancel()


async def _drain(ws: websockets.ClientConnection) -> None:
    async for _ in ws:
        pass


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
