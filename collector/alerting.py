"""The alert evaluator: one per mesh, elected in Redis, evaluating the rules against ClickHouse.

    every ttl/3:  SET meshscope:alerts:leader <me> NX PX ttl, or renew the lease when it is mine
    every interval, the leader:
        alerts   <- HGETALL meshscope:alerts:state
        fresh    <- the collectors' positions in every region's store and each region's newest samples
                    (collector.alertinputs)
        rows     <- one query per rule, on a ClickHouse client of its own
        alerts', transitions <- collector.alerts.evaluate(...)
        INSERT transitions INTO alerts          (one row each; a deduplication token)
        alerts' -> meshscope:alerts:state       (one script, only while the lease is ours)
        firing and resolved transitions -> webhooks; firing alerts (every resend_s) -> Alertmanagers

The states live in Redis, so a restarted or newly elected evaluator goes on from them and
fires nothing twice. A leader that dies stops renewing; another instance takes over within the
lease. A leader stopping cleanly gives the lease up at once. Redis or ClickHouse down: the loop
backs off and tries again for as long as it takes, and ``problems()`` says what fails; a rule
whose query ClickHouse refuses keeps its alerts as they are. If Redis fails after the insert and
before the states are saved, the next evaluation writes those transitions again: history rows
are at least once, notifications at most once per transition from a saved state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError
from redis.exceptions import RedisError

from collector.alertinputs import freshness_sql, inputs
from collector.alertrules import SEVERITIES, Rule, load_rules
from collector.alerts import (
    ALERT_COLUMNS,
    FIRING,
    PENDING,
    RESOLVED,
    STATES,
    Alert,
    Observation,
    Transition,
    alert_rows,
    alert_view,
    evaluate,
    observe,
    order,
    rule_sql,
)
from collector.clickhouse import make_client
from collector.config import CollectorConfig
from collector.errors import ClickHouseUnavailable, QueryError, StreamUnavailable
from collector.notify import ALERTMANAGER, WebhookNotifier, alertmanager_alerts, payloads
from collector.position import RegionPositions
from meshcore import storekeys as sk
from meshcore.backoff import backoff_s
from meshcore.metrics import Registry

log = logging.getLogger(__name__)

STATE_KEY = sk.ALERTS_STATE
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RESIGN = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_SAVE = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('del', KEYS[2])
for i = 2, #ARGV, 2 do redis.call('hset', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""


class AlertEvaluator:
    """Evaluates the alert rules while this instance holds the lease; ``run()`` never returns."""

    def __init__(
        self,
        config: CollectorConfig,
        redis_client: aioredis.Redis,
        metrics: Registry | None = None,
        rules: Sequence[Rule] | None = None,
        ready: asyncio.Event | None = None,
        client_factory: Callable[[], Client] | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config.alerts
        self.database = config.database
        self.redis = redis_client
        self.positions = RegionPositions(config, redis_client, "the alert evaluator")
        self._legacy_state = False  # alert states were read from their key of before the tag
        """The collectors' positions in every region's store: how fresh each region's flow history is."""
        self.rules = tuple(rules) if rules is not None else load_rules(config.alerts.rules_file)
        self.instance = f"{config.consumer or socket.gethostname()}/{secrets.token_hex(4)}"
        self._factory = client_factory or (lambda: make_client(config.clickhouse_url))
        self._client: Client | None = None
        self._ready = ready
        self.clock = clock
        self.metrics = m = metrics or Registry()
        m.describe("alerts_evaluations_total", "counter", "Evaluations of the alert rules by this instance")
        m.describe("alerts_evaluation_errors_total", "counter", "Failed evaluation steps, by dependency")
        m.describe("alerts_evaluation_seconds", "gauge", "Duration of the last evaluation")
        m.describe("alerts_transitions_total", "counter", "Alert state transitions, by the state entered")
        m.describe("alerts_firing", "gauge", "Alerts firing, by severity (on the evaluating instance)")
        m.describe("alerts_pending", "gauge", "Alerts pending (on the evaluating instance)")
        m.describe("alerts_leader", "gauge", "1 while this instance evaluates the alert rules")
        m.zero("alerts_evaluations_total")
        for dependency in ("redis", "clickhouse", "query"):
            m.zero("alerts_evaluation_errors_total", dependency=dependency)
        for state in STATES:
            m.zero("alerts_transitions_total", state=state)
        c = self.config
        self.notifier = WebhookNotifier(
            c.webhooks, c.webhook_tokens, m, c.webhook_timeout_s, c.webhook_retry_s, c.webhook_backoff_s, c.queue_max,
            alertmanagers=c.alertmanagers, alertmanager_tokens=c.alertmanager_tokens,
        )  # fmt: skip
        self._sent_at = 0.0
        """When the firing alerts last went to the Alertmanagers."""
        self.leader = False
        self.last_evaluation = 0.0
        self.evaluations = 0
        self._counts = {FIRING: 0, PENDING: 0}
        self._errors: dict[str, str] = {}

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold or wait for the lease and evaluate, until cancelled; outages are waited out."""
        if self._ready is not None:
            await self._ready.wait()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.notifier.run())
                await self._loop()
        finally:
            await self._resign()
            await self.positions.close()
            if self._client is not None:
                client, self._client = self._client, None
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(client.close)

    async def _loop(self) -> None:
        lease_every_s = self.config.leader_ttl_s / 3
        next_lease = next_eval = 0.0
        failures = {"redis": 0, "clickhouse": 0}
        while True:
            try:
                if time.monotonic() >= next_lease:
                    next_lease = time.monotonic() + lease_every_s
                    was = self.leader
                    if await self._lease() and not was:
                        log.info("this instance evaluates the alert rules", extra={"instance": self.instance})
                        next_eval = 0.0
                    self._errors.pop("redis", None)
                    failures["redis"] = 0
                if self.leader and time.monotonic() >= next_eval:
                    next_eval = time.monotonic() + self.config.interval_s
                    await self._cycle()
                    failures["clickhouse"] = 0
            except (StreamUnavailable, ClickHouseUnavailable, QueryError) as exc:
                what = "redis" if isinstance(exc, StreamUnavailable) else "clickhouse"
                if what not in self._errors:
                    log.warning("alert evaluation failed; retrying", extra={"dependency": what, "error": str(exc)})
                self._errors[what] = str(exc)[:300]
                self.metrics.inc("alerts_evaluation_errors_total", dependency=what)
                delay = backoff_s(failures[what], 0.2, max(0.2, min(5.0, self.config.interval_s)), random.random())
                failures[what] += 1
                if what == "redis":
                    self._follow()
                    next_lease = time.monotonic() + delay
                else:
                    next_eval = time.monotonic() + delay
            wake = min(next_lease, next_eval) if self.leader else next_lease
            await asyncio.sleep(max(0.005, wake - time.monotonic()))

    def _follow(self) -> None:
        if self.leader:
            log.warning("this instance no longer evaluates the alert rules", extra={"instance": self.instance})
        self.leader = False
        self._errors = {what: error for what, error in self._errors.items() if what == "redis"}  # the leader's only
        self.metrics.set("alerts_leader", 0)
        for severity in SEVERITIES:
            self.metrics.set("alerts_firing", 0, severity=severity)
        self.metrics.set("alerts_pending", 0)

    async def _cycle(self) -> None:
        started = time.perf_counter()
        now = self.clock()
        previous = await self._load()
        positions, stores = await self.positions.read()
        fresh = inputs(positions, await self._query(freshness_sql(self.database, now)), now, stores)
        observations: dict[str, list[Observation] | None] = {}
        answers: dict[str, list[Any]] = {}  # rules that ask the same question share its answer
        for rule in self.rules:
            sql = rule_sql(rule, self.database, now)
            try:
                rows = answers[sql] if sql in answers else await self._query(sql)
            except QueryError as exc:
                if f"rule {rule.id}" not in self._errors:
                    log.error("alert rule query refused", extra={"rule": rule.id, "error": str(exc)[:300]})
                self._errors[f"rule {rule.id}"] = str(exc)[:300]
                self.metrics.inc("alerts_evaluation_errors_total", dependency="query")
                observations[rule.id] = None
                continue
            answers[sql] = rows
            self._errors.pop(f"rule {rule.id}", None)
            observations[rule.id] = observe(rule, rows, now, fresh)
        result = evaluate(self.rules, observations, previous, now)
        if result.transitions:
            await self._insert(alert_rows(result.transitions))
        if not await self._save(result.alerts):
            self._follow()
            return
        self._errors.pop("clickhouse", None)
        for t in result.transitions:
            self.metrics.inc("alerts_transitions_total", state=t.state)
        for message in payloads(result.transitions, self.config.external_url):
            self.notifier.submit(message)
        self._to_alertmanagers(result.alerts, result.transitions, now)
        self.evaluations += 1
        self.last_evaluation = now
        self._counts = {s: sum(a.state == s for a in result.alerts.values()) for s in (FIRING, PENDING)}
        self.metrics.inc("alerts_evaluations_total")
        self.metrics.set("alerts_evaluation_seconds", time.perf_counter() - started)
        for severity in SEVERITIES:
            n = sum(a.state == FIRING and a.severity == severity for a in result.alerts.values())
            self.metrics.set("alerts_firing", n, severity=severity)
        self.metrics.set("alerts_pending", self._counts[PENDING])

    def _to_alertmanagers(self, alerts: dict[str, Alert], transitions: list[Transition], now: float) -> None:
        """Every firing alert, on a change or once a resend interval has passed; resolved ones once."""
        if not self.notifier.wants(ALERTMANAGER):
            return
        changed = any(t.state in (FIRING, RESOLVED) for t in transitions)
        if not changed and now - self._sent_at < self.config.resend_s:
            return
        resolved = [t for t in transitions if t.state == RESOLVED]
        body = alertmanager_alerts(list(alerts.values()), resolved, now, self.config.resend_s, self.config.external_url)
        self._sent_at = now
        if body:
            self.notifier.submit(body, ALERTMANAGER)

    # ---- ClickHouse ----------------------------------------------------------------------------

    def _call(self, call: Callable[[Client], Any]) -> Any:
        """Run ``call`` on this evaluator's client (on a worker thread); errors translated here."""
        if self._client is None:
            self._client = self._factory()
        try:
            return call(self._client)
        except OperationalError as exc:
            raise ClickHouseUnavailable(str(exc)) from exc
        except (DatabaseError, Error) as exc:
            raise QueryError(str(exc)) from exc

    async def _query(self, sql: str) -> list[Any]:
        return await asyncio.to_thread(self._call, lambda client: client.query(sql).result_rows)

    async def _insert(self, rows: list[list[Any]]) -> None:
        token = hashlib.sha256(orjson.dumps(rows, default=str)).hexdigest()
        table = f"`{self.database}`.`alerts`"

        def insert(client: Client) -> None:
            client.insert(table, rows, column_names=ALERT_COLUMNS, settings={"insert_deduplication_token": token})

        await asyncio.to_thread(self._call, insert)

    # ---- Redis ---------------------------------------------------------------------------------

    async def _lease(self) -> bool:
        """Take the lease when free, renew it when ours; whether this instance leads now."""
        ttl_ms = max(1, int(self.config.leader_ttl_s * 1000))
        key = self.config.leader_key
        try:
            mine = bool(await self.redis.set(key, self.instance, nx=True, px=ttl_ms))
            if not mine:
                mine = bool(await self.redis.eval(_RENEW, 1, key, self.instance, ttl_ms))
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(f"cannot hold the alert evaluator lease: {exc}") from exc
        if not mine:
            self._follow()
        self.leader = mine
        self.metrics.set("alerts_leader", int(mine))
        return mine

    async def _resign(self) -> None:
        if not self.leader:
            return
        self._follow()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.redis.eval(_RESIGN, 1, self.config.leader_key, self.instance),
                1.0,
            )

    async def _load(self) -> dict[str, Alert]:
        try:
            raw: Any = await self.redis.hgetall(self.config.state_key)
            if not raw and self.config.state_key == sk.ALERTS_STATE:
                # states saved before the keys had a tag: taken over, and removed at the next save
                raw = await self.redis.hgetall(sk.LEGACY_ALERTS_STATE)
                self._legacy_state = bool(raw)
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(f"cannot read alert states: {exc}") from exc
        return parse_states(raw)

    async def _save(self, alerts: dict[str, Alert]) -> bool:
        args: list[Any] = [self.instance]
        for fp, alert in alerts.items():
            args += [fp, orjson.dumps(alert.to_json())]
        keys = (self.config.leader_key, self.config.state_key)
        try:
            saved = await self.redis.eval(_SAVE, 2, *keys, *args)
        except (RedisError, OSError) as exc:
            raise StreamUnavailable(f"cannot save alert states: {exc}") from exc
        if not saved:
            log.warning("the alert evaluator lease passed to another instance; evaluation discarded")
        elif self._legacy_state:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(sk.LEGACY_ALERTS_STATE)
                self._legacy_state = False
        return bool(saved)

    # ---- what the collector reports ------------------------------------------------------------

    async def drain(self, timeout_s: float) -> bool:
        """Give queued notifications up to ``timeout_s`` to go out (at shutdown)."""
        return await self.notifier.drain(timeout_s)

    def problems(self) -> list[str]:
        """What keeps evaluation from working, as sentences for /healthz (webhooks are in ``health()``)."""
        return [f"alerts: {what}: {error}" for what, error in sorted(self._errors.items())]

    def health(self) -> dict[str, Any]:
        return {
            "role": "leader" if self.leader else "follower",
            "instance": self.instance,
            "rules": len(self.rules),
            "interval_s": self.config.interval_s,
            "last_evaluation": self.last_evaluation or None,
            "evaluations": self.evaluations,
            "firing": self._counts[FIRING] if self.leader else None,
            "pending": self._counts[PENDING] if self.leader else None,
            "problems": self.problems(),
            "webhooks": self.notifier.health(),
        }


