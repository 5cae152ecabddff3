"""The default alert rules on the demo's own traffic, for an hour: a healthy ``meshscope up`` pages nobody.

The demo's traffic is real: relays with the demo's link delays and governance, the demo's
simulator (its producers, subscribers, the billing group, malformed events and the legacy shop
that governance refuses), faults off (no injected delivery failures, no link flaps), and a
collector into ClickHouse. Half a minute of it is captured and laid end to end over the past
hour (each copy shifted back in time; the aggregates are fed from the copies as from any insert,
and the counters of the durable groups keep growing across copies), with a ``meshscope chaos``
probe group left stopped in it. The default rules are then evaluated every 30 s of that hour
(their shortest ``for`` is a minute), with the collector caught up, as the evaluator would.
Nothing may fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect

from collector.alertinputs import freshness_sql, inputs
from collector.alertrules import default_rules
from collector.alerts import FIRING, Alert, Observation, evaluate, observe, rule_sql
from collector.clickhouse import make_client, migrate
from collector.config import AlertConfig, CollectorConfig
from collector.schema import SchemaOptions
from collector.service import Collector
from collector.sync import GROUP_COLUMNS
from meshcore.auth import new_token, principal_entry
from meshcore.freshness import LagReport
from meshcore.server import bind
from meshscope.up import GOVERNANCE
from router.regions import resolve, rtt_ms
from router.simulator import Simulator, SimulatorConfig
from tests.conftest import AUTH, TEST_TOKEN, Mesh, eventually, scaled, write_principals

REGIONS = ["aws:us-east-1", "gcp:europe-west1", "azure:southeastasia"]
DEMO_RATE_PER_REGION = 200 / 6  # meshscope up: 200 events/s over six regions
CAPTURE_S = 20
HOUR_S = 3600
STEP_S = 30
LEGACY_TOKEN = new_token()


def demo_governance() -> dict[str, Any]:
    """The demo's policies and schemas, with the tests' producers in the place of the simulator's."""
    text = orjson.dumps(GOVERNANCE).replace(b"group:producers", b"group:testers")
    out: dict[str, Any] = orjson.loads(text)
    return out


async def test_a_healthy_demo_fires_no_alert_in_its_first_hour(
    mesh: Mesh, redis_url: str, clickhouse_url: str, database: str, ch_admin: Any
) -> None:
    mesh.regions = sorted(REGIONS)
    write_principals(mesh.auth_file, REGIONS, principal_entry("legacy-shop", LEGACY_TOKEN, ["legacy"], []))
    regions = [resolve(r) for r in REGIONS]
    socks = {r.id: bind() for r in regions}
    for region in regions:  # the demo's one-way delays (half the regions' round trip), faults off
        delays = ",".join(f"{o.id}={rtt_ms(region, o) / 2}" for o in regions if o.id != region.id)
        env = {"MESHSCOPE_LINK_STATS_INTERVAL_S": "1", "MESHSCOPE_FAILURE_RATE": "0", "MESHSCOPE_LINK_DELAYS": delays}
        peers = tuple(mesh.peer_url(r, s.getsockname()[1]) for r, s in socks.items() if r != region.id)
        await mesh.start_one(region.id, sock=socks[region.id], env=env, peers=peers)
    for region_id in REGIONS:
        await eventually(lambda r=region_id: mesh.all_links_up(r), 10)
    async with httpx.AsyncClient(timeout=scaled(10), headers=AUTH) as http:
        reply = await http.put(f"{mesh[REGIONS[0]].url}/v1/governance", json=demo_governance())
        assert reply.status_code == 200, reply.text
    # a probe group, as meshscope chaos makes them, left with a backlog and no member: it must not page
    probe = f"{mesh[REGIONS[1]].ws_url}/v1/subscribe?topic=orders.>&group=chaosprobe&consumer=p&probe=true"
    async with connect(probe, additional_headers=AUTH):
        pass
    store = CollectorConfig(redis_url=redis_url, clickhouse_url=clickhouse_url, database=database, consumer="demo",
                            flush_interval_s=0.5, metrics_port=-1, alerts=AlertConfig(enabled=False))  # fmt: skip
    redis = aioredis.Redis.from_url(redis_url)
    collector = Collector(store, redis)
    collecting = asyncio.create_task(collector.run())
    relays = {r: mesh[r].ws_url for r in REGIONS}
    rate = DEMO_RATE_PER_REGION * len(REGIONS)
    simulator = Simulator(SimulatorConfig(relays, rate_per_s=rate, seed=7, token=TEST_TOKEN, bad_token=LEGACY_TOKEN))
    traffic = asyncio.create_task(simulator.run())
    try:
        await collector.wait_ready(scaled(20))
        await asyncio.sleep(3)  # interest spreads, the first events flow
        start = time.time()
        await asyncio.sleep(CAPTURE_S)
        end = time.time()
        traffic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await traffic
        assert simulator.sent > CAPTURE_S * rate * 0.8 and simulator.refused_by_governance > 0
        await eventually(lambda: collector.positions and collector.positions[0].lag_s == 0, 20)
    finally:
        traffic.cancel()
        collector.stop()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(collecting, scaled(20))
        await redis.aclose()
    began = time.monotonic()
    await asyncio.to_thread(lay_over_the_past_hour, clickhouse_url, database, start, end)
    laid_s = time.monotonic() - began
    fired, pending = await asyncio.to_thread(evaluate_the_hour, clickhouse_url, database, end)
    print(f"laid an hour in {laid_s:.1f} s, evaluated it in {time.monotonic() - began - laid_s:.1f} s;",
          f"pending at some point: {sorted(pending)}")  # fmt: skip
    assert fired == [], fired


