"""Running a user's SQL: the statement check, ClickHouse's own parse, then the query under limits."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from typing import Any

from collector.errors import QueryError
from dashboard.config import DashboardConfig
from dashboard.sqlguard import SqlRefused, check_statement, check_tables, describe_target
from dashboard.store import FlowStore, Result

_INNER_QUERY = re.compile(r"\b(SELECT|WITH)\b", re.I)


def limits(config: DashboardConfig) -> dict[str, Any]:
    # readonly last: it forbids changing any setting after it
    return {
        "max_execution_time": config.sql_max_execution_s,
        "max_result_rows": config.sql_max_rows + 1,
        "result_overflow_mode": "break",
        "max_memory_usage": config.sql_max_memory_bytes,
        "readonly": 1,
    }


async def _refusing(call: Awaitable[Result]) -> Result:
    """ClickHouse's own read-only and access refusals become SqlRefused, with its text kept."""
    try:
        return await call
    except QueryError as exc:
        if any(code in str(exc) for code in ("(READONLY)", "(ACCESS_DENIED)")):
            raise SqlRefused(f"refused: read-only access only ({exc})") from exc
        raise


async def run_user_sql(store: FlowStore, sql: str, config: DashboardConfig) -> tuple[Result, bool]:
    """(result, truncated); raises SqlRefused, or QueryError with ClickHouse's text."""
    db = config.store.database
    statement = check_statement(sql, db)
    first = statement.split(None, 1)[0].upper()
    if first in ("SELECT", "WITH", "EXPLAIN"):
        inner = statement
        if first == "EXPLAIN":
            m = _INNER_QUERY.search(statement)
            if m is None:
                raise SqlRefused("EXPLAIN is allowed for SELECT queries only")
            inner = statement[m.start() :]
        tree = await _refusing(store.query(f"EXPLAIN QUERY TREE {inner}", settings={"readonly": 1}))
        check_tables((r[0] for r in tree.rows), db)
    elif first in ("DESCRIBE", "DESC"):
        target = describe_target(statement)
        if target is None:
            raise SqlRefused("DESCRIBE takes one table of the meshscope database")
        if "." in target and target.split(".", 1)[0] != db:
            raise SqlRefused(f"only the {db} database can be read")
    result = await _refusing(store.query(statement, settings=limits(config)))
    truncated = len(result.rows) > config.sql_max_rows
    if truncated:
        result.rows = result.rows[: config.sql_max_rows]
    return result, truncated
