"""The collector's exception tree.

    CollectorError
    ├── ClickHouseUnavailable   the server (or embedded engine) did not answer; retry later
    ├── QueryError              ClickHouse refused a statement; its own text is kept
    └── StreamUnavailable       Redis refused or dropped us (the relay's class, re-exported)

Exceptions from clickhouse_connect and redis are translated where those
libraries are called, never deeper.
"""

from __future__ import annotations

from meshcore.errors import StreamUnavailable


class CollectorError(Exception):
    """Root of every error the collector raises on purpose."""


class ClickHouseUnavailable(CollectorError):
    """ClickHouse could not be reached; nothing was written."""


class QueryError(CollectorError):
    """ClickHouse refused a statement; ``str()`` is ClickHouse's own message."""


__all__ = ["ClickHouseUnavailable", "CollectorError", "QueryError", "StreamUnavailable"]
