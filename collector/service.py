"""The collector loop: stream entries in, ClickHouse rows out, acks only after the insert.

    read (XREADGROUP) -> decode (poison -> dead letter) -> batch by rows/time
      -> manifest -> INSERT (dedup token) -> XACK -> drop manifest
    every second, apart from the loop (so that the lag grows while an insert waits for ClickHouse):
        the position in each stream (collector.position) -> HSET meshscope:freshness and
        meshscope_collector_lag_seconds{stream}; live edge stats with those positions -> PUBLISH meshscope:live
    every claim_idle_s / 2: recover stale manifests, then claim idle entries no manifest names

ClickHouse down: the insert is retried with backoff for as long as it takes;
nothing is acked meanwhile, so the stream keeps every record. Redis down: the
loop backs off and starts again from the stream's own record of what this
collector read and did not ack (and from the in-flight manifests), so an
outage of any length costs nothing and counts nothing twice. ``health()`` says
which dependency is failing, since when, and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from collector.alerting import AlertEvaluator
from collector.batch import Batch, should_flush, split_entries
from collector.clickhouse import make_client, migrate
from collector.config import CollectorConfig
from collector.errors import ClickHouseUnavailable, QueryError, StreamUnavailable
from collector.livestats import LIVE_S, LiveWindow
from collector.position import Position, position, publish
from collector.shards import ShardedFlowStream
from collector.stream import Entry
from collector.sync import GROUPS_STREAM, LinkSync
from meshcore.backoff import backoff_s
from meshcore.flowrecord import FIELDS
from meshcore.freshness import FLOWS, GROUPS, LIMITS, LINKS, LagReport, age_text
from meshcore.metrics import Registry
from meshcore.supervise import Supervisor

log = logging.getLogger(__name__)

INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}
CATCH_UP_FRACTION = 8
"""Behind, an insert starts once no other is in flight and 1/CATCH_UP_FRACTION of a batch is read."""


class Collector:
    def __init__(
        self,
        config: CollectorConfig,
        redis_client: aioredis.Redis,
        clickhouse: Client | None = None,
        client_factory: Callable[[], Client] | None = None,
    ):
        self.config = config
        self.redis = redis_client
        self._factory = client_factory or (lambda: make_client(config.clickhouse_url))
        self.clickhouse = clickhouse
        self.stream = ShardedFlowStream(
            redis_client, config.stream, config.flow_shards, config.group, config.consumer, config.dead_letter_stream
        )
        self.live = LiveWindow()
        self.links = LinkSync(config, redis_client)
        self.batch = Batch()
        self.table = f"`{config.database}`.`flows`"
        self.after_insert: Callable[[Batch], None] | None = None  # test seam: crash between insert and ack
        # a region label, so that the collectors of several regions can share one scrape (the dashboard's)
        self.metrics = m = Registry(const_labels={"region": config.region} if config.region else None)
        m.describe("collector_rows_inserted_total", "counter", "Flow records inserted into ClickHouse")
        m.describe("collector_batches_total", "counter", "Insert batches")
        m.describe("collector_batch_rows", "gauge", "Rows in the last insert batch")
        m.describe("collector_insert_seconds", "gauge", "Duration of the last insert")
        m.describe("collector_insert_seconds_total", "counter", "Time spent inserting")
        m.describe("collector_insert_errors_total", "counter", "Failed inserts (retried), by reason")
        m.describe("collector_clickhouse_up", "gauge", "1 when the last ClickHouse call succeeded")
        m.describe("collector_stream_pending", "gauge", "Entries read by the group and not acked")
        m.describe("collector_stream_lag", "gauge", "Entries not yet read by the group")
        m.describe("collector_dead_letters_total", "counter", "Entries moved to the dead-letter stream")
        m.describe("collector_recovered_batches_total", "counter", "In-flight batches recovered after a crash")
        m.describe("collector_claimed_entries_total", "counter", "Entries taken over from idle consumers")
        m.describe("collector_redis_up", "gauge", "1 while Redis answers the collector")
        m.describe("collector_redis_errors_total", "counter", "Times the collector lost Redis and backed off")
        m.describe(
            "collector_lag_seconds",
            "gauge",
            "Age of the oldest record not yet in ClickHouse, by stream, on Valkey's clock (0: caught up)",
        )
        m.describe("collector_last_insert_timestamp_seconds", "gauge", "When the last insert succeeded (Unix time)")
        for counter in (
            "collector_rows_inserted_total",
            "collector_batches_total",
            "collector_insert_seconds_total",
            "collector_dead_letters_total",
            "collector_recovered_batches_total",
            "collector_claimed_entries_total",
            "collector_redis_errors_total",
        ):
            m.zero(counter)
        m.zero("collector_insert_errors_total", reason="unavailable")
        self._stopping = False
        self._ready = asyncio.Event()
        self._inflight: asyncio.Task[None] | None = None
        self._redis_error = ""
        self._redis_down_since = 0.0
        self._clickhouse_error = ""
        self.positions: list[LagReport] = []
        """The latest position in each stream read (collector.position); empty until first measured."""
        self._position_error = ""
        m.describe("task_restarts_total", "counter", "Background tasks restarted after a crash, by task")
        self.side_tasks = Supervisor(on_restart=lambda task: m.inc("task_restarts_total", task=task))
        self.alerts: AlertEvaluator | None = None
        if config.alerts.enabled:
            self.alerts = AlertEvaluator(config, redis_client, m, ready=self._ready, client_factory=client_factory)

    # ---- ClickHouse ---------------------------------------------------------------------

    async def _client(self) -> Client:
        if self.clickhouse is None:
            self.clickhouse = await asyncio.to_thread(self._factory)
        return self.clickhouse

    async def _with_clickhouse(self, what: str, call: Callable[[Client], Any]) -> Any:
        """Run ``call`` in a thread, retrying with backoff while ClickHouse is unreachable."""
        attempt = 0
        while True:
            try:
                client = await self._client()
                result = await asyncio.to_thread(call, client)
                self.metrics.set("collector_clickhouse_up", 1)
                self._clickhouse_error = ""
                if attempt:
                    log.info("ClickHouse is back", extra={"after_attempts": attempt})
                return result
            except (ClickHouseUnavailable, OperationalError, OSError) as exc:
                self.metrics.set("collector_clickhouse_up", 0)
                self._clickhouse_error = str(exc)[:300]
                self.metrics.inc("collector_insert_errors_total", reason="unavailable")
                delay = backoff_s(attempt, 0.2, 10.0, random.random())
                log.warning(
                    "ClickHouse unreachable; records stay in the stream",
                    extra={"during": what, "error": str(exc)[:300], "retry_in_s": round(delay, 2)},
                )
                attempt += 1
                await asyncio.sleep(delay)

    async def prepare(self) -> None:
        """Create the consumer group and bring the schema up to date."""
        await self.stream.ensure_group()
        await self.links.ensure_group()

        def run(client: Client) -> list[int]:
            return migrate(client, self.config.schema)

        await self._with_clickhouse("migrate", run)

    async def _insert(self, batch: Batch, token: str) -> None:
        columns = batch.columns
        settings = {**INSERT_SETTINGS, "insert_deduplication_token": token}

        def run(client: Client) -> None:
            client.insert(self.table, columns, column_names=list(FIELDS), column_oriented=True, settings=settings)

        started = time.perf_counter()
        await self._with_clickhouse("insert", run)
        elapsed = time.perf_counter() - started
        self.metrics.set("collector_insert_seconds", elapsed)
        self.metrics.inc("collector_insert_seconds_total", elapsed)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Collect until stopped, with the alert evaluator (when enabled) as a supervised side task."""
        if self.alerts is not None:
            self.side_tasks.spawn("alerts", self.alerts.run)
        # apart from the loop, so that the lag keeps growing while an insert waits for ClickHouse
        self.side_tasks.spawn("report", self._report_loop)
        for task in self.side_tasks.tasks:
            self.metrics.zero("task_restarts_total", task=task)
        try:
            await self._run()
        finally:
            if self.alerts is not None:
                await self.alerts.drain(2.0)
            await self.side_tasks.stop()

    async def _run(self) -> None:
        """Collect until stopped; a Redis outage of any length pauses it, never ends it."""
        failures = 0
        while not self._stopping:
            try:
                await self.prepare()
                await self.recover(own=True)
                self._ready.set()
                self._redis_error = ""
                self.metrics.set("collector_redis_up", 1)
                failures = 0
                await self._collect()
            except StreamUnavailable as exc:
                self.metrics.set("collector_redis_up", 0)
                self.metrics.inc("collector_redis_errors_total")
                if not self._redis_error:
                    self._redis_down_since = time.time()
                    log.warning("Redis unavailable; records wait in the stream", extra={"error": str(exc)[:300]})
                self._redis_error = str(exc)[:300]
                await self._forget_uncommitted()
                await asyncio.sleep(backoff_s(failures, 0.2, 5.0, random.random()))
                failures += 1
        await self.stream.cancel_reads()
        await self.flush()

    async def _forget_uncommitted(self) -> None:
        """Drop what was read and not committed: the stream still holds it as pending, read again on resume."""
        self.batch = Batch()
        await self.stream.cancel_reads()
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            if not inflight.done():
                inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inflight  # its manifest (when saved) is recovered on resume

    def health(self) -> dict[str, Any]:
        reasons = []
        if self._redis_error:
            down = time.time() - self._redis_down_since
            reasons.append(f"redis unavailable for {down:.0f} s: {self._redis_error}")
        if self._clickhouse_error:  # (the gauge reads 0 before the first call, too)
            reasons.append(f"clickhouse unavailable: {self._clickhouse_error}")
        reasons += self.side_tasks.problems()
        stale = LIMITS[FLOWS].stale_s
        reasons += [
            f"{r.stream} {age_text(r.lag_s)} behind ({r.unread} entries unread, {r.pending} read and not inserted)"
            for r in self.positions
            if r.lag_s > stale
        ]
        if self.alerts is not None:
            reasons += self.alerts.problems()
        if not self._ready.is_set() and not reasons:
            reasons.append("starting")
        status = "degraded" if reasons else "ok"
        out: dict[str, Any] = {
            "status": status,
            "reasons": reasons,
            "consumer": self.config.consumer,
            "region": self.config.region,
            "streams": [r.to_json() for r in self.positions],
        }
        if self.alerts is not None:
            out["alerts"] = self.alerts.health()
        return out

    async def _collect(self) -> None:
        last_claim = last_sync = time.monotonic()
        while not self._stopping:
            now = time.monotonic()
            if now - last_claim >= self.config.claim_idle_s / 2:
                last_claim = now
                await self.recover(own=False)
                await self.links.claim_idle()
            if now - last_sync >= 1.0:
                last_sync = now
                await self.links.sync(self._with_clickhouse)
            wait_s = self.config.flush_interval_s
            if self.batch.ids:
                wait_s = max(0.001, self.batch.started + self.config.flush_interval_s - time.monotonic())
            entries = await self.stream.read(self.config.read_count, int(min(wait_s, 0.25) * 1000))
            await self._take(entries)
            if self._inflight is not None and self._inflight.done():
                inflight, self._inflight = self._inflight, None
                await inflight  # surfaces a failed commit
            # behind (the read came back full): ClickHouse is kept busy, each insert taking what was read
            # while the one before it ran, instead of idling until a whole batch is read and decoded
            behind = len(entries) >= self.config.read_count and self._inflight is None
            if should_flush(self.batch, time.monotonic(), self.config.batch_rows, self.config.flush_interval_s) or (
                behind and len(self.batch) >= self.config.batch_rows // CATCH_UP_FRACTION
            ):
                await self.flush(wait=False)

    def stop(self) -> None:
        self._stopping = True

    async def wait_ready(self, timeout_s: float) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def _take(self, entries: list[Entry]) -> None:
        if not entries:
            return
        good, poison = split_entries(entries)
        for bad in poison:
            log.error(
                "undecodable flow entry moved to the dead-letter stream",
                extra={"entry_id": bad.entry_id, "reason": bad.reason},
            )
            await self.stream.dead_letter(bad.entry_id, bad.reason, bad.fields)
            await self.stream.ack([bad.entry_id])
            self.metrics.inc("collector_dead_letters_total")
        if good and not self.batch.ids:
            self.batch.started = time.monotonic()
        since_us = int((time.time() - LIVE_S) * 1e6)
        for entry_id, columns in good:
            self.batch.add(entry_id, columns)
            self.live.add(columns, since_us)

    async def flush(self, wait: bool = True) -> None:
        """Commit the current batch. With ``wait=False`` the insert runs while the next batch is read.

        At most one commit is in flight; commits (and so acks) happen in batch order.
        """
        batch, self.batch = self.batch, Batch()
        if self._inflight is not None:
            await self._inflight
            self._inflight = None
        if not batch.ids:
            return
        if wait:
            await self._commit(batch)
        else:
            self._inflight = asyncio.create_task(self._commit(batch))

    async def _commit(self, batch: Batch, recovered_token: str | None = None) -> None:
        """Manifest, insert, ack, forget the manifest: the order that loses nothing.

        A recovered batch keeps its original token (its manifest already exists),
        so an insert that had landed before the crash is dropped as a duplicate.
        """
        token = recovered_token or batch.token
        if recovered_token is None:
            owned = await self.stream.save_manifest(token, batch.ids)
            if len(owned) < len(batch.ids):
                # another collector took some entries over while the batch waited (this one looked dead):
                # they are its to insert, under its token
                log.warning(
                    "entries taken over by another collector left out of the batch",
                    extra={"entries": len(batch.ids) - len(owned)},
                )
                batch = batch.keep(owned)
                if not batch.ids:
                    return
        if len(batch):
            try:
                await self._insert(batch, token)
            except (QueryError, DatabaseError) as exc:
                await self._reject(batch, f"ClickHouse refused the batch: {exc}")
                await self.stream.drop_manifest(token)
                return
        if self.after_insert is not None:
            self.after_insert(batch)
        await self.stream.ack(batch.ids)
        await self.stream.drop_manifest(token)
        self.metrics.inc("collector_rows_inserted_total", len(batch))
        self.metrics.set("collector_last_insert_timestamp_seconds", time.time())
        self.metrics.inc("collector_batches_total")
        self.metrics.set("collector_batch_rows", len(batch))

    async def _reject(self, batch: Batch, reason: str) -> None:
        """A batch ClickHouse will never take: its entries go to the dead-letter stream, whole."""
        log.error("batch moved to the dead-letter stream", extra={"entries": len(batch.ids), "reason": reason[:300]})
        for entry_id in batch.ids:
            fields = await self.stream.entry(entry_id)
            await self.stream.dead_letter(entry_id, reason, fields)
            self.metrics.inc("collector_dead_letters_total")
        await self.stream.ack(batch.ids)

    async def recover(self, own: bool) -> None:
        """Finish batches a dead collector left in flight, then take over its idle entries.

        A manifest is recovered when it is stale (or, with ``own``, at start-up, when it is this
        consumer's own: a restart under the same name), whatever the idle time of its entries:
        they are claimed outright and inserted again under the manifest's token. Idle entries
        no manifest names are claimed by ``claim_idle``, which leaves the others alone.
        """
        idle_ms = int(self.config.claim_idle_s * 1000)
        manifests = await self.stream.manifests()
        in_flight: set[str] = set()
        for token, manifest in manifests.items():
            mine = manifest.get("owner") == self.config.consumer
            stale = time.time() - float(manifest.get("ts", 0)) >= self.config.claim_idle_s
            if (own and mine) or (not mine and stale):
                entries = await self.stream.claim(manifest["ids"], 0)
                if not entries:
                    await self.stream.drop_manifest(token)
                    continue
                good, poison = split_entries(entries)
                for bad in poison:
                    await self.stream.dead_letter(bad.entry_id, bad.reason, bad.fields)
                    self.metrics.inc("collector_dead_letters_total")
                batch = Batch()
                for entry_id, columns in good:
                    batch.add(entry_id, columns)
                # ids of poison entries stay in the batch so they are acked with it (they are dead-lettered)
                batch.ids.extend(bad.entry_id for bad in poison)
                await self._commit(batch, recovered_token=token)
                self.metrics.inc("collector_recovered_batches_total")
                log.info("in-flight batch recovered", extra={"token": token, "entries": len(entries)})
            else:
                in_flight.update(manifest["ids"])
        if own:
            await self._take([e for e in await self.stream.read(10_000, 0, pending=True) if e[0] not in in_flight])
        claimed = await self.stream.claim_idle(idle_ms, 10_000)
        if claimed:
            self.metrics.inc("collector_claimed_entries_total", len(claimed))
            await self._take(claimed)

    async def _report_loop(self) -> None:
        await self._ready.wait()  # the groups exist: before, a stream without one would read as caught up
        while True:
            await self._report()
            await asyncio.sleep(1.0)

    async def _report(self) -> None:
        """Measure and publish where the collector stands in each stream, then this second's live figures.

        The live message goes out every second, empty or not: it carries the positions, so a
        reader learns the collector is behind (or alive and idle) from the feed itself. Valkey
        not answering is the loop's to report (``health``): this one tries again next second.
        """
        reports: list[LagReport] = []
        try:
            reports = await self._positions()
            await publish(self.redis, reports)
            message = self.live.flush(int(time.time()), self.config.consumer, [r.to_json() for r in reports])
            await self.stream.publish(self.config.live_channel, orjson.dumps(message))
        except StreamUnavailable as exc:
            if not self._position_error:
                log.warning("cannot measure or publish the stream positions", extra={"error": str(exc)[:300]})
            self._position_error = str(exc)[:300]
            return
        self._position_error = ""

    async def _position(self, stream: str, group: str) -> Position:
        """Where ``group`` stands in ``stream``; the flow stream's position is its furthest behind shard's."""
        if stream != self.config.stream or len(self.stream.shards) == 1:
            return await position(self.redis, stream, group)
        each = [await position(self.redis, shard, group) for shard in self.stream.streams]
        waiting = [p.oldest_ms for p in each if p.oldest_ms is not None]
        return Position(
            max(p.now_ms for p in each),
            min(waiting) if waiting else None,
            sum(p.unread for p in each),
            sum(p.pending for p in each),
        )

    async def _positions(self) -> list[LagReport]:
        c = self.config
        reports = []
        links_group = self.links.group
        streams = (
            (c.stream, c.group, FLOWS),
            (c.links_stream, links_group, LINKS),
            (GROUPS_STREAM, links_group, GROUPS),
        )
        for stream, group, source in streams:
            at = await self._position(stream, group)
            report = LagReport(stream, c.regions, at.now_ms / 1000, at.lag_s, at.unread, at.pending, c.consumer, source)
            reports.append(report)
            self.metrics.set("collector_lag_seconds", report.lag_s, stream=stream)
            if stream == c.stream:
                self.metrics.set("collector_stream_pending", at.pending)
                self.metrics.set("collector_stream_lag", at.unread)
        self.positions = reports
        return reports
