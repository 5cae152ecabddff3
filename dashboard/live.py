"""Fan-out of live messages from Redis pub/sub to browser websockets, with a heartbeat.

One subscription per region store (fanned in: each region's collectors and relays publish
in their own region's store), to two channels: the collectors' per-second edge statistics
and the relays' link samples (shaped by :mod:`dashboard.livemessage`). Each message is
decoded, shaped and encoded once; every browser then gets the same string. Each browser
has a bounded queue, and one that falls behind loses its oldest messages, never the
dashboard's memory.

What the feed hears (when the collectors last spoke, the newest link sample of each
region's relays, which subscriptions are down) is kept in a ``FeedState``. The hub also
runs the reader of every region's store (``dashboard.regionstores``), and every second
it judges both (``dashboard.watch``, ``meshcore.freshness``) and sends every browser a
heartbeat with the result, per region: a page knows the feed is alive, how old each
region's figures are and why, and which regions to draw stale, even when a store or the
collectors are silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard.livemessage import LINKS_CHANNEL, LinkChanges, edges_message, links_message
from dashboard.regionstores import RegionStores
from dashboard.watch import FeedState, FreshnessWatch
from meshcore.backoff import backoff_s
from meshcore.freshness import Assessment
from meshcore.supervise import Supervisor

log = logging.getLogger(__name__)

CLIENT_BUFFER = 30
HEARTBEAT_S = 1.0
"""Every browser hears from the hub at least this often."""


class LiveHub:
    def __init__(self, stores: RegionStores, channel: str, links_channel: str | None = LINKS_CHANNEL):
        self.stores = stores
        """Every region's store: each is subscribed to on its own, and read every second."""
        self.channel = channel
        self.links_channel = links_channel
        self.clients: set[asyncio.Queue[str]] = set()
        self.received = 0
        self.broadcasts = 0
        self.malformed = 0
        self.links = LinkChanges()
        self.supervisor = Supervisor()
        """Runs the subscriptions, the stores' reader and the heartbeat; a crash is logged and restarted,
        and named by ``problems``."""
        self.feed = FeedState()
        self.watch = FreshnessWatch(stores, self.feed)
        self.links_now: dict[tuple[str, str], dict[str, object]] = {}
        """The newest shaped sample of every link, from the live feed (for a live map answer)."""
        self.heartbeats = 0

    @property
    def lost_since(self) -> float:
        """When the first of the lost subscriptions was lost (0: every one is up)."""
        return self.feed.lost_since

    def start(self) -> None:
        for index, client in enumerate(self.stores.clients):
            name = "live-hub" if index == 0 else f"live-hub {index}"
            self.supervisor.spawn(name, functools.partial(self._run, client, index))
        self.supervisor.spawn("region-stores", self.stores.run)
        self.supervisor.spawn("heartbeat", self._beat)

    async def stop(self) -> None:
        await self.supervisor.stop()

    def problems(self, now: float | None = None) -> list[str]:
        """Why the live feed is not flowing, as sentences for /healthz."""
        now = time.time() if now is None else now
        out = self.supervisor.problems(now)
        for since, error in self.feed.lost.values():
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
            if message is not None:
                self.feed.edges_at = now_s
        else:
            message = links_message(data, now_s)
            if message is not None:
                self._take_links(message["links"])
                if not self.links.forward(message, now_s):
                    return
        if message is None:
            self.malformed += 1
            return
        self.broadcast(orjson.dumps(message).decode())

    def _take_links(self, links: list[dict[str, object]]) -> None:
        for link in links:
            src, dst, ts = link["src"], link["dst"], link["last_sample"]
            if not isinstance(src, str) or not isinstance(dst, str) or not isinstance(ts, float):
                continue
            if ts > self.feed.links_at.get(src, 0.0):
                self.feed.links_at[src] = ts
            if len(self.links_now) < 10_000 or (src, dst) in self.links_now:
                self.links_now[(src, dst)] = link

    def heartbeat(self, assessment: Assessment, now_s: float) -> dict[str, object]:
        """The heartbeat message: the feed's own state and every region's freshness."""
        feed = self.feed
        return {
            "type": "heartbeat",
            "ts": round(now_s, 3),
            "feed": {
                "subscribed": not feed.lost_since,
                "lost_for_s": round(now_s - feed.lost_since, 1) if feed.lost_since else None,
                "error": feed.lost_error if feed.lost_since else "",
                "collectors_heard_s": round(now_s - feed.edges_at, 1) if feed.edges_at else None,
            },
            "freshness": assessment.to_json(),
        }

    async def _beat(self) -> None:
        while True:
            assessment = await self.watch.current(HEARTBEAT_S / 2)
            self.heartbeats += 1
            self.broadcast(orjson.dumps(self.heartbeat(assessment, time.time())).decode())
            await asyncio.sleep(HEARTBEAT_S)

    async def _run(self, client: aioredis.Redis, index: int) -> None:
        attempt = 0
        channels = [self.channel] + ([self.links_channel] if self.links_channel else [])
        while True:
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(*channels)
                attempt = 0
                self.feed.lost.pop(index, None)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message and isinstance(message.get("data"), bytes):
                        name = message.get("channel")
                        channel = name.decode() if isinstance(name, bytes) else str(name)
                        self.handle(channel, message["data"], time.time())
            except (RedisError, OSError) as exc:
                delay = backoff_s(attempt, 0.2, 5.0, random.random())
                attempt += 1
                since = self.feed.lost.get(index, (time.time(), ""))[0]
                self.feed.lost[index] = (since, str(exc)[:300])
                log.warning("live channel lost; resubscribing", extra={"error": str(exc), "retry_in_s": delay})
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
