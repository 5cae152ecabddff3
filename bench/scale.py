"""How cost grows with work: relay throughput with 1, 2 and 4 relays, with 1, 2 and 4 workers of one region,
collector ingest with 1, 2 and 4 collectors.

Relays: N relay processes in a full mesh; each gets its own publisher (100 events
per frame) and its events go to a subscriber at the next relay. Workers: one
region served by N relay processes behind one port (``meshscope relay
--workers N``); N publishers and N subscribers connect to that port (the kernel
picks each one's worker), publisher i's events go to subscriber i, so most of
them cross from one worker to another through the region's store. Collectors: N
collectors in one consumer group, in this process, sharing one embedded
ClickHouse (it allows one process); with a ClickHouse server they would be N
processes. Baseline of each row: the single-relay (single-collector) figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.request
from typing import Any

import redis
import redis.asyncio as aioredis

from bench.collector import fill, records
from bench.common import BenchMesh, Figure, clickhouse_url, processes, spawn_mesh, valkey
from bench.relay import _stream_publish, _subscriber
from collector.clickhouse import make_client, migrate
from collector.config import CollectorConfig
from collector.service import Collector
from router.regions import DEFAULT_REGIONS


async def _relays(mesh: BenchMesh, regions: list[str], per_relay: int) -> float:
    loop = asyncio.get_running_loop()
    dones = []
    subs = []
    for i in range(len(regions)):
        # relay i's events (topic bench.r<i>) go to the one subscriber for them, at relay i + 1
        target = regions[(i + 1) % len(regions)]
        done: asyncio.Future[float] = loop.create_future()
        dones.append(done)
        url = f"{mesh.ws(target)}/v1/subscribe?topic=bench.r{i}&batch=100"
        subs.append(asyncio.create_task(_subscriber(url, per_relay, done, None, mesh)))
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _stream_publish(f"{mesh.ws(r)}/v1/stream", per_relay, 100, 8, None, False, f"bench.r{i}", mesh)
            for i, r in enumerate(regions)
        )
    )
    finished = max(await asyncio.wait_for(asyncio.gather(*dones), 300))
    for s in subs:
        s.cancel()
    return per_relay * len(regions) / (finished - started)


def relay_scale(quick: bool) -> list[Figure]:
    per_relay = 2_000 if quick else 50_000
    rates = []
    for n in (1, 2, 4):
        regions = list(DEFAULT_REGIONS[:n]) if n > 1 else [DEFAULT_REGIONS[0], DEFAULT_REGIONS[1]]
        publishers = regions if n > 1 else regions[:1]
        with valkey() as redis_url, processes() as spawn:
            mesh = spawn_mesh(spawn, redis_url, regions)
            if n == 1:  # one publishing relay, its events cross one link as in the relay benchmark
                rates.append(asyncio.run(_relays_pair(mesh, regions, per_relay)))
            else:
                rates.append(asyncio.run(_relays(mesh, publishers, per_relay)))
    return _curve(rates, "relay", "", "baseline of every row: this single-relay figure")


def worker_scale(quick: bool) -> list[Figure]:
    per_publisher = 1_000 if quick else 50_000
    rates = []
    region = DEFAULT_REGIONS[0]
    with valkey() as redis_url:
        store = redis.Redis.from_url(redis_url)
        for n in (1, 2, 4):
            store.flushdb()
            with processes() as spawn:
                mesh = spawn_mesh(spawn, redis_url, [region], extra={"MESHSCOPE_RELAY_WORKERS": str(n)})
                _wait_workers(mesh, region, n)
                rates.append(asyncio.run(_workers(mesh, region, n, per_publisher)))
        store.close()
    note = "baseline of every worker row: one relay process (no workers)"
    return _curve(rates, "worker", ", one region, one port", note)


def _curve(rates: list[float], what: str, more: str, note: str) -> list[Figure]:
    """Rows for 1, 2 and 4 of ``what`` in events/s, each beside the first row's figure."""
    return [
        Figure(f"{n} {what}{'s' if n > 1 else ''}{more}", "events/s", [rate], [rates[0]], note="" if n > 1 else note)
        for n, rate in zip((1, 2, 4), rates, strict=True)
    ]


