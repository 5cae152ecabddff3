"""Running the dashboard as a process, optionally with the collector inside it.

Embedded ClickHouse (chdb) can be open in one process only, so with chdb the
collector runs in the dashboard's process (``meshscope up`` does this); with a
ClickHouse server they run apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clickhouse_connect.driver.client import Client

from collector.clickhouse import make_client, migrate
from collector.service import Collector
from dashboard.app import build_app
from dashboard.config import DashboardConfig
from dashboard.live import LiveHub
from dashboard.store import FlowStore
from meshcore.server import Server, redis_client

log = logging.getLogger(__name__)


class DashboardRuntime:
    """Everything one dashboard process runs: clients, the live hub, maybe a collector, the server."""

    def __init__(self, config: DashboardConfig, with_collector: bool = False, announce: bool = True):
        self.config = config
        self.with_collector = with_collector
        self.announce = announce
        self.redis = redis_client(config.store.redis_url)
        self.collector: Collector | None = None
        self._collector_task: asyncio.Task[None] | None = None
        admin = make_client(config.store.clickhouse_url)
        migrate(admin, config.store.schema)
        self.admin: Client = admin
        self.store = FlowStore(make_client(config.store.clickhouse_url, database=config.store.database))
        self.hub = LiveHub(self.redis, config.store.live_channel)
        self.server = Server(
            build_app(config, self.store, self.hub, (self._start, self._stop)), config.host, config.port
        )

    async def _start(self) -> None:
        if self.with_collector:
            self.collector = Collector(self.config.store, self.redis, clickhouse=self.admin)
            self._collector_task = asyncio.create_task(self.collector.run(), name="collector")
        if self.announce:
            log.info("dashboard listening", extra={"url": self.server.url})

    async def _stop(self) -> None:
        if self.collector is not None and self._collector_task is not None:
            self.collector.stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._collector_task, 10)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await asyncio.to_thread(self.store.close)
        await self.redis.aclose()

    async def serve(self) -> None:
        try:
            await self.server.server.serve(sockets=[self.server.sock])
        finally:
            await asyncio.to_thread(self.store.close)
            await self.redis.aclose()
