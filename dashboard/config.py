"""The dashboard's configuration: one frozen dataclass built by ``DashboardConfig.from_env``.

Security settings read the same variables as the relays where they mean the same thing
(``MESHSCOPE_AUTH_FILE``, ``MESHSCOPE_ALLOW_ANONYMOUS``, ``MESHSCOPE_TLS_*``); the names are
defined here again, with the same values, so the dashboard does not import the relay.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from collector.config import CollectorConfig
from dashboard.origin import default_hosts, host_pattern
from dashboard.session import MIN_SECRET_BYTES, SESSION_TTL_S
from meshcore import settings as s
from meshcore.tls import TlsFiles
from meshcore.viewstate import Thresholds

MESHSCOPE_DASHBOARD_HOST = "MESHSCOPE_DASHBOARD_HOST"
"""Interface the dashboard listens on (default 127.0.0.1)."""
MESHSCOPE_DASHBOARD_PORT = "MESHSCOPE_DASHBOARD_PORT"
"""Port of the dashboard (default 8080)."""
MESHSCOPE_HEALTH_ERROR_AMBER_PCT = "MESHSCOPE_HEALTH_ERROR_AMBER_PCT"
"""Share of an edge's events lost (in %) at which it is degraded (default 1); refusals do not count."""
MESHSCOPE_HEALTH_ERROR_RED_PCT = "MESHSCOPE_HEALTH_ERROR_RED_PCT"
"""Share of an edge's events lost (in %) at which it is failing (default 5)."""
MESHSCOPE_HEALTH_LAG_AMBER_MS = "MESHSCOPE_HEALTH_LAG_AMBER_MS"
"""p99 end-to-end lag at which an edge is degraded (default 1000 ms)."""
MESHSCOPE_HEALTH_LAG_RED_MS = "MESHSCOPE_HEALTH_LAG_RED_MS"
"""p99 end-to-end lag at which an edge is failing (default 3000 ms)."""
MESHSCOPE_SQL_MAX_EXECUTION_S = "MESHSCOPE_SQL_MAX_EXECUTION_S"
"""Longest a query of /api/sql may run (default 10 s); each of its two checks runs under the same limit."""
MESHSCOPE_SQL_MAX_ROWS = "MESHSCOPE_SQL_MAX_ROWS"
"""Most rows /api/sql returns (more are cut, and the answer says so)."""
MESHSCOPE_SQL_MAX_MEMORY_BYTES = "MESHSCOPE_SQL_MAX_MEMORY_BYTES"
"""Most memory one query of /api/sql (or one of its checks) may use (default 1 GiB)."""
MESHSCOPE_SQL_MAX_QUERY_BYTES = "MESHSCOPE_SQL_MAX_QUERY_BYTES"
"""Largest /api/sql request body (default 64 KiB; 413 above); ClickHouse's max_query_size is this plus 4 KiB."""
MESHSCOPE_SQL_CONCURRENCY = "MESHSCOPE_SQL_CONCURRENCY"
"""Queries of /api/sql that run at once, each on its own worker thread and ClickHouse client (default 2)."""
MESHSCOPE_SQL_QUEUE = "MESHSCOPE_SQL_QUEUE"
"""Queries of /api/sql that may wait for a worker (default 8); more are answered 429 with Retry-After."""
MESHSCOPE_SQL_MAX_AST_DEPTH = "MESHSCOPE_SQL_MAX_AST_DEPTH"
"""Deepest syntax tree (and bracket nesting) of an /api/sql query (default 256)."""
MESHSCOPE_SQL_MAX_AST_ELEMENTS = "MESHSCOPE_SQL_MAX_AST_ELEMENTS"
"""Most syntax-tree nodes of an /api/sql query (default 10000)."""
MESHSCOPE_SQL_MAX_EXPANDED_AST_ELEMENTS = "MESHSCOPE_SQL_MAX_EXPANDED_AST_ELEMENTS"
"""Most syntax-tree nodes after aliases and * are expanded (default 50000)."""
MESHSCOPE_BODY_TIMEOUT_S = "MESHSCOPE_BODY_TIMEOUT_S"
"""Seconds a request body (SQL, the sign-in form) may take to arrive (default 10; 408 after)."""
MESHSCOPE_DASHBOARD_CACHE_S = "MESHSCOPE_DASHBOARD_CACHE_S"
"""Seconds one computation of a map answer serves every viewer asking the same (default 2; 0: no cache)."""
MESHSCOPE_AUTH_FILE = "MESHSCOPE_AUTH_FILE"
"""TOML file of principals (token hashes, roles viewer/sql); unset: a token is made at start (see meshcore/auth.py)."""
MESHSCOPE_ALLOW_ANONYMOUS = "MESHSCOPE_ALLOW_ANONYMOUS"
"""``true`` lets requests without credentials in as viewer and sql (development only; logged, shown in /healthz)."""
MESHSCOPE_DASHBOARD_HOSTS = "MESHSCOPE_DASHBOARD_HOSTS"
"""Comma-separated Host names the dashboard answers (default localhost, 127.0.0.1, [::1] and the bind host)."""
MESHSCOPE_DASHBOARD_SECRET = "MESHSCOPE_DASHBOARD_SECRET"
"""Key (32+ characters) that signs session cookies; unset: random per process, so sessions end on restart."""


