"""Writes flow records to the Redis stream, many records per entry, each write exactly once.

A bounded in-memory queue, a worker that wakes at ``batch`` records or every
``flush_interval_s``, and backpressure when full: the relay refuses new
publishes (429) rather than lose records. A chunk taken from the queue is
frozen until it lands: it is written through the same idempotent commit
script as the relay's durable steps (with its own writer counter), so a write
whose reply was lost and is retried does not leave the records twice. While
Redis is unreachable the records stay queued and the worker retries with
backoff.

The stream is the region's telemetry buffer: records stay in it until a
collector has them in ClickHouse, however long the region is cut off from
it, up to ``maxlen`` entries. Past that the oldest entries are given up (the
stream is trimmed to nine tenths of the bound, so this happens now and then,
not on every write), and the records among them that no collector had
acknowledged are named by one ``drop``/``trimmed`` record (``on_trimmed``:
how many, and how old the oldest was), so a gap in the history is never
silent; a ``trimmed`` record given up in its turn is carried into the next
one, so the newest always counts everything lost. Entries every collector group has acknowledged are trimmed as before.

Records that must be durable before an event is acknowledged (publish,
deliver, drop at the edge) do not come through here: they are part of the
event's own commit. This sink carries the others (forwards, transit hops,
drops found later), and those of them still queued are lost if the process is
killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore.breaker import CircuitBreaker
from meshcore.flowrecord import DROP, TRIMMED, FlowRecord, loose_rows, pack
from meshcore.metrics import Registry
from router.committer import Committer, Ops

log = logging.getLogger(__name__)

TRIM_TO = 0.9
"""A full stream is trimmed to this share of its bound."""
TRIM_CHECK_S = 1.0
"""How often an idle sink checks the bound (a busy one checks after every write)."""

OnTrimmed = Callable[[int, int], None]
"""Told (records given up unread, µs timestamp of the oldest of them) when the bound forces a loss."""


def _given_up(fields: dict[Any, Any], written_us: int) -> tuple[int, int]:
    """(records, µs of the oldest) an entry stands for: an earlier ``trimmed`` record counts what it named."""
    rows = loose_rows(fields)
    if rows is None:
        return 1, written_us
    records, oldest = 0, written_us
    for row in rows:
        if isinstance(row, list) and len(row) > 15 and row[6] == DROP and row[12] == TRIMMED:
            named = row[15] if type(row[15]) is int and row[15] > 0 else 1
            records += named
            if type(row[0]) is int and type(row[11]) in (int, float):
                oldest = min(oldest, row[0] - int(row[11] * 1000))
        else:
            records += 1
    return records, oldest


def _id_pair(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class FlowSink:
    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        maxlen: int,
        queue_max: int,
        batch: int,
        flush_interval_s: float,
        metrics: Registry,
        writer: str = "flows",
        on_trimmed: OnTrimmed | None = None,
        home: str = "",
        cluster: bool = False,
    ):
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.queue_max = queue_max
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self.metrics = metrics
        self.on_trimmed = on_trimmed
        self.pending: list[FlowRecord] = []
        self.breaker = CircuitBreaker("flow-sink")
        self.writer = Committer(
            client,
            writer,
            self.breaker,
            lambda _err: metrics.inc("flow_write_errors_total"),
            home=home,
            cluster=cluster,
        )
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        metrics.describe("flow_records_written_total", "counter", "Flow records written to the stream")
        metrics.describe("flow_entries_trimmed_total", "counter", "Stream entries removed by trimming")
        metrics.describe(
            "flow_records_given_up_total", "counter", "Flow records trimmed before any collector acknowledged them"
        )
        metrics.describe("flow_write_errors_total", "counter", "Failed stream writes (records kept and retried)")
        metrics.describe("flow_queue_depth", "gauge", "Flow records waiting to be written")
        for counter in ("flow_records_written_total", "flow_entries_trimmed_total", "flow_write_errors_total"):
            metrics.zero(counter)

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.queue_max

    def add(self, record: FlowRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.batch:
            self._wake.set()

    async def wait_not_full(self, timeout_s: float) -> bool:
        """Wait until the queue has room; False on timeout."""
        if not self.full:
            return True
        self._drained.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout_s)
        except TimeoutError:
            return False
        return not self.full

    async def run(self) -> None:
        self._done.clear()
        next_trim = 0.0
        try:
            while True:
                if not self.pending:
                    if self._stopping:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                    self._wake.clear()
                    # records committed with their events reach the stream without this sink: bound it anyway
                    if not self.pending and time.monotonic() >= next_trim and self.breaker.healthy:
                        next_trim = time.monotonic() + TRIM_CHECK_S
                        with contextlib.suppress(RedisError):
                            await self._trim()
                    continue
                if len(self.pending) < self.batch and not self._stopping:
                    # let a batch fill for up to one interval
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                    self._wake.clear()
                await self._flush()
        finally:
            self._done.set()

    async def _flush(self) -> None:
        while self.pending:
            chunk_size = min(len(self.pending), self.batch * 20)
            chunk = self.pending[:chunk_size]  # frozen until it lands: a retry writes the same entries
            ops = Ops()
            for i in range(0, len(chunk), self.batch):
                ops.xadd(self.stream, pack(chunk[i : i + self.batch]))
            await self.writer.write(ops)
            del self.pending[:chunk_size]
            self.metrics.inc("flow_records_written_total", len(chunk))
            self.metrics.set("flow_queue_depth", len(self.pending))
            if not self.full:
                self._drained.set()
            try:
                await self._trim()
            except RedisError as exc:
                log.warning("cannot trim the flow stream", extra={"error": str(exc)[:200]})

    async def _trim(self) -> None:
        """Hold the stream to its bound; what goes unread is counted and named by a drop record."""
        length = int(await self.client.xlen(self.stream))
        if length <= self.maxlen:
            return
        excess = length - int(self.maxlen * TRIM_TO)
        oldest: Any = await self.client.xrange(self.stream, "-", "+", count=excess + 1)
        if len(oldest) <= excess:
            return
        going, keep_from = oldest[:excess], oldest[excess][0]
        unread = await self._unread([entry_id for entry_id, _ in going])
        records, oldest_us = 0, 0
        for entry_id, fields in going:
            if entry_id in unread:
                count, oldest = _given_up(fields, _id_pair(entry_id)[0] * 1000)
                records += count
                oldest_us = min(oldest_us or oldest, oldest)
        trimmed = int(await self.client.xtrim(self.stream, minid=keep_from, approximate=False))
        self.metrics.inc("flow_entries_trimmed_total", trimmed)
        if records:
            self.metrics.inc("flow_records_given_up_total", records)
            log.error(
                "flow stream full: records given up before a collector had them",
                extra={"records": records, "entries": len(unread), "bound": self.maxlen},
            )
            if self.on_trimmed is not None:
                self.on_trimmed(records, oldest_us)

    async def _unread(self, ids: list[bytes]) -> set[bytes]:
        """Which of ``ids`` some collector group has not acknowledged (all of them when no group reads the stream)."""
        groups: Any = await self.client.xinfo_groups(self.stream)
        if not groups:
            return set(ids)
        out: set[bytes] = set()
        for group in groups:
            name = group.get("name")
            last = _id_pair(group.get("last-delivered-id") or b"0-0")
            out.update(i for i in ids if _id_pair(i) > last)
            if int(group.get("pending") or 0):
                pending: Any = await self.client.xpending_range(
                    self.stream, name, min=ids[0], max=ids[-1], count=len(ids)
                )
                out.update(p["message_id"] for p in pending)
        return out

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued, waiting at most ``timeout_s`` (the owner stops the worker after)."""
        self._stopping = True
        self._wake.set()
        if not self.pending:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._flush(), timeout_s)
        if self.pending:
            log.error("flow records not written at shutdown", extra={"records": len(self.pending)})
