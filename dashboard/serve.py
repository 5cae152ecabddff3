"""Running the dashboard as a process, optionally with the collector inside it.

Embedded ClickHouse (chdb) can be open in one process only, so with chdb the
collector runs in the dashboard's process (``meshscope up`` does this); with a
ClickHouse server they run apart.

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
from dashboard.session import SessionCodec
from dashboard.store import FlowStore
from meshcore.auth import Principal, load_principals, new_token
from meshcore.server import Server, redis_client
from meshcore.supervise import Supervisor
from meshcore.tls import server_context

LOCAL_PRINCIPAL = "local"
"""The principal of the token made at start when no principals file is configured."""
LOCAL_ROLES = frozenset(("viewer", "sql"))
"""Its roles: the map and SQL."""

log = logging.getLogger(__name__)


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
        self.redis = redis_client(config.store.redis_url)
        self.collector: Collector | None = None
        self.supervisor = Supervisor()
        """Runs the in-process collector: a crash is logged, counted and restarted, and /healthz says so."""
        admin = make_client(config.store.clickhouse_url)
        migrate(admin, config.store.schema)
        self.admin: Client = admin
        self.store = FlowStore(make_client(config.store.clickhouse_url, database=config.store.database))
        self.hub = LiveHub(self.redis, config.store.live_channel)
        self.cache: ResponseCache[bytes] = ResponseCache(config.cache_s)
        """Map answers, one computation per question per ``cache_s`` for every viewer."""
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

    async def _start(self) -> None:
        if self.with_collector:
            self.collector = Collector(self.config.store, self.redis, clickhouse=self.admin)
            self.supervisor.spawn("collector", self.collector.run, restart=False)
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
        if self.collector is not None:
            self.collector.stop()
            await self.supervisor.join("collector", 10)
        await self.supervisor.stop()

    def health(self) -> dict[str, Any]:
        """ok, or degraded with why: the live feed, the in-process collector and its supervision."""
        reasons = self.supervisor.problems() + self.hub.problems()
        out: dict[str, Any] = {}
        if self.collector is not None:
            collector = self.collector.health()
            reasons += [f"collector: {reason}" for reason in collector["reasons"]]
            out["collector"] = collector["status"]
        return {"status": "degraded" if reasons else "ok", "reasons": reasons, **out}

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
