"""Running the dashboard as a process, optionally with the collector inside it.

Embedded ClickHouse (chdb) can be open in one process only, so with chdb the
collector runs in the dashboard's process (``meshscope up`` does this), one loop
per region store (``MESHSCOPE_REGION_STORES``); with a ClickHouse server they run
apart, one collector per region. The dashboard reads every region's store
(``dashboard.regionstores``): relay reports, each region's freshness, the live feed.

Secure by default, and still one command: without ``MESHSCOPE_AUTH_FILE`` the runtime makes a
token at start for a principal with the viewer and sql roles and offers a sign-in URL
(``sign_in_url``, which ``meshscope dashboard`` prints at start, as Jupyter does; no log line
holds it); with a principals file, people sign in with their own tokens. The session secret is
``MESHSCOPE_DASHBOARD_SECRET`` or random per process, in which case sessions end when the process
does. With ``MESHSCOPE_TLS_CERT``/``KEY`` the dashboard serves HTTPS (and asks for client
certificates when ``MESHSCOPE_TLS_CA`` is set).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from clickhouse_connect.driver.client import Client

from collector.clickhouse import make_client, migrate
from collector.service import Collector
from dashboard.access import DASHBOARD_ROLES
from dashboard.app import build_app
from dashboard.auth import DashboardAuth
from dashboard.cache import ResponseCache
from dashboard.config import MESHSCOPE_ALLOW_ANONYMOUS, DashboardConfig
from dashboard.live import LiveHub
from dashboard.origin import WILDCARD_BINDS
from dashboard.regionstores import RegionStores
from dashboard.session import SessionCodec
from dashboard.store import FlowStore
from meshcore.auth import Principal, load_principals, new_token
from meshcore.metrics import Registry
from meshcore.server import Server, client_name, redis_client
from meshcore.supervise import Supervisor
from meshcore.tls import server_context

LOCAL_PRINCIPAL = "local"
"""The principal of the token made at start when no principals file is configured."""
LOCAL_ROLES = frozenset(("viewer", "sql"))
"""Its roles: the map and SQL."""

log = logging.getLogger(__name__)

METRICS = (
    ("dashboard_live_clients", "gauge", "Browsers connected to the live feed"),
    ("dashboard_live_messages_total", "counter", "Messages received on the live channels"),
    ("dashboard_live_malformed_total", "counter", "Live messages dropped as malformed"),
    ("dashboard_live_up", "gauge", "1 while the live channel subscription is up"),
)
"""The dashboard's own metric families: name, type, help."""


def describe_metrics(m: Registry) -> None:
    for name, kind, text in METRICS:
        m.describe(name, kind, text)
        m.set(name, 0)


