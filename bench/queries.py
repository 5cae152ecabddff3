"""Dashboard queries over a large flow history, each beside the same question asked of raw ``flows``.

The history is generated inside ClickHouse (INSERT ... SELECT from ``numbers``)
so it passes through the same materialized views as collected records: N
records over 24 hours, 6 regions (30 region pairs plus each region's own
traffic), 24 topics. Each figure is the API's own answer time over HTTP
(``/api/topology``, ``/api/edges/...``, ``/api/traces/...``); the baseline is
the same question as a GROUP BY (or a lookup with the skip index disabled)
over raw ``flows``. The last figure is what ``/api/sql`` adds to a query: its
three checks (tokenizer, ``EXPLAIN AST``, ``EXPLAIN QUERY TREE``) beside the
query run raw.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx

from bench.common import Figure, clickhouse_url, valkey
from collector.clickhouse import make_client
from collector.config import CollectorConfig
from dashboard.config import DashboardConfig
from dashboard.serve import DashboardRuntime
from dashboard.sqlrun import guard
from router.regions import DEFAULT_REGIONS

REGIONS = list(DEFAULT_REGIONS)
TOPICS = 24


def generate(client: Any, db: str, n: int) -> None:
    regions = "[" + ",".join(f"'{r}'" for r in REGIONS) + "]"
    client.command(
        f"""INSERT INTO `{db}`.flows (ts, event_id, trace_id, span_id, parent_span_id, topic, kind, src_region,
          dst_region, relay, hop_ms, e2e_ms, status, bytes, attempt, seq)
        SELECT
          toDateTime64(now64(6) - toIntervalMicrosecond(number * intDiv(86400000000, {n})), 6) AS ts,
          concat('e', toString(number)) AS event_id,
          lower(hex(reinterpretAsFixedString(cityHash64(intDiv(number, 3), 1)))) ||
            lower(hex(reinterpretAsFixedString(cityHash64(intDiv(number, 3), 2)))) AS trace_id,
          lower(hex(reinterpretAsFixedString(cityHash64(number, 3)))) AS span_id,
          lower(hex(reinterpretAsFixedString(cityHash64(number, 4)))) AS parent_span_id,
          concat('topic', toString(cityHash64(number, 5) % {TOPICS}), '.events') AS topic,
          ['publish', 'forward', 'deliver'][number % 3 + 1] AS kind,
          {regions}[intDiv(number, 3) % 6 + 1] AS src_region,
          if(number % 3 = 0, src_region,
             {regions}[(intDiv(number, 3) % 6 + 1 + cityHash64(intDiv(number, 3)) % 5) % 6 + 1]) AS dst_region,
          concat('relay-', src_region) AS relay,
          toFloat32(cityHash64(number, 6) % 20000 / 100) AS hop_ms,
          toFloat32(cityHash64(number, 7) % 40000 / 100) AS e2e_ms,
          if(cityHash64(number, 8) % 200 = 0, 'backpressure', 'ok') AS status,
          toUInt32(200 + cityHash64(number, 9) % 800) AS bytes,
          1 AS attempt,
          number AS seq
        FROM numbers({n})""",
        settings={"max_insert_block_size": 1_000_000, "max_threads": 2},
    )


async def _time(http: httpx.AsyncClient, url: str, runs: int) -> list[float]:
    (await http.get(url)).raise_for_status()  # warm-up
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        reply = await http.get(url)
        out.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    return out


def _time_sql(client: Any, sql: str, runs: int, settings: dict[str, Any] | None = None) -> list[float]:
    client.query(sql, settings=settings)
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        client.query(sql, settings=settings)
        out.append((time.perf_counter() - started) * 1000)
    return out


def _time_guard(client: Any, sql: str, config: DashboardConfig, runs: int) -> list[float]:
    guard(client, sql, config)
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        guard(client, sql, config)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run(quick: bool = False, runs: int = 7) -> list[Figure]:
    n = 300_000 if quick else 21_000_000
    runs = 2 if quick else runs
    ch_url = clickhouse_url()
    db = f"bench_queries_{os.getpid()}"
    src, dst = REGIONS[0], REGIONS[1]
    figures = [
        Figure("/api/topology 24h", "ms", target="<= 100", higher_is_better=False),
        Figure("/api/edges/{src}/{dst} 24h", "ms", target="<= 150", higher_is_better=False),
        Figure("/api/traces/{id}", "ms", target="<= 50", higher_is_better=False),
        Figure("/api/sql guard overhead per query", "ms", target="<= 10", higher_is_better=False),
    ]
    with valkey() as redis_url:
        store = CollectorConfig(redis_url=redis_url, clickhouse_url=ch_url, database=db, metrics_port=-1)
        config = DashboardConfig(store=store, port=0)
        runtime = DashboardRuntime(config, with_collector=False, announce=False)
        client = runtime.admin
        started = time.perf_counter()
        generate(client, db, n)
        load_s = time.perf_counter() - started
        client.command(f"OPTIMIZE TABLE `{db}`.pair_minute FINAL")
        client.command(f"OPTIMIZE TABLE `{db}`.edge_minute FINAL")
        trace_id = client.query(f"SELECT trace_id FROM `{db}`.flows WHERE seq = {n // 2}").result_rows[0][0]
        pairs = client.query(
            f"SELECT uniqExact(src_region, dst_region) FROM `{db}`.flows WHERE src_region != dst_region"
        ).result_rows[0][0]
        raw_topology = (
            f"SELECT src_region, dst_region, countIf(kind IN ('forward', 'publish')), countIf(kind = 'deliver'), "
            f"countIf(status != 'ok'), quantilesIf(0.5, 0.99)(e2e_ms, kind = 'deliver'), "
            f"quantilesIf(0.5, 0.99)(hop_ms, kind = 'deliver') FROM `{db}`.flows "
            f"WHERE ts >= now() - INTERVAL 24 HOUR GROUP BY src_region, dst_region"
        )
        raw_edge = (
            f"SELECT intDiv(toUnixTimestamp(ts), 1440) AS t, countIf(kind IN ('forward', 'publish')), "
            f"countIf(status != 'ok'), quantileIf(0.99)(e2e_ms, kind = 'deliver') FROM `{db}`.flows "
            f"WHERE src_region = '{src}' AND dst_region = '{dst}' AND ts >= now() - INTERVAL 24 HOUR GROUP BY t"
        )
        raw_trace = f"SELECT * FROM `{db}`.flows WHERE trace_id = '{trace_id}' ORDER BY ts"

        async def measure() -> None:
            await runtime.start()
            try:
                headers = {"Authorization": f"Bearer {runtime.token}"}
                async with httpx.AsyncClient(base_url=runtime.server.url, timeout=60, headers=headers) as http:
                    figures[0].values = await _time(http, "/api/topology?window=24h", runs)
                    figures[1].values = await _time(http, f"/api/edges/{src}/{dst}?window=24h", runs)
                    figures[2].values = await _time(http, f"/api/traces/{trace_id}", runs)
            finally:
                await runtime.stop()

        asyncio.run(measure())
        figures[0].baseline = _time_sql(client, raw_topology, runs)
        figures[1].baseline = _time_sql(client, raw_edge, runs)
        figures[2].baseline = _time_sql(client, raw_trace, runs, {"use_skip_indexes": 0})
        user = make_client(ch_url, database=db)  # a client as the SQL lane opens one
        user_sql = (
            "SELECT src_region, dst_region, count(), quantileIf(0.99)(e2e_ms, kind = 'deliver') FROM flows "
            "WHERE ts >= now() - INTERVAL 1 HOUR GROUP BY src_region, dst_region ORDER BY count() DESC"
        )
        figures[3].values = _time_guard(user, user_sql, config, 3 * runs)
        figures[3].baseline = _time_sql(user, user_sql, 3 * runs)
        user.close()
        figures[0].note = (
            f"{n:,} flow records over 24 h, {pairs} region pairs, {TOPICS} topics, generated in "
            f"{load_s:.0f} s through the views; figures are HTTP round trips, baselines the raw SQL"
        )
        figures[2].note = "baseline: the same lookup with the trace_id bloom filter disabled"
        figures[3].note = (
            "tokenizer + EXPLAIN AST + EXPLAIN QUERY TREE of a GROUP BY over the last hour of flows; "
            "baseline: that query run raw (the endpoint runs both, so it answers in value + baseline)"
        )
        client.command(f"DROP DATABASE IF EXISTS `{db}` SYNC")
    return figures