def lay_over_the_past_hour(url: str, db: str, start: float, end: float) -> None:
    """Copies of [start, end) of flows, links and group samples, shifted back to fill the hour before ``end``."""
    client = make_client(url)
    try:
        migrate(client, SchemaOptions(db))
        span = int(end - start)
        copies = HOUR_S // span + 1
        offset = 0  # copy k is the capture k spans earlier
        columns = [r[0] for r in client.query(f"DESCRIBE TABLE `{db}`.`flows`").result_rows]
        shifted = ", ".join(f"ts + toIntervalSecond({offset} - k * {span})" if c == "ts" else f"`{c}`" for c in columns)
        client.command(
            f"INSERT INTO `{db}`.`flows` ({', '.join(f'`{c}`' for c in columns)}) SELECT {shifted} "
            f"FROM `{db}`.`flows` ARRAY JOIN range(1, {copies}) AS k "
            f"WHERE ts >= toDateTime64({start}, 6) AND ts < toDateTime64({end}, 6)",
            settings={"max_insert_threads": 2},
        )
        # link samples as they were; group counters go on growing copy after copy
        client.command(
            f"INSERT INTO `{db}`.`links` SELECT * REPLACE (ts + toIntervalSecond({offset} - k * {span}) AS ts) "
            f"FROM `{db}`.`links` ARRAY JOIN range(1, {copies}) AS k "
            f"WHERE ts >= toDateTime64({start}, 6) AND ts < toDateTime64({end}, 6)"
        )
        window = f"ts >= toDateTime64({start}, 6) AND ts < toDateTime64({end}, 6)"
        grow = {"acked": "acked", "added": "added"}
        picked = ", ".join(
            f"ts + toIntervalSecond({offset} - k * {span})" if c == "ts"
            else f"toUInt64(greatest(0, toInt64({c}) - toInt64(k) * g.d))" if c in grow
            else f"`{c}`"
            for c in GROUP_COLUMNS
        )  # fmt: skip
        client.command(
            f"INSERT INTO `{db}`.`group_lag` ({', '.join(f'`{c}`' for c in GROUP_COLUMNS)}) SELECT {picked} "
            f"FROM `{db}`.`group_lag` ARRAY JOIN range(1, {copies}) AS k "
            f"JOIN (SELECT region, `group`, toInt64(max(acked)) - toInt64(min(acked)) AS d FROM `{db}`.`group_lag` "
            f"WHERE {window} GROUP BY region, `group`) AS g USING (region, `group`) WHERE {window}"
        )
    finally:
        client.close()


def evaluate_the_hour(url: str, db: str, now: float) -> tuple[list[str], set[str]]:
    """The default rules every STEP_S over the hour before ``now``, with a caught-up collector: (fired, ever
    pending). The evaluation at t reads nothing after t."""
    client = make_client(url)
    rules = default_rules()
    alerts: dict[str, Alert] = {}
    fired: list[str] = []
    pending: set[str] = set()
    try:
        for t in range(int(now - HOUR_S) + STEP_S, int(now) + 1, STEP_S):
            fresh = inputs([LagReport("meshscope:flows", ("*",), t, 0.5)], query(client, freshness_sql(db, t)), t)
            answers: dict[str, list[Any]] = {}
            seen: dict[str, list[Observation] | None] = {}
            for rule in rules:
                sql = rule_sql(rule, db, t)
                rows = answers[sql] = answers[sql] if sql in answers else query(client, sql)
                seen[rule.id] = observe(rule, rows, t, fresh)
            result = evaluate(rules, seen, alerts, t)
            alerts = result.alerts
            for tr in result.transitions:
                if tr.state == FIRING:
                    fired.append(f"{tr.alert.alertname} {dict(tr.alert.labels)}: {tr.alert.summary}")
            pending |= {a.alertname for a in alerts.values()}
    finally:
        client.close()
    return fired, pending


def query(client: Any, sql: str) -> list[Any]:
    rows: list[Any] = client.query(sql).result_rows
    return rows