@dataclass(frozen=True)
class DashboardConfig:
    store: CollectorConfig = field(default_factory=CollectorConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    thresholds: Thresholds = field(default_factory=Thresholds)
    sql_max_execution_s: float = 10.0
    sql_max_rows: int = 10_000
    sql_max_memory_bytes: int = 1 << 30
    sql_max_query_bytes: int = 64 << 10
    sql_concurrency: int = 2
    sql_queue: int = 8
    sql_max_ast_depth: int = 256
    sql_max_ast_elements: int = 10_000
    sql_max_expanded_ast_elements: int = 50_000
    body_timeout_s: float = 10.0
    cache_s: float = 2.0
    auth_file: str | None = None
    allow_anonymous: bool = False
    hosts: tuple[str, ...] = ()  # empty: default_hosts(host)
    session_secret: str | None = field(default=None, repr=False)
    session_ttl_s: float = SESSION_TTL_S
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "hosts", tuple(dict.fromkeys(host_pattern(h) for h in self.hosts)))
        except ValueError as exc:
            raise s.SettingError(f"{MESHSCOPE_DASHBOARD_HOSTS}: {exc}") from None
        if self.session_secret is not None and len(self.session_secret.encode()) < MIN_SECRET_BYTES:
            raise s.SettingError(
                f"{MESHSCOPE_DASHBOARD_SECRET} must be at least {MIN_SECRET_BYTES} characters"
                " (e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))')"
            )

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        """The Host names answered: the configured ones, else the loopback names and the bind host."""
        return self.hosts or default_hosts(self.host)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> DashboardConfig:
        env = os.environ if environ is None else environ
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        t = Thresholds()
        config = cls(
            store=CollectorConfig.from_env(env),
            host=s.get_str(env, MESHSCOPE_DASHBOARD_HOST, d["host"]),
            port=s.get_int(env, MESHSCOPE_DASHBOARD_PORT, d["port"]),
            thresholds=Thresholds(
                s.get_float(env, MESHSCOPE_HEALTH_ERROR_AMBER_PCT, t.loss_degraded_pct),
                s.get_float(env, MESHSCOPE_HEALTH_ERROR_RED_PCT, t.loss_failing_pct),
                s.get_float(env, MESHSCOPE_HEALTH_LAG_AMBER_MS, t.lag_degraded_ms),
                s.get_float(env, MESHSCOPE_HEALTH_LAG_RED_MS, t.lag_failing_ms),
            ),
            sql_max_execution_s=s.get_float(env, MESHSCOPE_SQL_MAX_EXECUTION_S, d["sql_max_execution_s"], 0.1),
            sql_max_rows=s.get_int(env, MESHSCOPE_SQL_MAX_ROWS, d["sql_max_rows"], 1),
            sql_max_memory_bytes=s.get_int(env, MESHSCOPE_SQL_MAX_MEMORY_BYTES, d["sql_max_memory_bytes"], 1 << 20),
            sql_max_query_bytes=s.get_int(env, MESHSCOPE_SQL_MAX_QUERY_BYTES, d["sql_max_query_bytes"], 64),
            sql_concurrency=s.get_int(env, MESHSCOPE_SQL_CONCURRENCY, d["sql_concurrency"], 1),
            sql_queue=s.get_int(env, MESHSCOPE_SQL_QUEUE, d["sql_queue"], 0),
            sql_max_ast_depth=s.get_int(env, MESHSCOPE_SQL_MAX_AST_DEPTH, d["sql_max_ast_depth"], 8),
            sql_max_ast_elements=s.get_int(env, MESHSCOPE_SQL_MAX_AST_ELEMENTS, d["sql_max_ast_elements"], 16),
            sql_max_expanded_ast_elements=s.get_int(
                env, MESHSCOPE_SQL_MAX_EXPANDED_AST_ELEMENTS, d["sql_max_expanded_ast_elements"], 16
            ),
            body_timeout_s=s.get_float(env, MESHSCOPE_BODY_TIMEOUT_S, d["body_timeout_s"], 0.01),
            cache_s=s.get_float(env, MESHSCOPE_DASHBOARD_CACHE_S, d["cache_s"], 0.0),
            auth_file=env.get(MESHSCOPE_AUTH_FILE) or None,
            allow_anonymous=s.get_bool(env, MESHSCOPE_ALLOW_ANONYMOUS, False),
            hosts=s.get_list(env, MESHSCOPE_DASHBOARD_HOSTS),
            session_secret=env.get(MESHSCOPE_DASHBOARD_SECRET) or None,
            tls=TlsFiles.from_env(env),
        )
        return replace(config, **overrides)
