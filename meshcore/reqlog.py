"""One JSON log line per request that failed or was slow, with its correlation id and latency.

An ASGI middleware for the relay's and the dashboard's apps. Each request
(and each WebSocket, for its whole life) runs with a correlation id in
:data:`meshcore.logs.CORRELATION`, so every line logged while serving it
carries the id too: the trace id of the request's ``traceparent`` header when
it has a valid one (the same id as the producer's spans and the flow
records), else a new random id. A request answered with 4xx/5xx, or slower
than ``slow_ms``, is logged with method, path, status and ``latency_ms``; a
plain success is not, since the relay answers thousands a second and its flow
records and metrics already count them.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshcore.logs import CORRELATION

_TRACEPARENT = re.compile(rb"[ \t]*[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = b"0" * 32


def correlation_of(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """``trace_id`` and ``correlation_id`` from a valid ``traceparent`` header, else a new ``correlation_id``."""
    for name, value in headers:
        if name == b"traceparent":
            m = _TRACEPARENT.match(value)
            if m is not None and m.group(1) != _ZERO_TRACE:
                trace_id = m.group(1).decode()
                return {"correlation_id": trace_id, "trace_id": trace_id}
            break
    return {"correlation_id": _ids.take()}


class _Ids:
    """Random 16-hex-digit ids cut from a pool of OS randomness: one system call per 512 requests, not each."""

    def __init__(self) -> None:
        self._pool = ""
        self._at = 0

    def take(self) -> str:
        if self._at + 16 > len(self._pool):
            self._pool, self._at = os.urandom(4096).hex(), 0
        out = self._pool[self._at : self._at + 16]
        self._at += 16
        return out


_ids = _Ids()


class RequestLog:
    """ASGI middleware: the correlation id around every request, and a line for each failed or slow one."""

    def __init__(self, app: ASGIApp, logger: str, slow_ms: float = 1000.0) -> None:
        self.app = app
        self.log = logging.getLogger(logger)
        self.slow_ms = slow_ms

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        correlation = correlation_of(scope.get("headers") or [])
        token = CORRELATION.set(correlation)
        started = time.perf_counter()
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            # a WebSocket refused before it is accepted answers with websocket.http.response.start
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            status = 500
            raise
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            CORRELATION.reset(token)
            if status >= 400 or (kind == "http" and latency_ms >= self.slow_ms):
                fields: dict[str, Any] = {
                    "method": scope.get("method", "WEBSOCKET"),
                    "path": scope.get("path", ""),
                    "status": status,
                    "latency_ms": round(latency_ms, 3),
                    **correlation,
                }
                level = logging.WARNING if status >= 500 or status == 0 else logging.INFO
                self.log.log(level, "request failed" if status >= 400 else "slow request", extra=fields)
