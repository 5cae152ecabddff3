"""``meshscope sql``: a query through the client factory, or through a running dashboard.

Embedded ClickHouse can be open in one process only; while ``meshscope up``
holds it, the query goes to that dashboard's ``/api/sql`` instead (read-only
there, with its limits). The dashboard needs a principal with the sql role: the
client sends the bearer token in ``MESHSCOPE_TOKEN_FILE`` (a file holding one
token) or ``MESHSCOPE_TOKEN``, the names every meshscope client reads.
``meshscope up`` leaves ``dashboard.json`` in its data directory (the
dashboard's URL, its CA and the ops token's file), so ``meshscope sql`` finds
the running dashboard of the data directory it is given (``--data-dir``, else
``MESHSCOPE_DATA_DIR``, else ``./.meshscope``) without any other setting.

A query only reads: ``meshscope sql`` never creates a store. An embedded
store that is not there (a mistyped directory, or one no collector wrote) is
an error that names the directory, not a new empty store.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError, ProgrammingError

from collector.clickhouse import is_embedded, make_client
from collector.config import CollectorConfig
from collector.errors import ClickHouseUnavailable, QueryError


class SqlFailed(Exception):
    """The query could not be run; the message says why."""


class SqlUnreachable(SqlFailed):
    """The dashboard did not answer at all."""


DEFAULT_DASHBOARD = "http://127.0.0.1:8080"
MESHSCOPE_TOKEN_FILE = "MESHSCOPE_TOKEN_FILE"
"""A file holding one bearer token, which clients send (wins over ``MESHSCOPE_TOKEN``)."""
MESHSCOPE_TOKEN = "MESHSCOPE_TOKEN"
"""A bearer token clients send, when ``MESHSCOPE_TOKEN_FILE`` is unset."""


def client_token(env: Mapping[str, str]) -> str | None:
    """The bearer token a client sends: the contents of ``MESHSCOPE_TOKEN_FILE``, else ``MESHSCOPE_TOKEN``."""
    path = env.get(MESHSCOPE_TOKEN_FILE)
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError as exc:
            raise SqlFailed(f"cannot read the token file {path} ({MESHSCOPE_TOKEN_FILE}): {exc.strerror}") from None
    return env.get(MESHSCOPE_TOKEN) or None


UP_FILE = "dashboard.json"


def running_dashboard(data_dir: str) -> dict[str, Any] | None:
    """What ``meshscope up`` wrote about its dashboard in ``data_dir``, if it did."""
    try:
        with open(os.path.join(data_dir, UP_FILE), encoding="utf-8") as fh:
            found = json.load(fh)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("url"), str) else None


def via_dashboard(
    url: str, query: str, token: str | None = None, cafile: str | None = None
) -> tuple[list[str], list[list[Any]]]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url.rstrip("/") + "/api/sql", data=json.dumps({"sql": query}).encode(), headers=headers, method="POST"
    )
    try:
        context = ssl.create_default_context(cafile=cafile) if cafile else None
        with urllib.request.urlopen(request, timeout=60, context=context) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        if exc.code == 401:
            message += (
                f" (the dashboard wants a token with the sql role: set {MESHSCOPE_TOKEN_FILE} or {MESHSCOPE_TOKEN})"
            )
        raise SqlFailed(message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise SqlUnreachable(f"cannot reach the dashboard at {url}: {exc}") from None
    return list(body["columns"]), list(body["rows"])


def require_store(url: str, data_dir: str) -> None:
    """Raise SqlFailed unless the embedded store of ``url`` exists (reading must not create one)."""
    path = url[len("chdb://") :]
    if path.startswith(":memory:") or os.path.isdir(os.path.join(path, "metadata")):
        return
    raise SqlFailed(
        f"no flow history in {os.path.abspath(data_dir)}: {path} holds no ClickHouse store. Name the data "
        "directory of meshscope up (--data-dir DIR or MESHSCOPE_DATA_DIR) or a ClickHouse server (CLICKHOUSE_URL)"
    )


def run_sql(
    config: CollectorConfig, query: str, via: str | None = None, token: str | None = None, cafile: str | None = None
) -> tuple[list[str], list[list[Any]]]:
    """Run ``query``: through the dashboard at ``via`` (with ``token``, else :func:`client_token`), or directly.

    ``cafile`` is the CA that signed the dashboard's certificate, when the system does not trust it.
    """
    if via:
        return via_dashboard(via, query, token or client_token(os.environ), cafile)
    up = running_dashboard(config.data_dir) if is_embedded(config.clickhouse_url) else None
    if up is not None:
        # a `meshscope up` in this data directory holds the embedded engine: ask its dashboard
        token = token or client_token(os.environ)
        if token is None and up.get("token_file"):
            token = client_token({MESHSCOPE_TOKEN_FILE: str(up["token_file"])})
        try:
            return via_dashboard(str(up["url"]), query, token, up.get("ca"))
        except SqlUnreachable:
            pass  # it has stopped: open the engine ourselves
    if is_embedded(config.clickhouse_url):
        require_store(config.clickhouse_url, config.data_dir)
    try:
        client = make_client(config.clickhouse_url, database=config.database)
    except (ProgrammingError, ClickHouseUnavailable, QueryError) as exc:
        if "UNKNOWN_DATABASE" in str(exc) or "does not exist" in str(exc):
            raise SqlFailed(
                f"the ClickHouse store in {config.data_dir} has no database {config.database!r}: "
                "no collector has written flow history there"
            ) from None
        if is_embedded(config.clickhouse_url):
            raise SqlFailed(f"{exc} (is another process, such as meshscope up, using {config.data_dir}?)") from None
        raise SqlFailed(str(exc)) from None
    try:
        result = client.query(query, settings={"readonly": 2})
    except ClickHouseError as exc:
        raise SqlFailed(str(exc)) from None
    finally:
        client.close()
    return list(result.column_names), [list(r) for r in result.result_rows]
