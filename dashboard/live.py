"""Fan-out of live messages from Redis pub/sub to browser websockets.

One subscription per dashboard process, to two channels: the collectors' per-second
edge statistics and the relays' link samples (shaped by :mod:`dashboard.livemessage`).
Each message is decoded, shaped and encoded once; every browser then gets the same string. Each browser
has a bounded queue, and one that falls behind loses its oldest messages, never the
dashboard's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.livemessage import LINKS_CHANNEL, LinkChanges, edges_message, links_message
from meshcore.backoff import backoff_s
from meshcore.supervise import Supervisor

log = logging.getLogger(__name__)

CLIENT_BUFFER = 30


class LiveHub:
    def __init__(self, client: aioredis.Redis, channel: str, links_channel: str | None = LINKS_CHANNEL):
        self.client = client
        self.channel = channel
        self.links_channel = links_channel
        self.clients: set[asyncio.Queue[str]] = set()
        self.received = 0
        self.broadcasts = 0
        self.malformed = 0
        self.links = LinkChanges()
        self.supervisor = Supervisor()
        """Runs the subscription; a crash is logged and restarted, and named by ``problems``."""
        self.lost_since = 0.0
        """When the subscription was lost (0: it is up)."""
        self._lost_error = ""

    def start(self) -> None:
        self.supervisor.spawn("live-hub", self._run)

    async def stop(self) -> None:
        await self.supervisor.stop()

    def problems(self, now: float | None = None) -> list[str]:
        """Why the live feed is not flowing, as sentences for /healthz."""
        now = time.time() if now is None else now
        out = self.supervisor.problems(now)
        if self.lost_since:
            out.append(f"live channel lost for {now - self.lost_since:.0f} s: {self._lost_error}")
        return out

    def join(self) -> asyncio.Queue[str]:
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=CLIENT_BUFFER)
        self.clients.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[str]) -> None:
        self.clients.discard(queue)

    def broadcast(self, text: str) -> None:
        """The same encoded message to every client; a full queue drops its oldest."""
        self.broadcasts += 1
        for queue in list(self.clients):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(text)

    def handle(self, channel: str, data: bytes, now_s: float) -> None:
        """One pub/sub message: shaped once, then broadcast (links only when they say something new)."""
        self.received += 1
        if channel == self.channel:
            message = edges_message(data)
        else:
            message = links_message(data)
            if message is not None and not self.links.forward(message, now_s):
                return
        if message is None:
            self.malformed += 1
            return
        self.broadcast(orjson.dumps(message).decode())

    async def _run(self) -> None:
        attempt = 0
        channels = [self.channel] + ([self.links_channel] if self.links_channel else [])
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                attempt = 0
                self.lost_since = 0.0
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and isinstance(message.get("data"), bytes):
                        name = message.get("channel")
                        channel = name.decode() if isinstance(name, bytes) else str(name)
                        self.handle(channel, message["data"], time.time())
            except (RedisError, OSError) as exc:
                delay = backoff_s(attempt, 0.2, 5.0, random.random())
                attempt += 1
                self.lost_since = self.lost_since or time.time()
                self._lost_error = str(exc)[:300]
                log.warning("live channel lost; resubscribing", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
