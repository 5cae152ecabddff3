"""Writes flow records to the Redis stream, many records per entry.

A bounded in-memory queue, a worker that wakes at ``batch`` records or every
``flush_interval_s``, and backpressure when full: the relay refuses new
publishes (429) rather than lose records. If Redis is unreachable the records
stay queued and the worker retries with backoff. The stream is trimmed to an
approximate length with XTRIM; every trimmed entry is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meshcore.backoff import backoff_s
from meshcore.flowrecord import FlowRecord, pack
from meshcore.metrics import Registry

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
    ):
        self.client = client
        self.stream = stream
        self.maxlen = maxlen
        self.queue_max = queue_max
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self.metrics = metrics
        self.pending: list[FlowRecord] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        metrics.describe("flow_records_written_total", "counter", "Flow records written to the stream")
        metrics.describe("flow_entries_trimmed_total", "counter", "Stream entries removed by trimming")
        metrics.describe("flow_write_errors_total", "counter", "Failed stream writes (records kept and retried)")
        metrics.describe("flow_queue_depth", "gauge", "Flow records waiting to be written")

    @property
    def full(self) -> bool:
        return len(self.pending) >= self.queue_max

    def add(self, record: FlowRecord) -> None:
        self.pending.append(record)
        if len(self.pending) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="flow-sink")

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

    async def _run(self) -> None:
        failures = 0
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
            try:
                await self._flush()
                failures = 0
            except RedisError as exc:
                failures += 1
                self.metrics.inc("flow_write_errors_total")
                delay = backoff_s(failures, 0.05, 2.0, random.random())
                log.warning("flow stream write failed, retrying", extra={"error": str(exc), "retry_in_s": delay})
                if self._stopping and failures > 3:
                    return
                await asyncio.sleep(delay)

    async def _flush(self) -> None:
        while self.pending:
            chunk_size = min(len(self.pending), self.batch * 20)
            chunk = self.pending[:chunk_size]
            pipe = self.client.pipeline(transaction=False)
            for i in range(0, len(chunk), self.batch):
                pipe.xadd(self.stream, pack(chunk[i : i + self.batch]))  # type: ignore[arg-type]
            pipe.xtrim(self.stream, maxlen=self.maxlen, approximate=True)
            results = await pipe.execute()
            del self.pending[:chunk_size]
            self.metrics.inc("flow_records_written_total", len(chunk))
            if results[-1]:
                self.metrics.inc("flow_entries_trimmed_total", results[-1])
            self.metrics.set("flow_queue_depth", len(self.pending))
            if not self.full:
                self._drained.set()

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued, waiting at most ``timeout_s``."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout_s)
            except TimeoutError:
                self._task.cancel()
                log.error("flow records not written at shutdown", extra={"records": len(self.pending)})
