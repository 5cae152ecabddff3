"""Running a user's SQL for ``POST /api/sql``: the guard's checks, then the query, on the SQL lane.

The I/O half of ``dashboard.sqlguard``. One request is one job on one lane
thread (``dashboard.store.SqlLane``), with that thread's ClickHouse client:

1. ``check_statement``: tokenizer and grammar, in Python;
2. ``EXPLAIN AST <statement>``: ClickHouse parses, evaluates nothing; ``check_ast``;
3. ``EXPLAIN QUERY TREE <select>`` (for SELECT, WITH and EXPLAIN): analysis,
   which constant-folds, so it runs only after step 2 allowed every function;
   ``check_query_tree``;
4. the statement itself.

Every statement sent to ClickHouse, the checks included, carries the same
limits (``limits``), with ``readonly = 1`` last. ClickHouse's errors come back
through ``sanitize_error``: READONLY and ACCESS_DENIED as SqlRefused (403),
the rest as QueryError (400).
"""

from __future__ import annotations

import math
from typing import Any

from clickhouse_connect.driver.client import Client

from collector.clickhouse import make_client
from collector.errors import ClickHouseUnavailable, QueryError
from dashboard.config import DashboardConfig
from dashboard.sqlerrors import SqlRefused, SqlTooLarge
from dashboard.sqlguard import Statement, check_ast, check_query_tree, check_statement, sanitize_error
from dashboard.store import FlowStore, Result, SqlLane, run_query

QUERY_SIZE_HEADROOM = 4096
"""ClickHouse's max_query_size is the body limit plus this: room for ``EXPLAIN QUERY TREE`` and the SETTINGS clause."""
REFUSALS = ("READONLY", "ACCESS_DENIED")


def limits(config: DashboardConfig, result: bool = False) -> dict[str, Any]:
    """The settings every statement of a user request runs with; ``result`` adds the row cap of the query itself.

    The checks run without the row cap: a cut EXPLAIN dump would hide the rest of the query from them.
    """
    settings: dict[str, Any] = {
        "max_execution_time": config.sql_max_execution_s,
        "max_memory_usage": config.sql_max_memory_bytes,
        "max_query_size": config.sql_max_query_bytes + QUERY_SIZE_HEADROOM,
        "max_ast_depth": config.sql_max_ast_depth,
        "max_ast_elements": config.sql_max_ast_elements,
        "max_expanded_ast_elements": config.sql_max_expanded_ast_elements,
    }
    if result:
        # ClickHouse's own LIMIT on the outermost result: it stops the query there (embedded
        # ClickHouse ignores max_result_rows), and one row more says the answer was cut
        settings["limit"] = config.sql_max_rows + 1
    settings["readonly"] = 1  # last: it forbids changing any setting after it
    return settings


def guard(client: Client, sql: str, config: DashboardConfig) -> Statement:
    """Steps 1 to 3 on the calling thread: the statement if it may run; SqlRefused or QueryError if not."""
    db = config.store.database
    statement = check_statement(sql, db, config.sql_max_ast_depth)
    checks = limits(config)
    ast = run_query(client, f"EXPLAIN AST {statement.text}", settings=checks)
    check_ast((str(row[0]) for row in ast.rows), statement, db)
    if statement.analysed is not None:
        tree = run_query(client, f"EXPLAIN QUERY TREE {statement.analysed}", settings=checks)
        check_query_tree((str(row[0]) for row in tree.rows), db)
    return statement


def answer(client: Client, sql: str, config: DashboardConfig) -> tuple[Result, bool]:
    """One whole request on the calling thread: (result, truncated)."""
    try:
        statement = guard(client, sql, config)
        result = run_query(client, statement.text, settings=limits(config, result=True))
    except QueryError as exc:
        message = sanitize_error(str(exc))
        if message.split(" ", 1)[0] in REFUSALS:
            raise SqlRefused(f"refused by ClickHouse: {message}") from exc
        raise QueryError(message) from exc
    except ClickHouseUnavailable as exc:  # its text may name the server or the data path
        raise ClickHouseUnavailable("ClickHouse did not answer the query") from exc
    truncated = len(result.rows) > config.sql_max_rows
    if truncated:
        result.rows = result.rows[: config.sql_max_rows]
    return result, truncated


async def run_user_sql(store: FlowStore, sql: str, config: DashboardConfig) -> tuple[Result, bool]:
    """(result, truncated) off the event loop; raises SqlRefused (and its 413/429 kinds) or QueryError."""
    if len(sql.encode("utf-8", "replace")) > config.sql_max_query_bytes:
        raise SqlTooLarge(f"the query is over {config.sql_max_query_bytes} bytes")
    return await sql_lane(store, config).run(lambda client: answer(client, sql, config))


def sql_lane(store: FlowStore, config: DashboardConfig) -> SqlLane:
    """The store's SQL lane, made on first use (the dashboard's start-up hands the app only the store)."""
    if store.lane is None:
        url, database = config.store.clickhouse_url, config.store.database
        store.lane = SqlLane(
            lambda: make_client(url, database=database),
            workers=config.sql_concurrency,
            queue=config.sql_queue,
            retry_after_s=max(1, math.ceil(config.sql_max_execution_s)),
        )
    return store.lane
