"""The collector against a real Valkey and a real ClickHouse (chdb, or CLICKHOUSE_URL)."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis

from collector.batch import Batch
from collector.clickhouse import make_client, migrate
from collector.config import CollectorConfig
from collector.histogram import quantile, sql_bucket
from collector.service import Collector
from meshcore import storekeys as sk
from meshcore.flowrecord import FIELDS, FlowRecord, pack
from tests.conftest import CE_JSON, Mesh, cloud_event, eventually, flow_records, scaled, stop_collectors

A, C = "aws:us-east-1", "azure:westeurope"
REGIONS = ["aws:us-east-1", "gcp:europe-west1", "azure:westeurope", "aws:ap-southeast-1"]


class Crash(BaseException):
    """Stands for the process dying between insert and ack."""


def config(redis_url: str, clickhouse_url: str, database: str, **kw: Any) -> CollectorConfig:
    base = dict(
        redis_url=redis_url,
        clickhouse_url=clickhouse_url,
        database=database,
        consumer="c1",
        flush_interval_s=0.05,
        claim_idle_s=0.5,
        metrics_port=-1,
    )
    base.update(kw)
    return CollectorConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
async def run_collector(
    redis_url: str, clickhouse_url: str, database: str, redis_sync: redis.Redis
) -> AsyncIterator[Callable[..., Any]]:
    running: list[tuple[Collector, asyncio.Task[None], aioredis.Redis]] = []

    async def start(**kw: Any) -> Collector:
        client = aioredis.Redis.from_url(redis_url)
        factory = kw.pop("client_factory", None)
        collector = Collector(config(redis_url, clickhouse_url, database, **kw), client, client_factory=factory)
        task = asyncio.create_task(collector.run())
        running.append((collector, task, client))
        return collector

    yield start
    await stop_collectors(running)


def make_records(n: int, seed: int = 1) -> list[FlowRecord]:
    rng = random.Random(seed)
    base_us = (time.time_ns() // 1000) - 600_000_000  # ten minutes ago, inside every TTL
    out = []
    for i in range(n):
        src, dst = rng.choice(REGIONS), rng.choice(REGIONS)
        kind = rng.choice(["publish", "forward", "deliver", "deliver", "drop"])
        status = rng.choice(["no_route", "backpressure", "link_down"]) if kind == "drop" else "ok"
        out.append(
            FlowRecord(
                base_us + i * 1000 + rng.randrange(1000),
                f"ev-{i}",
                f"{i:032x}",
                f"{i:016x}",
                f"{i + 1:016x}",
                rng.choice(["orders.created", "orders.paid", "users.signup"]),
                kind,
                src,
                dst,
                f"relay-{src}",
                round(rng.uniform(0, 200), 3),
                round(rng.uniform(0, 400), 3),
                status,
                rng.randrange(100, 5000),
                1,
                i,
            )
        )
    return out


def add_records(client: redis.Redis, records: list[FlowRecord], per_entry: int = 100) -> list[str]:
    ids = []
    for i in range(0, len(records), per_entry):
        ids.append(client.xadd("meshscope:flows", pack(records[i : i + per_entry])).decode())  # type: ignore[arg-type]
    return ids


def count(ch: Any, database: str, where: str = "1") -> int:
    if not _db_exists(ch, database):
        return 0
    return int(ch.query(f"SELECT count() FROM `{database}`.flows WHERE {where}").result_rows[0][0])


def flow_keys(ch: Any, database: str) -> Counter[tuple[str, str, str, str]]:
    rows = ch.query(f"SELECT event_id, kind, relay, dst_region FROM `{database}`.flows").result_rows
    return Counter(tuple(r) for r in rows)


async def test_records_from_real_relays_land_with_every_field(
    mesh: Mesh, http: httpx.AsyncClient, redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    await mesh.start([A, C])
    sub = mesh[C].relay.subscribe(["orders.>"])
    await eventually(lambda: C in mesh[A].relay.routes.interested("orders.x"))
    batch = [cloud_event("orders.x", f"r-{i}") for i in range(20)] + [cloud_event("nobody.x", "lonely")]
    reply = await http.post(f"{mesh[A].url}/v1/events", headers=CE_JSON, content=orjson.dumps(batch))
    assert reply.status_code == 202
    await eventually(lambda: sub.queue.qsize() == 20)
    expected = await eventually(lambda: (rs := flow_records(redis_sync)) and len(rs) == 61 and rs)
    await run_collector()
    await eventually(lambda: count(ch_admin, database) == 61, 10)
    got = ch_admin.query(
        f"SELECT toUnixTimestamp64Micro(ts), {', '.join(FIELDS[1:])} FROM `{database}`.flows"
    ).result_rows
    expected_rows = sorted(tuple(r) for r in expected)
    got_rows = sorted(tuple(r) for r in got)
    assert len(got_rows) == len(expected_rows)
    for g, e in zip(got_rows, expected_rows, strict=True):
        assert g[:10] == e[:10] and g[12:] == e[12:]
        assert g[10] == pytest.approx(e[10], rel=1e-6) and g[11] == pytest.approx(e[11], rel=1e-6)  # Float32
    assert Counter(r[6] for r in got_rows) == {"publish": 20, "forward": 20, "deliver": 20, "drop": 1}


async def test_aggregates_equal_raw_flows(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    records = make_records(3000)
    add_records(redis_sync, records)
    collector = await run_collector()
    # the insert call has returned, so the views fed by it have their rows too
    await eventually(lambda: collector.metrics.get("collector_rows_inserted_total") == 3000, 15)
    db = f"`{database}`"
    values = (
        "sum(records), sum(entered), sum(delivered), sum(errors), sumMap(status_counts), sum(bytes), "
        "sumMap(hop_hist), sumMap(e2e_hist)"
    )
    raw_values = (
        "count(), countIf(kind IN ('forward', 'publish')), countIf(kind = 'deliver'), countIf(status != 'ok'), "
        "sumMapIf(map(toString(status), toUInt64(1)), status != 'ok'), sumIf(bytes, kind IN ('forward', 'publish')), "
        f"sumMapIf(map({sql_bucket('hop_ms')}, toUInt64(1)), kind = 'deliver'), "
        f"sumMapIf(map({sql_bucket('e2e_ms')}, toUInt64(1)), kind = 'deliver')"
    )
    for table, bucket, keys in (
        ("edge_minute", "toStartOfMinute(ts)", "src_region, dst_region, topic"),
        ("edge_second", "toStartOfSecond(ts)", "src_region, dst_region, topic"),
        ("pair_minute", "toStartOfMinute(ts)", "src_region, dst_region"),
        ("pair_hour", "toStartOfHour(ts)", "src_region, dst_region"),
    ):
        agg = ch_admin.query(
            f"SELECT toUnixTimestamp(bucket) AS b, {keys}, {values} FROM {db}.{table} "
            f"GROUP BY b, {keys} ORDER BY b, {keys}"
        ).result_rows
        raw = ch_admin.query(
            f"SELECT toUnixTimestamp({bucket}) AS b, {keys}, {raw_values} FROM {db}.flows "
            f"GROUP BY b, {keys} ORDER BY b, {keys}"
        ).result_rows
        assert agg == raw, table
        assert sum(r[-8] for r in agg) == 3000
        assert sum(r[-5] for r in agg) == sum(1 for r in records if r.status != "ok")
    index = ch_admin.query(
        f"SELECT trace_id, toUnixTimestamp64Micro(min(first_ts)), toUnixTimestamp64Micro(max(last_ts)) "
        f"FROM {db}.trace_index GROUP BY trace_id ORDER BY trace_id"
    ).result_rows
    assert (
        index
        == ch_admin.query(
            f"SELECT trace_id, toUnixTimestamp64Micro(min(ts)), toUnixTimestamp64Micro(max(ts)) FROM {db}.flows "
            "GROUP BY trace_id ORDER BY trace_id"
        ).result_rows
    )
    # percentiles read from the buckets stay within 4.5 % of the exact ones
    exact = ch_admin.query(
        f"SELECT src_region, dst_region, quantileExact(0.99)(e2e_ms) FROM {db}.flows WHERE kind = 'deliver' "
        "GROUP BY src_region, dst_region"
    ).result_rows
    hists = {
        (r[0], r[1]): r[2]
        for r in ch_admin.query(
            f"SELECT src_region, dst_region, sumMap(e2e_hist) FROM {db}.pair_minute GROUP BY src_region, dst_region"
        ).result_rows
    }
    for src, dst, p99 in exact:
        got = quantile(hists[(src, dst)], 0.99)
        assert got is not None and abs(got - p99) / p99 < 0.05


@pytest.mark.parametrize("restart_as", ["same consumer", "another consumer"])
async def test_crash_between_insert_and_ack_leaves_every_record_once(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str, restart_as: str
) -> None:
    records = make_records(1000)
    add_records(redis_sync, records)
    first = await run_collector(batch_rows=300)

    def crash(batch: Batch) -> None:
        raise Crash

    first.after_insert = crash
    await eventually(lambda: count(ch_admin, database) > 0, 10)
    from collector.position import position

    assert (await position(first.redis, "meshscope:flows", "meshscope-collectors")).pending > 0  # inserted, never acked
    assert redis_sync.hlen(sk.manifests("meshscope:flows")) == 1
    await run_collector(consumer="c1" if restart_as == "same consumer" else "c2", batch_rows=300)
    await eventually(lambda: count(ch_admin, database) >= 1000, 15)
    await eventually(lambda: redis_sync.xpending("meshscope:flows", "meshscope-collectors")["pending"] == 0, 10)
    keys = flow_keys(ch_admin, database)
    assert len(keys) == 1000 and set(keys.values()) == {1}
    await eventually(lambda: redis_sync.hlen(sk.manifests("meshscope:flows")) == 0)
    minute = ch_admin.query(f"SELECT sum(records) FROM `{database}`.edge_minute").result_rows[0][0]
    assert minute == 1000  # the aggregates did not count the re-insert either


async def test_clickhouse_outage_loses_nothing(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str, clickhouse_url: str
) -> None:
    import socket

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    target = {"url": f"clickhouse://127.0.0.1:{dead.getsockname()[1]}"}
    collector = await run_collector(client_factory=lambda: make_client(target["url"]))
    add_records(redis_sync, make_records(500))
    await eventually(lambda: collector.metrics.get("collector_insert_errors_total", reason="unavailable") >= 2, 10)
    assert collector.metrics.get("collector_clickhouse_up") == 0
    assert count(ch_admin, database) == 0
    assert redis_sync.xlen("meshscope:flows") == 5  # the stream keeps everything
    target["url"] = clickhouse_url  # ClickHouse is back
    await eventually(lambda: count(ch_admin, database) == 500, 20)
    await eventually(lambda: collector.metrics.get("collector_clickhouse_up") == 1)
    await eventually(lambda: redis_sync.xpending("meshscope:flows", "meshscope-collectors")["pending"] == 0, 10)
    assert len(flow_keys(ch_admin, database)) == 500
    dead.close()


def _db_exists(ch: Any, database: str) -> bool:
    return bool(
        ch.query(
            "SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'flows'", parameters={"d": database}
        ).result_rows[0][0]
    )


async def test_poison_entry_goes_to_dead_letter_and_the_rest_flows(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    add_records(redis_sync, make_records(100, seed=1)[:50])
    poison_id = redis_sync.xadd("meshscope:flows", {"v": "1", "r": "this is not json"}).decode()
    odd_id = redis_sync.xadd("meshscope:flows", {"hello": "world"}).decode()
    add_records(redis_sync, make_records(100, seed=1)[50:])
    collector = await run_collector()
    await eventually(lambda: count(ch_admin, database) == 100, 10)
    dead = await eventually(lambda: (d := redis_sync.xrange("meshscope:flows:dead")) and len(d) == 2 and d)
    by_source = {f[b"source_id"].decode(): f for _, f in dead}
    assert set(by_source) == {poison_id, odd_id}
    assert b"JSON" in by_source[poison_id][b"reason"]
    assert by_source[poison_id][b"field:r"] == b"this is not json"
    assert b"version" in by_source[odd_id][b"reason"]
    assert collector.metrics.get("collector_dead_letters_total") == 2
    await eventually(lambda: redis_sync.xpending("meshscope:flows", "meshscope-collectors")["pending"] == 0)


async def test_two_collectors_split_the_work_without_duplicates(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    one = await run_collector(consumer="one", read_count=5)
    two = await run_collector(consumer="two", read_count=5)
    await one.wait_ready(scaled(10))
    await two.wait_ready(scaled(10))
    records = make_records(4000, seed=7)
    for i in range(0, 4000, 500):
        add_records(redis_sync, records[i : i + 500], per_entry=20)
        await asyncio.sleep(0.05)
    await eventually(lambda: count(ch_admin, database) >= 4000, 20)
    keys = flow_keys(ch_admin, database)
    assert len(keys) == 4000 and set(keys.values()) == {1}
    inserted = await eventually(
        lambda: (n := [c.metrics.get("collector_rows_inserted_total") for c in (one, two)]) and sum(n) == 4000 and n
    )
    assert all(n > 0 for n in inserted)


async def test_live_stats_are_published_every_second_with_how_old_they_are(
    redis_url: str, redis_sync: redis.Redis, run_collector: Any
) -> None:
    """Live figures count only records of the last seconds; older ones are history, counted as late."""
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe("meshscope:live")
    await run_collector()
    now_us = time.time_ns() // 1000

    def deliver(i: int, ts: int) -> FlowRecord:
        return FlowRecord(ts, f"e{i}", "t" * 32, "s" * 16, "p" * 16, "orders.x", "deliver", A, C, "r", 5.0,
                          float(i + 1), "ok", 10, 1, i)  # fmt: skip

    recs = [deliver(i, now_us) for i in range(100)]
    recs.append(
        FlowRecord(now_us, "f", "t" * 32, "s" * 16, "p" * 16, "orders.x", "forward", A, C, "r", 1, 1, "ok", 10, 1, 0)
    )
    recs += [deliver(1000 + i, now_us - 900_000_000) for i in range(7)]  # a quarter of an hour old
    add_records(redis_sync, recs)

    async def message() -> Any:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        data = orjson.loads(msg["data"]) if msg else None
        return data if data and data["edges"] else None

    live = await eventually(message, 5)
    edge = next(e for e in live["edges"] if (e["src"], e["dst"]) == (A, C))
    assert (edge["count"], edge["delivered"], edge["errors"]) == (1, 100, 0)
    assert (edge["e2e_p50"], edge["e2e_p99"]) == (50.0, 99.0)
    assert live["samples"] and live["samples"][0]["trace_id"] == "t" * 32
    assert live["late"] == 7 and live["as_of"] == pytest.approx(now_us / 1e6)
    streams = {r["stream"]: r for r in live["lag"]}
    assert set(streams) == {"meshscope:flows", "meshscope:links", "meshscope:groups:lag"}
    assert all(r["regions"] == ["*"] for r in streams.values())

    async def idle() -> Any:  # a second with nothing to count still says where the collector stands
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        data = orjson.loads(msg["data"]) if msg else None
        return data if data and not data["edges"] else None

    quiet = await eventually(idle, 5)
    assert quiet["as_of"] is None and quiet["late"] == 0 and len(quiet["lag"]) == 3
    await pubsub.aclose()
    await client.aclose()


async def test_the_position_is_the_age_of_the_oldest_record_not_in_clickhouse(
    redis_url: str, redis_sync: redis.Redis
) -> None:
    from collector.position import position

    client = aioredis.Redis.from_url(redis_url)
    try:
        stream, group = "meshscope:flows", "pos"
        redis_sync.xgroup_create(stream, group, id="0", mkstream=True)
        assert (await position(client, stream, group)).lag_s == 0.0  # nothing waits
        assert (await position(client, "no-such-stream", group)).oldest_ms is None
        old_ms = time.time_ns() // 1_000_000 - 900_000  # entries written 15 minutes ago
        for i in range(5):
            redis_sync.xadd(stream, {"r": "[]"}, id=f"{old_ms + i}-0")
        at = await position(client, stream, group)
        assert at.unread == 5 and at.pending == 0 and at.lag_s == pytest.approx(900, abs=2)
        redis_sync.xreadgroup(group, "c", {stream: ">"}, count=2)  # read, not yet acknowledged
        at = await position(client, stream, group)
        assert (at.unread, at.pending) == (3, 2) and at.lag_s == pytest.approx(900, abs=2)
        redis_sync.xack(stream, group, f"{old_ms}-0", f"{old_ms + 1}-0")
        assert (await position(client, stream, group)).oldest_ms == old_ms + 2
        redis_sync.xreadgroup(group, "c", {stream: ">"})
        redis_sync.xack(stream, group, *[f"{old_ms + i}-0" for i in range(2, 5)])
        assert (await position(client, stream, group)).lag_s == 0.0
    finally:
        await client.aclose()


async def test_a_collector_publishes_its_position_per_stream_with_its_regions(
    redis_url: str, redis_sync: redis.Redis, run_collector: Any
) -> None:
    from collector.position import reports

    client = aioredis.Redis.from_url(redis_url)
    try:
        collector = await run_collector(region_stores=((A, redis_url), (C, redis_url)))  # one store holds both
        await collector.wait_ready(scaled(10))
        add_records(redis_sync, make_records(50))
        got = await eventually(lambda: reports(client), 5)
        assert {r.stream for r in got} == {"meshscope:flows", "meshscope:links", "meshscope:groups:lag"}
        assert all(r.regions == (A, C) and r.collector == "c1" and r.lag_s < 5 for r in got)
        assert (
            collector.health()["streams"]
            and collector.metrics.get("collector_lag_seconds", stream="meshscope:flows") is not None
        )
    finally:
        await client.aclose()


async def test_link_samples_left_unacknowledged_by_an_outage_or_a_dead_collector_are_stored(
    redis_url: str, redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    """A sync cut short leaves entries pending: they are read again, never left behind for good."""
    from collector.position import position

    now_us = time.time_ns() // 1000
    group = "meshscope-collectors-links"
    redis_sync.xgroup_create("meshscope:links", group, id="0", mkstream=True)
    for relay, consumer in (("own", "c1"), ("dead", "gone-collector")):
        sample = [now_us, relay, A, C, "up", 1.0, 0, 0, "mtls", "", "", ""]
        redis_sync.xadd("meshscope:links", {"v": "2", "r": orjson.dumps([sample])})
        redis_sync.xreadgroup(group, consumer, {"meshscope:links": ">"}, count=1)  # read, never acknowledged
    await run_collector()

    def stored() -> set[str]:
        try:
            return {r[0] for r in ch_admin.query(f"SELECT relay FROM `{database}`.links").result_rows}
        except Exception:  # the schema is still being made
            return set()

    await eventually(lambda: stored() >= {"own", "dead"}, 10)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert (await position(client, "meshscope:links", group)).lag_s == 0.0
    finally:
        await client.aclose()


async def test_links_and_regions_reach_clickhouse(mesh: Mesh, run_collector: Any, ch_admin: Any, database: str) -> None:
    await mesh.start([A, C], env={"MESHSCOPE_LINK_STATS_INTERVAL_S": "0.1"})
    collector = await run_collector()
    await collector.wait_ready(scaled(10))
    db = f"`{database}`"

    def links() -> list[Any]:
        return ch_admin.query(f"SELECT src_region, dst_region, state FROM {db}.links WHERE state = 'up'").result_rows

    rows = await eventually(lambda: {(r[0], r[1]) for r in links()} >= {(A, C), (C, A)} and links(), 10)
    assert rows
    regions = await eventually(
        lambda: (
            ch_admin.query(
                f"SELECT id, any(provider), any(lat), any(lon) FROM {db}.regions GROUP BY id ORDER BY id"
            ).result_rows
        ),
        5,
    )
    assert [r[0] for r in regions] == [A, C]
    assert regions[0][1] == "aws" and regions[0][2] == pytest.approx(38.94)


def test_migrations_are_idempotent(clickhouse_url: str, database: str) -> None:
    client = make_client(clickhouse_url)
    cfg = config("redis://unused", clickhouse_url, database)
    assert migrate(client, cfg.schema) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert migrate(client, cfg.schema) == []
    tables = {
        r[0]
        for r in client.query(
            "SELECT name FROM system.tables WHERE database = %(d)s", parameters={"d": database}
        ).result_rows
    }
    assert tables >= {
        "flows",
        "edge_minute",
        "edge_second",
        "pair_minute",
        "pair_hour",
        "trace_index",
        "links",
        "regions",
        "schema_migrations",
    }


async def test_collector_metrics_and_health(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str, http: httpx.AsyncClient
) -> None:
    from collector.serve import metrics_app
    from router.serve import Server

    collector = await run_collector()
    server = Server(metrics_app(collector))
    await server.start()
    try:
        add_records(redis_sync, make_records(300))
        await eventually(lambda: collector.metrics.get("collector_rows_inserted_total") == 300, 10)
        await asyncio.sleep(scaled(1.2))  # one lag sample
        text = (await http.get(server.url + "/metrics")).text
        assert "meshscope_collector_rows_inserted_total 300" in text
        assert "meshscope_collector_clickhouse_up 1" in text
        assert 'meshscope_collector_lag_seconds{stream="meshscope:flows"} 0.0' in text  # caught up
        # counters that never moved are there at 0, so rate() sees their first increment
        assert "meshscope_collector_redis_errors_total 0.0" in text
        assert 'meshscope_task_restarts_total{task="report"} 0.0' in text
        for name in (
            "collector_batch_rows",
            "collector_insert_seconds",
            "collector_stream_pending",
            "collector_stream_lag",
            "collector_dead_letters_total",
        ):
            assert f"# TYPE meshscope_{name} " in text
        health = await http.get(server.url + "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["reasons"] == []
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("host", "with_file", "outcome"),
    [
        ("127.0.0.1", False, "open"),
        ("::1", False, "open"),
        ("localhost", False, "open"),
        ("0.0.0.0", False, "refused"),
        ("10.0.0.7", False, "refused"),
        ("collector.internal", False, "refused"),
        ("0.0.0.0", True, "tokens"),
        ("127.0.0.1", True, "tokens"),
    ],
)
def test_metrics_beyond_loopback_need_a_principals_file(
    host: str, with_file: bool, outcome: str, tmp_path: Path
) -> None:
    from collector.serve import scrape_auth
    from meshcore.auth import new_token, principal_entry
    from meshcore.settings import SettingError

    path = tmp_path / "principals.toml"
    path.write_text(principal_entry("prometheus", new_token()))
    config = CollectorConfig(metrics_host=host, auth_file=str(path) if with_file else None)
    if outcome == "refused":
        with pytest.raises(SettingError, match="MESHSCOPE_AUTH_FILE"):
            scrape_auth(config)
    else:
        auth = scrape_auth(config)
        assert (auth is None) == (outcome == "open")


async def test_metrics_take_a_token_when_a_principals_file_is_set(
    run_collector: Any, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    from collector.serve import metrics_app, scrape_auth
    from meshcore.auth import new_token, principal_entry
    from router.serve import Server

    token = new_token()
    path = tmp_path / "principals.toml"
    path.write_text(principal_entry("prometheus", token))
    collector = await run_collector()
    server = Server(metrics_app(collector, scrape_auth(CollectorConfig(auth_file=str(path)))))
    await server.start()
    try:
        assert (await http.get(server.url + "/metrics")).status_code == 401
        wrong = await http.get(server.url + "/metrics", headers={"Authorization": f"Bearer {new_token()}"})
        assert wrong.status_code == 401
        right = await http.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200 and "meshscope_collector_rows_inserted_total" in right.text
        health = await http.get(server.url + "/healthz")  # answers anyone, ok or degraded
        assert health.status_code in (200, 503) and health.json()["status"] in ("ok", "degraded")
    finally:
        await server.stop()


def test_sigterm_stops_a_collector_process_through_its_cleanup(
    redis_url: str, redis_sync: redis.Redis, tmp_path: Path
) -> None:
    """SIGTERM is the process's: its metrics server must not swallow it or die of it alone."""
    import os
    import subprocess
    import sys
    import time

    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "CLICKHOUSE_URL": os.environ.get("CLICKHOUSE_URL") or f"chdb://{tmp_path}/clickhouse",
        "MESHSCOPE_COLLECTOR_METRICS_PORT": "0",
        "MESHSCOPE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "meshscope", "collector"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(60)
        while not redis_sync.exists("meshscope:flows") or not redis_sync.xinfo_groups("meshscope:flows"):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else b""
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(scaled(30)) == 0  # cancelled and cleaned up, not killed by the signal (-15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


async def test_a_collector_behind_keeps_clickhouse_busy_instead_of_waiting_for_a_whole_batch(
    redis_sync: redis.Redis, run_collector: Any, ch_admin: Any, database: str
) -> None:
    records = make_records(4000)
    add_records(redis_sync, records, per_entry=50)  # 80 entries: a backlog
    sizes: list[int] = []
    collector = await run_collector(batch_rows=1600, read_count=4, flush_interval_s=2.0)
    collector.after_insert = lambda batch: sizes.append(len(batch))
    await eventually(lambda: sum(sizes) == 4000, 15)
    # the first insert started with the first read (200 records, an eighth of a batch, nothing in flight):
    # waiting for 1,600 would have left ClickHouse idle while they were read and decoded
    assert sizes[0] == 200, sizes
    assert count(ch_admin, database) == 4000
    assert set(flow_keys(ch_admin, database).values()) == {1}
