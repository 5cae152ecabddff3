"""``meshscope sql``: a query through the client factory, or through a running dashboard.

Embedded ClickHouse can be open in one process only; while ``meshscope up``
holds it, the query goes to that dashboard's ``/api/sql`` instead (read-only
there, with its limits).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError, ProgrammingError

from collector.clickhouse import is_embedded, make_client
from collector.config import CollectorConfig
from collector.errors import ClickHouseUnavailable, QueryError


class SqlFailed(Exception):
    """The query could not be run; the message says why."""


DEFAULT_DASHBOARD = "http://127.0.0.1:8080"


def via_dashboard(url: str, query: str) -> tuple[list[str], list[list[Any]]]:
    request = urllib.request.Request(
        url.rstrip("/") + "/api/sql",
        data=json.dumps({"sql": query}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", str(exc))
        except ValueError:
            message = str(exc)
        raise SqlFailed(message) from None
    except (urllib.error.URLError, OSError) as exc:
        raise SqlFailed(f"cannot reach the dashboard at {url}: {exc}") from None
    return list(body["columns"]), list(body["rows"])


def run_sql(config: CollectorConfig, query: str, via: str | None = None) -> tuple[list[str], list[list[Any]]]:
    if via:
        return via_dashboard(via, query)
    try:
        client = make_client(config.clickhouse_url, database=config.database)
    except ProgrammingError as exc:
        if is_embedded(config.clickhouse_url):
            # the embedded engine is held by a running `meshscope up`: ask its dashboard
            try:
                return via_dashboard(DEFAULT_DASHBOARD, query)
            except SqlFailed as fallback:
                raise SqlFailed(f"{exc}; and through the dashboard: {fallback}") from None
        raise SqlFailed(str(exc)) from None
    except (ClickHouseUnavailable, QueryError) as exc:
        raise SqlFailed(str(exc)) from None
    try:
        result = client.query(query, settings={"readonly": 2})
    except ClickHouseError as exc:
        raise SqlFailed(str(exc)) from None
    finally:
        client.close()
    return list(result.column_names), [list(r) for r in result.result_rows]
