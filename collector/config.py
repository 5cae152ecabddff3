"""The collector's configuration: one frozen dataclass built by ``CollectorConfig.from_env``."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlparse

from collector.clickhouse import is_embedded, resolve_url
from collector.schema import SchemaOptions
from meshcore import names
from meshcore import settings as s
from meshcore import storekeys as sk
from meshcore.freshness import ALL
from meshcore.settings import (
    MESHSCOPE_FLOW_SHARDS,
    MESHSCOPE_FLOW_STREAM,
    MESHSCOPE_REDIS_URL,
    MESHSCOPE_REGION_STORES,
    REDIS_URL,
)
from meshcore.tls import TlsFiles

CLICKHOUSE_URL = "CLICKHOUSE_URL"
"""ClickHouse server URL (``clickhouse://user:pass@host:8123/db``) or ``chdb://PATH``; unset: embedded."""
MESHSCOPE_CLICKHOUSE_URL = "MESHSCOPE_CLICKHOUSE_URL"
"""Same as CLICKHOUSE_URL, and wins over it."""
MESHSCOPE_DATA_DIR = "MESHSCOPE_DATA_DIR"
"""Where embedded ClickHouse keeps its data (default ``./.meshscope``)."""
MESHSCOPE_CLICKHOUSE_DATABASE = "MESHSCOPE_CLICKHOUSE_DATABASE"
"""Database holding the meshscope tables (default ``meshscope``, or the URL's path)."""
MESHSCOPE_CLICKHOUSE_CLUSTER = "MESHSCOPE_CLICKHOUSE_CLUSTER"
"""Cluster name: create Replicated tables with Distributed tables over them."""
MESHSCOPE_FLOWS_TTL_DAYS = "MESHSCOPE_FLOWS_TTL_DAYS"
"""Days raw flow records are kept."""
MESHSCOPE_REGION = "MESHSCOPE_REGION"
"""The region whose store this collector reads (MESHSCOPE_REDIS_URL): named in its health, lag and metrics."""
MESHSCOPE_COLLECTOR_GROUP = "MESHSCOPE_COLLECTOR_GROUP"
"""Redis consumer group the collectors share."""
MESHSCOPE_COLLECTOR_NAME = "MESHSCOPE_COLLECTOR_NAME"
"""This collector's consumer name (default: host name and pid)."""
MESHSCOPE_COLLECTOR_BATCH_ROWS = "MESHSCOPE_COLLECTOR_BATCH_ROWS"
"""Rows per ClickHouse insert at most."""
MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S = "MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S"
"""Longest a row waits before its batch is inserted."""
MESHSCOPE_COLLECTOR_READ_ENTRIES = "MESHSCOPE_COLLECTOR_READ_ENTRIES"
"""Stream entries (each up to MESHSCOPE_FLOW_BATCH records) read at a time."""
MESHSCOPE_COLLECTOR_CLAIM_IDLE_S = "MESHSCOPE_COLLECTOR_CLAIM_IDLE_S"
"""Entries pending this long on another consumer, and batch manifests this old, are taken over."""
MESHSCOPE_COLLECTOR_METRICS_PORT = "MESHSCOPE_COLLECTOR_METRICS_PORT"
"""Port of the collector's /metrics and /healthz (0: a free port; -1: none)."""
MESHSCOPE_COLLECTOR_METRICS_HOST = "MESHSCOPE_COLLECTOR_METRICS_HOST"
"""Address /metrics and /healthz listen on (default 127.0.0.1); any other needs MESHSCOPE_AUTH_FILE."""
MESHSCOPE_AUTH_FILE = "MESHSCOPE_AUTH_FILE"
"""Principals file (TOML); when set, /metrics takes a bearer token of any principal in it."""
MESHSCOPE_LIVE_CHANNEL = "MESHSCOPE_LIVE_CHANNEL"
"""Redis pub/sub channel for live edge statistics."""
MESHSCOPE_ALERTS = "MESHSCOPE_ALERTS"
"""Evaluate the alert rules in the collector (one evaluator at a time, elected in Redis); default true."""
MESHSCOPE_ALERT_RULES = "MESHSCOPE_ALERT_RULES"
"""TOML file of alert rules; unset: the built-in rules (the same as deploy/alerts.toml)."""
MESHSCOPE_ALERT_INTERVAL_S = "MESHSCOPE_ALERT_INTERVAL_S"
"""Seconds between two evaluations of the alert rules."""
MESHSCOPE_ALERT_LEADER_TTL_S = "MESHSCOPE_ALERT_LEADER_TTL_S"
"""An alert evaluator that stops renewing its lease is replaced after this many seconds."""
MESHSCOPE_ALERT_WEBHOOKS = "MESHSCOPE_ALERT_WEBHOOKS"
"""Comma-separated http(s) URLs that receive plain webhook notifications (the body Alertmanager sends receivers)."""
MESHSCOPE_ALERTMANAGERS = "MESHSCOPE_ALERTMANAGERS"
"""Comma-separated base URLs of Alertmanagers (http(s)://host:9093): alerts go to their API v2, /api/v2/alerts."""
MESHSCOPE_ALERTMANAGER_TOKEN = "MESHSCOPE_ALERTMANAGER_TOKEN"
"""Bearer token for the Alertmanagers: one for all, or comma-separated, one per Alertmanager (empty: none)."""
MESHSCOPE_ALERT_RESEND_S = "MESHSCOPE_ALERT_RESEND_S"
"""Seconds between two sends of the firing alerts to the Alertmanagers (keep it under their resolve_timeout)."""
MESHSCOPE_ALERT_WEBHOOK_TOKEN = "MESHSCOPE_ALERT_WEBHOOK_TOKEN"
"""Bearer token for the webhooks: one for all, or comma-separated, one per webhook (empty: none)."""
MESHSCOPE_ALERT_WEBHOOK_TIMEOUT_S = "MESHSCOPE_ALERT_WEBHOOK_TIMEOUT_S"
"""Seconds one webhook request may take."""
MESHSCOPE_ALERT_WEBHOOK_RETRY_S = "MESHSCOPE_ALERT_WEBHOOK_RETRY_S"
"""Seconds a notification is retried (exponential backoff with jitter) before it is given up."""
MESHSCOPE_ALERT_WEBHOOK_BACKOFF_S = "MESHSCOPE_ALERT_WEBHOOK_BACKOFF_S"
"""First retry delay of a notification; it doubles up to 60 s."""
MESHSCOPE_ALERT_QUEUE_MAX = "MESHSCOPE_ALERT_QUEUE_MAX"
"""Notifications waiting per webhook at most; beyond it the oldest is dropped (logged and counted)."""
MESHSCOPE_ALERT_EXTERNAL_URL = "MESHSCOPE_ALERT_EXTERNAL_URL"
"""The dashboard's URL as receivers reach it: externalURL and generatorURL of notifications."""


@dataclass(frozen=True)
class AlertConfig:
    """Alert evaluation and notification (collector.alerting)."""

    enabled: bool = True
    rules_file: str = ""
    interval_s: float = 15.0
    leader_ttl_s: float = 30.0
    webhooks: tuple[str, ...] = ()
    webhook_tokens: tuple[str, ...] = field(default=(), repr=False)
    """One per webhook ('' for none), or empty."""
    alertmanagers: tuple[str, ...] = ()
    """Alertmanager base URLs; alerts are posted to ``<url>/api/v2/alerts``."""
    alertmanager_tokens: tuple[str, ...] = field(default=(), repr=False)
    resend_s: float = 60.0
    """Firing alerts go to the Alertmanagers again this often; each says it ends after four of these."""
    webhook_timeout_s: float = 10.0
    webhook_retry_s: float = 300.0
    webhook_backoff_s: float = 1.0
    queue_max: int = 1000
    external_url: str = ""
    state_key: str = sk.ALERTS_STATE
    leader_key: str = sk.ALERTS_LEADER

    def token_for(self, index: int) -> str:
        return self.webhook_tokens[index] if index < len(self.webhook_tokens) else ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AlertConfig:
        d = cls()
        webhooks, tokens = _targets(env, MESHSCOPE_ALERT_WEBHOOKS, MESHSCOPE_ALERT_WEBHOOK_TOKEN, "webhook")
        managers, manager_tokens = _targets(env, MESHSCOPE_ALERTMANAGERS, MESHSCOPE_ALERTMANAGER_TOKEN, "Alertmanager")
        return cls(
            enabled=s.get_bool(env, MESHSCOPE_ALERTS, d.enabled),
            rules_file=s.get_str(env, MESHSCOPE_ALERT_RULES, d.rules_file),
            interval_s=s.get_float(env, MESHSCOPE_ALERT_INTERVAL_S, d.interval_s, 0.01),
            leader_ttl_s=s.get_float(env, MESHSCOPE_ALERT_LEADER_TTL_S, d.leader_ttl_s, 0.1),
            webhooks=webhooks,
            webhook_tokens=tokens,
            alertmanagers=tuple(url.rstrip("/") for url in managers),
            alertmanager_tokens=manager_tokens,
            resend_s=s.get_float(env, MESHSCOPE_ALERT_RESEND_S, d.resend_s, 0.1),
            webhook_timeout_s=s.get_float(env, MESHSCOPE_ALERT_WEBHOOK_TIMEOUT_S, d.webhook_timeout_s, 0.01),
            webhook_retry_s=s.get_float(env, MESHSCOPE_ALERT_WEBHOOK_RETRY_S, d.webhook_retry_s, 0.0),
            webhook_backoff_s=s.get_float(env, MESHSCOPE_ALERT_WEBHOOK_BACKOFF_S, d.webhook_backoff_s, 0.001),
            queue_max=s.get_int(env, MESHSCOPE_ALERT_QUEUE_MAX, d.queue_max, 1),
            external_url=s.get_str(env, MESHSCOPE_ALERT_EXTERNAL_URL, d.external_url).rstrip("/"),
        )


def _targets(env: Mapping[str, str], urls_name: str, tokens_name: str, what: str) -> tuple[tuple[str, ...], ...]:
    """(URLs, one token per URL) of one kind of notification target; SettingError naming the variable."""
    urls = s.get_list(env, urls_name)
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise s.SettingError(f"{urls_name}: {url!r} is not an http(s) URL")
    tokens = tuple(t.strip() for t in (env.get(tokens_name) or "").split(","))
    if len(tokens) == 1:
        tokens = tokens * len(urls)
    elif len(tokens) != len(urls):
        raise s.SettingError(
            f"{tokens_name} holds {len(tokens)} tokens for {len(urls)} {what}s: give one for all, or one per {what}"
        )
    return urls, tokens


@dataclass(frozen=True)
class CollectorConfig:
    """One collector reads one region's store (``redis_url``; ``region`` names it).

    ``region_stores`` lists every region's store: the dashboard reads each of them, and a collector
    running inside the dashboard (embedded ClickHouse) runs one loop per store (``for_each_region``).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    region: str = ""
    region_stores: tuple[tuple[str, str], ...] = ()
    clickhouse_url: str = ""
    database: str = "meshscope"
    cluster: str | None = None
    flows_ttl_days: int = 30
    data_dir: str = ".meshscope"
    stream: str = "meshscope:flows"
    flow_shards: int = 1
    group: str = "meshscope-collectors"
    consumer: str = ""
    batch_rows: int = 200_000
    flush_interval_s: float = 1.0
    claim_idle_s: float = 30.0
    read_count: int = 200
    metrics_port: int = 7410
    metrics_host: str = "127.0.0.1"
    auth_file: str | None = None
    tls: TlsFiles | None = None
    live_channel: str = "meshscope:live"
    dead_letter_stream: str = "meshscope:flows:dead"
    links_stream: str = "meshscope:links"
    alerts: AlertConfig = AlertConfig()

    @property
    def schema(self) -> SchemaOptions:
        return SchemaOptions(self.database, self.cluster, self.flows_ttl_days)

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions whose records the streams of ``redis_url`` hold, as the position reports name them:
        those ``region_stores`` places on it, else ``region``, else every region (one store for all)."""
        here = tuple(region for region, url in self.region_stores if url == self.redis_url)
        return here or ((self.region,) if self.region else (ALL,))

    def for_each_region(self) -> list[CollectorConfig]:
        """One config per region store (``region_stores``), or this one alone; alerts run in one of them only:
        the one reading ``redis_url`` (where the dashboard looks for them), else the first."""
        if not self.region_stores:
            return [self]
        home = next((r for r, url in self.region_stores if url == self.redis_url), self.region_stores[0][0])
        return [
            replace(
                self,
                redis_url=url,
                region=region,
                alerts=self.alerts if region == home else replace(self.alerts, enabled=False),
            )
            for region, url in self.region_stores
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> CollectorConfig:
        env = os.environ if environ is None else environ
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        data_dir = s.get_str(env, MESHSCOPE_DATA_DIR, d["data_dir"])
        url = resolve_url(env.get(MESHSCOPE_CLICKHOUSE_URL) or env.get(CLICKHOUSE_URL), data_dir)
        db_from_url = "" if is_embedded(url) else urlparse(url).path.strip("/")
        region = env.get(MESHSCOPE_REGION) or ""
        if region and not names.is_region_id(region):
            raise s.SettingError(f"{MESHSCOPE_REGION}: {region!r} is not a region id (e.g. aws:us-east-1)")
        config = cls(
            redis_url=env.get(MESHSCOPE_REDIS_URL) or env.get(REDIS_URL) or d["redis_url"],
            region=region,
            region_stores=s.get_region_urls(env, MESHSCOPE_REGION_STORES),
            clickhouse_url=url,
            database=s.get_str(env, MESHSCOPE_CLICKHOUSE_DATABASE, db_from_url or d["database"]),
            cluster=env.get(MESHSCOPE_CLICKHOUSE_CLUSTER) or None,
            flows_ttl_days=s.get_int(env, MESHSCOPE_FLOWS_TTL_DAYS, d["flows_ttl_days"], 1),
            data_dir=data_dir,
            stream=s.get_str(env, MESHSCOPE_FLOW_STREAM, d["stream"]),
            flow_shards=s.get_int(env, MESHSCOPE_FLOW_SHARDS, d["flow_shards"], 1),
            group=s.get_str(env, MESHSCOPE_COLLECTOR_GROUP, d["group"]),
            consumer=s.get_str(env, MESHSCOPE_COLLECTOR_NAME, f"{socket.gethostname()}-{os.getpid()}"),
            batch_rows=s.get_int(env, MESHSCOPE_COLLECTOR_BATCH_ROWS, d["batch_rows"], 1),
            flush_interval_s=s.get_float(env, MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S, d["flush_interval_s"], 0.001),
            claim_idle_s=s.get_float(env, MESHSCOPE_COLLECTOR_CLAIM_IDLE_S, d["claim_idle_s"], 0.01),
            read_count=s.get_int(env, MESHSCOPE_COLLECTOR_READ_ENTRIES, d["read_count"], 1),
            metrics_port=s.get_int(env, MESHSCOPE_COLLECTOR_METRICS_PORT, d["metrics_port"], -1),
            metrics_host=s.get_str(env, MESHSCOPE_COLLECTOR_METRICS_HOST, d["metrics_host"]),
            auth_file=env.get(MESHSCOPE_AUTH_FILE) or None,
            tls=TlsFiles.from_env(env),
            live_channel=s.get_str(env, MESHSCOPE_LIVE_CHANNEL, d["live_channel"]),
            alerts=AlertConfig.from_env(env),
        )
        return replace(config, **overrides)
