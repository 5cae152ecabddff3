"""The dashboard's ClickHouse access: queries run in a worker thread, errors translated once."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from collector.errors import ClickHouseUnavailable, QueryError


@dataclass
class Result:
    columns: list[str]
    rows: list[list[Any]]
    elapsed_ms: float
    rows_read: int


class FlowStore:
    def __init__(self, client: Client):
        self.client = client

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Result:
        def run() -> Result:
            started = time.perf_counter()
            try:
                result = self.client.query(sql, parameters=parameters, settings=settings)
            except OperationalError as exc:
                raise ClickHouseUnavailable(str(exc)) from exc
            except DatabaseError as exc:
                raise QueryError(str(exc)) from exc
            elapsed = (time.perf_counter() - started) * 1000
            read = int((result.summary or {}).get("read_rows", 0) or 0)
            return Result(list(result.column_names), [list(r) for r in result.result_rows], elapsed, read)

        return await asyncio.to_thread(run)

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[list[Any]]:
        return (await self.query(sql, parameters)).rows
