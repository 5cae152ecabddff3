"""Writes flow records to the Redis stream, many records per entry, each write exactly once.

A bounded in-memory queue, a worker that wakes at ``batch`` records or every
``flush_interval_s``, and backpressure when full: the relay refuses new
publishes (429) rather than lose records. A chunk taken from the queue is
frozen until it lands: it is written through the same idempotent commit
script as the relay's durable steps (with its own writer counter), so a write
whose reply was lost and is retried does not leave the records twice. While
Redis is unreachable the records stay queued and the worker retries with
backoff. The stream is trimmed to an approximate length; every trimmed entry
is counted.

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

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore.breaker import CircuitBreaker
from meshcore.flowrecord import FlowRecord, pack
from meshcore.metrics import Registry
from router.committer import Committer, Ops

log = logging.getLogger(__name__)


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
    ):
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.queue_max = queue_max
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self.metrics = metrics
        self.pending: list[FlowRecord] = []
        self.breaker = CircuitBreaker("flow-sink")
        self.writer = Committer(client, writer, self.breaker, lambda _err: metrics.inc("flow_write_errors_total"))
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._stopping = False
        self._done = asyncio.Event()
        metrics.describe("flow_records_written_total", "counter", "Flow records written to the stream")
        metrics.describe("flow_entries_trimmed_total", "counter", "Stream entries removed by trimming")
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
        try:
            while True:
                if not self.pending:
                    if self._stopping:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
                    self._wake.clear()
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
                trimmed = await self.client.xtrim(self.stream, maxlen=self.maxlen, approximate=True)
                if trimmed:
                    self.metrics.inc("flow_entries_trimmed_total", trimmed)
            except RedisError as exc:
                log.warning("cannot trim the flow stream", extra={"error": str(exc)[:200]})

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