def parse_states(raw: dict[Any, Any]) -> dict[str, Alert]:
    """Alerts from the Redis hash; an entry that is not one is logged and skipped."""
    out = {}
    for key, value in raw.items():
        fp = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[fp] = Alert.from_json(orjson.loads(value))
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.warning("unreadable alert state skipped", extra={"fingerprint": fp, "error": str(exc)[:300]})
    return out


async def firing(redis_client: aioredis.Redis, key: str = STATE_KEY) -> list[dict[str, Any]]:
    """The current alerts (firing, then pending), as ``collector.alerts.alert_view`` shapes them.

    Each: fingerprint, alertname, severity, state (firing or pending), labels (alertname,
    severity, and src/dst/topic/region/group/principal/status as the rule has them), value,
    since (Unix seconds: firing since, or pending since), active_at, summary, description,
    updated_at (the evaluation that last saw it). StreamUnavailable when Redis does not answer.
    """
    try:
        raw: Any = await redis_client.hgetall(key)
    except (RedisError, OSError) as exc:
        raise StreamUnavailable(f"cannot read alert states: {exc}") from exc
    return order([alert_view(alert) for alert in parse_states(raw).values()])


# ---- the alert history (for the dashboard's drill-downs) ------------------------------------------

HISTORY_LIMIT_MAX = 10_000


