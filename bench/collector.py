"""Collector ingest: flow records per second from the stream into ClickHouse, one collector process.

The stream is filled first with packed records (500 per entry, as relays write
them); the figure is records inserted (and acked) per second by one collector.
Baseline, in the same run: clickhouse-connect's column insert of the same rows
straight into ``flows``, with no stream and no decoding.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.common import Figure, clickhouse_url, valkey
from collector.clickhouse import make_client, migrate
from collector.config import CollectorConfig
from collector.service import Collector
from meshcore.flowrecord import FIELDS, FlowRecord, pack
from router.regions import DEFAULT_REGIONS

REGIONS = list(DEFAULT_REGIONS)
TOPICS = [f"topic{i}.events" for i in range(20)]


def records(n: int, seed: int = 1) -> list[FlowRecord]:
    rng = random.Random(seed)
    now = time.time_ns() // 1000
    out = []
    for i in range(n):
        src, dst = rng.choice(REGIONS), rng.choice(REGIONS)
        out.append(
            FlowRecord(
                now - rng.randrange(60_000_000),
                f"e{seed}-{i}",
                f"{rng.getrandbits(128):032x}",
                f"{rng.getrandbits(64):016x}",
                f"{rng.getrandbits(64):016x}",
                rng.choice(TOPICS),
                rng.choice(("publish", "forward", "deliver")),
                src,
                dst,
                f"relay-{src}",
                rng.uniform(0, 200),
                rng.uniform(0, 400),
                "ok",
                rng.randrange(100, 2000),
                1,
                i,
            )
        )
    return out


def fill(client: redis.Redis, recs: list[FlowRecord], per_entry: int = 500) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(recs), per_entry):
        pipe.xadd("meshscope:flows", pack(recs[i : i + per_entry]))  # type: ignore[arg-type]
    pipe.execute()


async def ingest(redis_url: str, ch_url: str, database: str, n: int, client: Any) -> float:
    cfg = CollectorConfig(
        redis_url=redis_url,
        clickhouse_url=ch_url,
        database=database,
        consumer="bench",
        group=f"bench-{database}",
        metrics_port=-1,
        flush_interval_s=0.5,
        read_count=50,
    )
    r = aioredis.Redis.from_url(redis_url)
    collector = Collector(cfg, r, clickhouse=client)
    await collector.prepare()
    started = time.perf_counter()
    task = asyncio.create_task(collector.run())
    while collector.metrics.get("collector_rows_inserted_total") < n:
        await asyncio.sleep(0.01)
        if task.done():
            task.result()
    elapsed = time.perf_counter() - started
    collector.stop()
    await task
    await r.aclose()
    return n / elapsed


def run(quick: bool = False, runs: int = 3) -> list[Figure]:
    n = 20_000 if quick else 400_000
    runs = 1 if quick else runs
    fig = Figure(
        "collector ingest",
        "records/s",
        target=">= 300,000",
        note=f"{n:,} records, 500 per stream entry, embedded ClickHouse (chdb) with the materialized views",
    )
    ch_url = clickhouse_url()
    client = make_client(ch_url)
    recs = records(n)
    columns = [list(c) for c in zip(*recs, strict=True)]
    with valkey() as redis_url:
        sync = redis.Redis.from_url(redis_url)
        for i in range(runs + 1):  # the first run warms up
            db = f"bench_ingest_{os.getpid()}_{i}"
            migrate(client, CollectorConfig(database=db).schema)
            sync.flushdb()
            fill(sync, recs)
            rate = asyncio.run(ingest(redis_url, ch_url, db, n, client))
            base_db = f"bench_base_{os.getpid()}_{i}"
            migrate(client, CollectorConfig(database=base_db).schema)
            started = time.perf_counter()
            client.insert(f"`{base_db}`.`flows`", columns, column_names=list(FIELDS), column_oriented=True)
            base = n / (time.perf_counter() - started)
            if i:
                fig.values.append(rate)
                fig.baseline.append(base)
            for d in (db, base_db):
                client.command(f"DROP DATABASE IF EXISTS `{d}` SYNC")
        sync.close()
    return [fig]
