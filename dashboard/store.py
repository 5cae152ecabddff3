"""The dashboard's ClickHouse access: queries run off the event loop, errors translated once, here.

Two ways in. ``FlowStore.query`` serves the dashboard's own queries on the
default executor. ``SqlLane`` serves the users' SQL on threads of its own:
a user's query may run for the whole ``max_execution_time``, and on shared
threads a few of them would starve the API, the live feed and the collector
running in the same process. Each lane thread opens its own ClickHouse client
(with embedded chdb every client is its own engine handle, and calls on one
handle are serialized), so user queries never wait on the dashboard's client
either. The lane admits ``workers + queue`` queries at a time and refuses the
next one at once (``SqlBusy``) instead of letting waiters pile up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError, StreamFailureError

from collector.errors import ClickHouseUnavailable, QueryError
from dashboard.sqlerrors import SqlBusy

T = TypeVar("T")


@dataclass
class Result:
    columns: list[str]
    rows: list[list[Any]]
    elapsed_ms: float
    rows_read: int


def run_query(
    client: Client, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
) -> Result:
    """Run one query on the calling thread; clickhouse_connect's errors become ours."""
    started = time.perf_counter()
    try:
        result = client.query(sql, parameters=parameters, settings=settings)
    except StreamFailureError as exc:  # ClickHouse failed the query after it began to answer
        raise QueryError(str(exc)) from exc
    except OperationalError as exc:
        raise ClickHouseUnavailable(str(exc)) from exc
    except DatabaseError as exc:
        raise QueryError(str(exc)) from exc
    except Error as exc:  # the driver could not read what came back
        raise QueryError(f"Code: 0. DB::Exception: the result could not be read: {type(exc).__name__}") from exc
    elapsed = (time.perf_counter() - started) * 1000
    read = int((result.summary or {}).get("read_rows", 0) or 0)
    return Result(list(result.column_names), [list(r) for r in result.result_rows], elapsed, read)


class FlowStore:
    """The dashboard's own queries; ``lane`` serves user SQL once ``dashboard.sqlrun`` has made it."""

    def __init__(self, client: Client, lane: SqlLane | None = None):
        self.client = client
        self.lane = lane
        self.queries = 0
        """Queries run for the dashboard itself (not user SQL): what the answer cache saves."""

    async def query(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> Result:
        self.queries += 1
        return await asyncio.to_thread(run_query, self.client, sql, parameters, settings)

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[list[Any]]:
        return (await self.query(sql, parameters)).rows

    def close(self) -> None:
        """Stop the SQL lane (waiting for the queries it runs) and close its clients."""
        if self.lane is not None:
            self.lane.close()


class SqlLane:
    """User SQL's own threads: ``workers`` run, ``queue`` wait, the next is refused with SqlBusy."""

    def __init__(self, connect: Callable[[], Client], workers: int, queue: int, retry_after_s: int):
        self.capacity = workers + queue
        self.retry_after_s = retry_after_s
        self._connect = connect
        self._executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="meshscope-sql")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._admitted = 0
        self._clients: list[Client] = []

    @property
    def admitted(self) -> int:
        """Queries running or waiting now."""
        return self._admitted

    async def run(self, job: Callable[[Client], T]) -> T:
        """Run ``job(client)`` on a lane thread with that thread's client; SqlBusy when the lane is full."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise SqlBusy(
                    f"{self.capacity} SQL queries are already running or waiting; try again shortly",
                    self.retry_after_s,
                )
            self._admitted += 1
        try:
            future = self._executor.submit(self._call, job)
        except RuntimeError as exc:  # closed
            self._release(None)
            raise ClickHouseUnavailable("the SQL workers are shut down") from exc
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: concurrent.futures.Future[Any] | None) -> None:
        with self._lock:
            self._admitted -= 1

    def _call(self, job: Callable[[Client], T]) -> T:
        client: Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._connect()  # translates its own errors (collector.clickhouse.make_client)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return job(client)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