class DashboardRuntime:
    """Everything one dashboard process runs: clients, the live hub, maybe a collector, the server."""

    def __init__(self, config: DashboardConfig, with_collector: bool = False, announce: bool = True):
        self.config = config
        self.with_collector = with_collector
        self.announce = announce
        authenticator = load_principals(config.auth_file, config.allow_anonymous)
        self.token: str | None = None
        """The token made at start (viewer and sql), when no principals file is configured."""
        if config.auth_file is None:
            self.token = new_token()
            authenticator = authenticator.with_principal(Principal(LOCAL_PRINCIPAL, roles=LOCAL_ROLES), self.token)
        secret = config.session_secret.encode() if config.session_secret else secrets.token_bytes(32)
        self.auth = DashboardAuth(authenticator, SessionCodec(secret, config.session_ttl_s), config.allowed_hosts)
        ssl_context = server_context(config.tls) if config.tls is not None else None
        self.redis = redis_client(config.store.redis_url, client_name("dashboard"))
        self.regions = RegionStores(config.store, self.redis)
        """Every region's store: relay reports, freshness, and the live feed's sources (read by the hub)."""
        self.collectors: list[Collector] = []
        self.supervisor = Supervisor()
        """Runs the in-process collectors: a crash is logged, counted and restarted, and /healthz says so."""
        admin = make_client(config.store.clickhouse_url)
        migrate(admin, config.store.schema)
        self.admin: Client = admin
        self.store = FlowStore(make_client(config.store.clickhouse_url, database=config.store.database))
        self.hub = LiveHub(self.regions, config.store.live_channel)
        self.cache: ResponseCache[bytes] = ResponseCache(config.cache_s)
        """Map answers, one computation per question per ``cache_s`` for every viewer."""
        self.metrics = Registry(process=True)
        """What /metrics exports: the dashboard's series and, once it runs, the in-process collector's."""
        describe_metrics(self.metrics)
        self.server = Server(
            build_app(
                config,
                self.store,
                self.hub,
                self.auth,
                self.redis,
                (self._start, self._stop),
                self.cache,
                self.health,
                self.render_metrics,
            ),
            config.host,
            config.port,
            ssl_context=ssl_context,
        )

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches the dashboard (a wildcard bind reads as 127.0.0.1)."""
        scheme = "https" if self.server.ssl_context is not None else "http"
        host = self.config.host
        if host in WILDCARD_BINDS:
            host = "[::1]" if ":" in host else "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.server.port}"

    @property
    def sign_in_url(self) -> str | None:
        """``URL/login?token=…`` for the token made at start; None when a principals file is configured."""
        return f"{self.url}/login?token={self.token}" if self.token is not None else None

    @property
    def collector(self) -> Collector | None:
        """The in-process collector of the first region store (of the only one, without MESHSCOPE_REGION_STORES)."""
        return self.collectors[0] if self.collectors else None

    def render_metrics(self, openmetrics: bool) -> str:
        """The /metrics page; the live feed's figures are read at the scrape."""
        m, hub = self.metrics, self.hub
        m.set("dashboard_live_clients", len(hub.clients))
        m.set("dashboard_live_messages_total", hub.received)
        m.set("dashboard_live_malformed_total", hub.malformed)
        m.set("dashboard_live_up", 0 if hub.lost_since else 1)
        return m.render(openmetrics)

    async def _start(self) -> None:
        if self.with_collector:
            for i, config in enumerate(self.config.store.for_each_region()):
                client = self.redis
                if config.redis_url != self.config.store.redis_url:
                    client = redis_client(config.redis_url, client_name("collector", config.region))
                collector = Collector(config, client, clickhouse=self.admin if i == 0 else None)
                self.collectors.append(collector)
                name = "collector" if i == 0 else f"collector {config.region}"
                self.metrics.include(collector.metrics)
                self.supervisor.spawn(name, collector.run, restart=False)
        if self.auth.allow_anonymous:
            log.warning(
                f"{MESHSCOPE_ALLOW_ANONYMOUS} is on: anyone who reaches the dashboard may read the map and run SQL"
                " without signing in",
                extra={"url": self.url},
            )
        users = [p.name for p in self.auth.authenticator.by_name.values() if not p.roles.isdisjoint(DASHBOARD_ROLES)]
        if not users and not self.auth.allow_anonymous:
            log.warning(
                "no principal in the principals file has the viewer or sql role: nobody can sign in",
                extra={"auth_file": self.config.auth_file},
            )
        if self.announce:
            log.info("dashboard listening", extra={"url": self.url})
            if self.sign_in_url is not None:  # the URL holds the token: on the terminal, never in a log
                log.info("to sign in, open the sign-in URL printed on the terminal", extra={"url": f"{self.url}/login"})
            else:
                log.info("sign in with a principal's token", extra={"url": f"{self.url}/login"})

    async def _stop(self) -> None:
        for collector in self.collectors:
            collector.stop()
        for i, collector in enumerate(self.collectors):
            await self.supervisor.join("collector" if i == 0 else f"collector {collector.config.region}", 10)
            if collector.redis is not self.redis:
                await collector.redis.aclose()
        await self.supervisor.stop()

    def health(self) -> dict[str, Any]:
        """ok, or degraded with why: the live feed and the stores' reader, the in-process collectors, their
        supervision (``/healthz`` adds every source of the map that is stale or unknown, stores among them)."""
        reasons = self.supervisor.problems() + self.hub.problems()
        out: dict[str, Any] = {}
        for collector in self.collectors:
            health = collector.health()
            who = f"collector {health['region']}" if health["region"] else "collector"
            reasons += [f"{who}: {reason}" for reason in health["reasons"]]
            if len(self.collectors) == 1:
                out["collector"] = health["status"]
            else:
                out.setdefault("collectors", {})[health["region"]] = health["status"]
        return {"status": "degraded" if reasons else "ok", "reasons": reasons, **out}

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await asyncio.to_thread(self.store.close)
        await self.regions.close()
        await self.redis.aclose()

    async def serve(self) -> None:
        try:
            await self.server.server.serve(sockets=[self.server.sock])
        finally:
            await asyncio.to_thread(self.store.close)
            await self.regions.close()
            await self.redis.aclose()
