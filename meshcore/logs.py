"""JSON log lines that carry the service, region, a correlation id and trace id when known, and never a credential.

Every line is one JSON object. What is being served when a line is logged (an
HTTP request, a WebSocket: ``meshcore.reqlog``) sets :data:`CORRELATION`; the
record factory installed by :func:`setup` copies it onto every record made
meanwhile, so a line logged deep inside a handler still names its request.
Every line, whoever logged it (uvicorn's WebSocket lines carry the query string,
where browsers put ``?token=``), is passed through ``meshcore.redact`` last.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import orjson

from meshcore.redact import redact

CORRELATION: ContextVar[dict[str, str] | None] = ContextVar("meshscope_correlation", default=None)
"""``correlation_id`` (and ``trace_id`` when known) of what this task serves now."""

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, **static: str):
        super().__init__()
        self.static = static

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self.static,
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(out, default=str).decode())


def _with_correlation(factory: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        correlation = CORRELATION.get()
        if correlation:
            for key, value in correlation.items():
                setattr(record, key, value)  # ``extra`` set after this, and wins
        return record

    make.meshscope = True  # type: ignore[attr-defined]
    return make


def setup(level: str = "INFO", **static: str) -> None:
    """Send every log line to stderr as JSON, tagged with ``static`` fields and the current correlation id."""
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "meshscope", False):
        logging.setLogRecordFactory(_with_correlation(factory))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(**static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
