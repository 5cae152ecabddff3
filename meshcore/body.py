"""Reading a request body with a size limit and a time limit, before it is buffered whole.

A declared ``Content-Length`` over the limit is refused before a byte is read; a body
that grows past the limit is refused at that chunk; a body that trickles in (a
slow-loris client) is refused when ``timeout_s`` has passed, so it never holds a
request, and its memory, for ever.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from meshcore.settings import whole_number


class BodyTooLarge(Exception):
    """The body is (or says it is) over the limit: 413."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the request body is over {limit} bytes")
        self.size = size
        self.limit = limit


class BodyTimeout(Exception):
    """The body did not arrive in time: 408."""


async def read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    declared = whole_number(request.headers.get("content-length", ""), 0, 1 << 62)
    if declared is not None and declared > limit:
        raise BodyTooLarge(declared, limit)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge(size, limit)
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeout(f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)
