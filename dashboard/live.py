"""Fan-out of live messages from Redis pub/sub to browser websockets.

One subscription per region store (fanned in: each region's collectors and relays publish
in their own region's store), to two channels: the collectors' per-second edge statistics
and the relays' link samples (shaped by :mod:`dashboard.livemessage`); the dashboard's own
``regions`` messages (each region's freshness) join the same feed.
Each message is decoded, shaped and encoded once; every browser then gets the same string. Each browser
has a bounded queue, and one that falls behind loses its oldest messages, never the
dashboard's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.livemessage import LINKS_CHANNEL, LinkChanges, edges_message, links_message
from meshcore.backoff import backoff_s
from meshcore.supervise import Supervisor

log = logging.getLogger(__name__)

CLIENT_BUFFER = 30


class LiveHub:
    def __init__(
        self,
        clients: aioredis.Redis | Sequence[aioredis.Redis],
        channel: str,
        links_channel: str | None = LINKS_CHANNEL,
    ):
        self.clients_in: list[aioredis.Redis] = [clients] if isinstance(clients, aioredis.Redis) else list(clients)
        """One per region store; each is subscribed to on its own."""
        self.channel = channel
        self.links_channel = links_channel
        self.clients: set[asyncio.Queue[str]] = set()
        self.received = 0
        self.broadcasts = 0
        self.malformed = 0
        self.links = LinkChanges()
        self.supervisor = Supervisor()
        """Runs the subscription; a crash is logged and restarted, and named by ``problems``."""
        self._lost: dict[int, tuple[float, str]] = {}  # store index -> (since, error) while its subscription is down

    @property
    def lost_since(self) -> float:
        """When the first of the lost subscriptions was lost (0: every one is up)."""
        return min((since for since, _ in self._lost.values()), default=0.0)

    def start(self) -> None:
        for index, client in enumerate(self.clients_in):
            name = "live-hub" if index == 0 else f"live-hub {index}"
            self.supervisor.spawn(name, functools.partial(self._run, client, index))

    async def stop(self) -> None:
        await self.supervisor.stop()

    def problems(self, now: float | None = None) -> list[str]:
        """Why the live feed is not flowing, as sentences for /healthz."""
        now = time.time() if now is None else now
        out = self.supervisor.problems(now)
        for since, error in self._lost.values():
            out.append(f"live channel lost for {now - since:.0f} s: {error}")
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

    async def _run(self, client: aioredis.Redis, index: int) -> None:
        attempt = 0
        channels = [self.channel] + ([self.links_channel] if self.links_channel else [])
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                attempt = 0
                self._lost.pop(index, None)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and isinstance(message.get("data"), bytes):
                        name = message.get("channel")
                        channel = name.decode() if isinstance(name, bytes) else str(name)
                        self.handle(channel, message["data"], time.time())
            except (RedisError, OSError) as exc:
                delay = backoff_s(attempt, 0.2, 5.0, random.random())
                attempt += 1
                since = self._lost.get(index, (time.time(), ""))[0]
                self._lost[index] = (since, str(exc)[:300])
                log.warning("live channel lost; resubscribing", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
