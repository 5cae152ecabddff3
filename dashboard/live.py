"""Fan-out of the collectors' live statistics from Redis pub/sub to browser websockets.

One subscription per dashboard process; each browser gets a bounded queue, and a
browser that falls behind loses its oldest messages, never the dashboard's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore.backoff import backoff_s

log = logging.getLogger(__name__)

CLIENT_BUFFER = 30


class LiveHub:
    def __init__(self, client: aioredis.Redis, channel: str):
        self.client = client
        self.channel = channel
        self.clients: set[asyncio.Queue[bytes]] = set()
        self.received = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="live-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def join(self) -> asyncio.Queue[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=CLIENT_BUFFER)
        self.clients.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[bytes]) -> None:
        self.clients.discard(queue)

    def broadcast(self, data: bytes) -> None:
        self.received += 1
        for queue in list(self.clients):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(data)

    async def _run(self) -> None:
        attempt = 0
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                attempt = 0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and isinstance(message.get("data"), bytes):
                        self.broadcast(message["data"])
            except (RedisError, OSError) as exc:
                delay = backoff_s(attempt, 0.2, 5.0, random.random())
                attempt += 1
                log.warning("live channel lost; resubscribing", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