def _wait_workers(mesh: BenchMesh, region: str, n: int) -> None:
    """Until the region's /healthz lists ``n`` workers up (a single relay has no workers section)."""
    deadline = time.monotonic() + 30
    while n > 1 and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{mesh.http(region)}/healthz", timeout=2, context=mesh.ssl) as reply:
                members = json.loads(reply.read()).get("workers", {}).get("members", {})
            if sum(1 for m in members.values() if m["state"] == "up") == n:
                time.sleep(0.3)  # each worker's interest reaches the others with their next read
                return
        except OSError:
            pass
        time.sleep(0.1)
    if n > 1:
        raise RuntimeError(f"{region}: {n} workers not up within 30 s")


async def _workers(mesh: BenchMesh, region: str, n: int, per_publisher: int) -> float:
    loop = asyncio.get_running_loop()
    dones = []
    subs = []
    for i in range(n):
        done: asyncio.Future[float] = loop.create_future()
        dones.append(done)
        url = f"{mesh.ws(region)}/v1/subscribe?topic=bench.w{i}&batch=100"
        subs.append(asyncio.create_task(_subscriber(url, per_publisher, done, None, mesh)))
    await asyncio.sleep(0.5)  # every worker knows every subscriber's interest
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _stream_publish(f"{mesh.ws(region)}/v1/stream", per_publisher, 100, 8, None, False, f"bench.w{i}", mesh)
            for i in range(n)
        )
    )
    finished = max(await asyncio.wait_for(asyncio.gather(*dones), 300))
    for s in subs:
        s.cancel()
    return per_publisher * n / (finished - started)


async def _relays_pair(mesh: BenchMesh, regions: list[str], per_relay: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[float] = loop.create_future()
    url = f"{mesh.ws(regions[1])}/v1/subscribe?topic=bench.>&batch=100"
    sub = asyncio.create_task(_subscriber(url, per_relay, done, None, mesh))
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    await _stream_publish(f"{mesh.ws(regions[0])}/v1/stream", per_relay, 100, 8, None, False, mesh=mesh)
    finished = await asyncio.wait_for(done, 300)
    sub.cancel()
    return per_relay / (finished - started)


async def _collectors(redis_url: str, ch_url: str, db: str, n: int, total: int, client: Any) -> float:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(n)]
    collectors = [
        Collector(
            CollectorConfig(
                redis_url=redis_url,
                clickhouse_url=ch_url,
                database=db,
                consumer=f"c{i}",
                group=f"scale-{db}",
                metrics_port=-1,
                flush_interval_s=0.5,
                read_count=100,
            ),
            clients[i],
            clickhouse=client,
        )
        for i in range(n)
    ]
    for c in collectors:
        await c.prepare()
    started = time.perf_counter()
    tasks = [asyncio.create_task(c.run()) for c in collectors]
    while sum(c.metrics.get("collector_rows_inserted_total") for c in collectors) < total:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    for c in collectors:
        c.stop()
    await asyncio.gather(*tasks)
    for r in clients:
        await r.aclose()
    return total / elapsed


def collector_scale(quick: bool) -> list[Figure]:
    total = 8_000 if quick else 300_000
    ch_url = clickhouse_url()
    client = make_client(ch_url)
    recs = records(total, seed=5)
    figures = []
    base = None
    with valkey() as redis_url:
        sync = redis.Redis.from_url(redis_url)
        for n in (1, 2, 4):
            db = f"bench_scale_{os.getpid()}_{n}"
            migrate(client, CollectorConfig(database=db).schema)
            sync.flushdb()
            fill(sync, recs)
            rate = asyncio.run(_collectors(redis_url, ch_url, db, n, total, client))
            base = base or rate
            figures.append(Figure(f"{n} collector{'s' if n > 1 else ''}", "records/s", [rate], [base]))
            client.command(f"DROP DATABASE IF EXISTS `{db}` SYNC")
        sync.close()
    figures[0].note = "collectors share one process and one embedded ClickHouse; baseline: the single collector"
    return figures
