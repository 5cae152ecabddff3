"""The one ClickHouse client factory (server or embedded) and the schema migrator.

``clickhouse://user:pass@host:8123/db`` (``https://`` or ``clickhouses://`` for
TLS) talks to a server; ``chdb://PATH`` or nothing configured runs ClickHouse
in-process through clickhouse-connect's chdb backend. The same SQL runs on
both. chdb allows one data path per process, so the collector and dashboard
of ``meshscope up`` share one process and one path.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from urllib.parse import urlparse, urlunparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError

from collector.errors import ClickHouseUnavailable, QueryError
from collector.schema import SchemaOptions, migrations, migrations_table

log = logging.getLogger(__name__)


def resolve_url(url: str | None, data_dir: str) -> str:
    """The effective URL: nothing configured means embedded ClickHouse under ``data_dir``."""
    if not url:
        return f"chdb://{os.path.abspath(os.path.join(data_dir, 'clickhouse'))}"
    return url


def is_embedded(url: str) -> bool:
    return url.startswith("chdb:")


def make_client(url: str, settings: dict[str, Any] | None = None, database: str | None = None) -> Client:
    """A clickhouse-connect client for ``url``; raises ClickHouseUnavailable when it cannot connect."""
    try:
        if is_embedded(url):
            path = url[len("chdb://") :]
            if path and not path.startswith(":memory:"):
                os.makedirs(path, exist_ok=True)
            return clickhouse_connect.get_client(dsn=url, settings=settings or {}, database=database)
        parsed = urlparse(url)
        scheme = {"clickhouse": "http", "clickhouses": "https"}.get(parsed.scheme, parsed.scheme)
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported ClickHouse URL scheme {parsed.scheme!r}")
        dsn = urlunparse(parsed._replace(scheme=scheme, path=""))
        return clickhouse_connect.get_client(dsn=dsn, settings=settings or {}, connect_timeout=5, database=database)
    except (OperationalError, OSError) as exc:
        raise ClickHouseUnavailable(f"cannot connect to ClickHouse at {redact(url)}: {exc}") from exc
    except ClickHouseError as exc:
        raise QueryError(str(exc)) from exc


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{parsed.hostname}:{parsed.port}"))
    return url


def command(client: Client, sql: str, settings: dict[str, Any] | None = None) -> Any:
    try:
        return client.command(sql, settings=settings)
    except OperationalError as exc:
        raise ClickHouseUnavailable(str(exc)) from exc
    except DatabaseError as exc:
        raise QueryError(str(exc)) from exc


def migrate(client: Client, opts: SchemaOptions) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now."""
    on_cluster = f" ON CLUSTER `{opts.cluster}`" if opts.cluster else ""
    command(client, f"CREATE DATABASE IF NOT EXISTS `{opts.database}`{on_cluster}")
    command(client, migrations_table(opts))
    try:
        done = {row[0] for row in client.query(f"SELECT version FROM `{opts.database}`.schema_migrations").result_rows}
    except OperationalError as exc:
        raise ClickHouseUnavailable(str(exc)) from exc
    applied = []
    for migration in migrations(opts):
        if migration.version in done:
            continue
        for statement in migration.statements:
            command(client, statement)
        try:
            client.insert(
                f"`{opts.database}`.schema_migrations",
                [[migration.version, migration.name]],
                column_names=["version", "name"],
            )
        except OperationalError as exc:
            raise ClickHouseUnavailable(str(exc)) from exc
        log.info("schema migration applied", extra={"version": migration.version, "migration": migration.name})
        applied.append(migration.version)
    return applied
