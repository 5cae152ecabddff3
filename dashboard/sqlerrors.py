"""What ``POST /api/sql`` refuses, each error with the HTTP status it maps to (``dashboard.sqlguard``)."""

from __future__ import annotations


class SqlRefused(ValueError):
    """The statement is refused before it ran; the message says why, for the user."""

    status = 403
    retry_after_s: int | None = None


class SqlTooLarge(SqlRefused):
    """The request body (or query) is over ``sql_max_query_bytes``."""

    status = 413


class SqlBusy(SqlRefused):
    """Every SQL worker is running and the wait queue is full."""

    status = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s