def history_sql(
    db: str,
    *,
    src: str | None = None,
    dst: str | None = None,
    region: str | None = None,
    group: str | None = None,
    alertname: str | None = None,
    fingerprint: str | None = None,
    since_s: float | None = None,
    until_s: float | None = None,
    limit: int = 200,
) -> tuple[str, dict[str, Any]]:
    """(SQL, parameters) for the alert history, newest first; ``shape_history`` reads its rows.

    ``src`` and ``dst``: one edge (its edge and link alerts); ``region`` alone: everything on or
    touching the region; ``region`` and ``group``: one durable group.
    """
    where, params = [], {}
    for column, value in (("src_region", src), ("dst_region", dst), ("`group`", group), ("alertname", alertname)):
        if value is not None:
            name = column.strip("`")
            where.append(f"{column} = %({name})s")
            params[name] = value
    if region is not None:
        params["region"] = region
        alone = src is None and dst is None and group is None
        where.append("(src_region = %(region)s OR dst_region = %(region)s)" if alone else "src_region = %(region)s")
    if fingerprint is not None:
        where.append("fingerprint = %(fingerprint)s")
        params["fingerprint"] = fingerprint
    if since_s is not None:
        where.append(f"ts >= fromUnixTimestamp64Milli(toInt64({int(since_s * 1000)}))")
    if until_s is not None:
        where.append(f"ts < fromUnixTimestamp64Milli(toInt64({int(until_s * 1000)}))")
    limit = max(1, min(HISTORY_LIMIT_MAX, int(limit)))
    sql = (
        f"SELECT toUnixTimestamp64Milli(ts), alertname, fingerprint, state, severity, labels, value, summary, "
        f"description, toUnixTimestamp64Milli(starts_at), toUnixTimestamp64Milli(ends_at) FROM `{db}`.`alerts`"
        f"{' WHERE ' + ' AND '.join(where) if where else ''} ORDER BY ts DESC, fingerprint LIMIT {limit}"
    )
    return sql, params


def shape_history(rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """The rows of ``history_sql`` as transitions: times in Unix seconds, ``ends_at`` None while open."""
    return [
        {
            "ts": ts / 1000, "alertname": name, "fingerprint": fp, "state": state, "severity": severity,
            "labels": dict(labels), "value": value, "summary": summary, "description": description,
            "starts_at": starts / 1000, "ends_at": ends / 1000 if ends else None,
        }
        for ts, name, fp, state, severity, labels, value, summary, description, starts, ends in rows
    ]  # fmt: skip
