"""The relay's configuration: one frozen dataclass built by ``RelayConfig.from_env``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from meshcore import settings as s
from meshcore.settings import MESHSCOPE_FLOW_STREAM, MESHSCOPE_REDIS_URL, REDIS_URL
from router.regions import Region, resolve

MESHSCOPE_REGION = "MESHSCOPE_REGION"
"""This relay's region id, ``provider:name`` (required)."""
MESHSCOPE_LAT = "MESHSCOPE_LAT"
"""Latitude of the region, for regions not in the built-in table."""
MESHSCOPE_LON = "MESHSCOPE_LON"
"""Longitude of the region, for regions not in the built-in table."""
MESHSCOPE_RELAY_NAME = "MESHSCOPE_RELAY_NAME"
"""A name for this relay process (default: ``relay-<region>``)."""
MESHSCOPE_HOST = "MESHSCOPE_HOST"
"""Interface the relay listens on (default 127.0.0.1)."""
MESHSCOPE_PORT = "MESHSCOPE_PORT"
"""Port the relay listens on (default 7400; 0 picks a free one)."""
MESHSCOPE_PEERS = "MESHSCOPE_PEERS"
"""Comma-separated base URLs of the peer relays (``ws://host:port``)."""
MESHSCOPE_FLOW_STREAM_MAXLEN = "MESHSCOPE_FLOW_STREAM_MAXLEN"
"""Entries the flow stream keeps before trimming (approximate; trimming is counted)."""
MESHSCOPE_FLOW_QUEUE_MAX = "MESHSCOPE_FLOW_QUEUE_MAX"
"""Flow records held in memory before publishing is refused with 429."""
MESHSCOPE_FLOW_BATCH = "MESHSCOPE_FLOW_BATCH"
"""Flow records packed into one stream entry at most."""
MESHSCOPE_FLOW_FLUSH_INTERVAL_S = "MESHSCOPE_FLOW_FLUSH_INTERVAL_S"
"""Longest a flow record waits in memory before it is written."""
MESHSCOPE_MAX_BODY_BYTES = "MESHSCOPE_MAX_BODY_BYTES"
"""Largest POST body or stream frame accepted (413 above it)."""
MESHSCOPE_MAX_EVENT_BYTES = "MESHSCOPE_MAX_EVENT_BYTES"
"""Largest single event accepted (413 above it)."""
MESHSCOPE_SUBSCRIBER_BUFFER = "MESHSCOPE_SUBSCRIBER_BUFFER"
"""Events buffered per live subscriber; past it events are dropped with ``backpressure``."""
MESHSCOPE_LINK_QUEUE_MAX = "MESHSCOPE_LINK_QUEUE_MAX"
"""Events queued per mesh link (sent or waiting) before new ones drop with ``link_down``."""
MESHSCOPE_LINK_BATCH = "MESHSCOPE_LINK_BATCH"
"""Events per EVENTS frame at most."""
MESHSCOPE_LINK_BACKOFF_BASE_S = "MESHSCOPE_LINK_BACKOFF_BASE_S"
"""First reconnect delay; it doubles per failed attempt."""
MESHSCOPE_LINK_BACKOFF_MAX_S = "MESHSCOPE_LINK_BACKOFF_MAX_S"
"""Longest reconnect delay."""
MESHSCOPE_PING_INTERVAL_S = "MESHSCOPE_PING_INTERVAL_S"
"""Seconds between RTT probes on each link."""
MESHSCOPE_LINK_DELAYS = "MESHSCOPE_LINK_DELAYS"
"""Simulated one-way delays, ``region=ms,...``, for demos on one machine."""
MESHSCOPE_DEDUP_WINDOW = "MESHSCOPE_DEDUP_WINDOW"
"""How many (source, id) pairs the relay remembers to drop duplicates."""
MESHSCOPE_TRACE_SAMPLE_RATIO = "MESHSCOPE_TRACE_SAMPLE_RATIO"
"""Share of traces that get OTel SDK hop spans (ids are in every flow record regardless)."""
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""OTLP/HTTP endpoint; hop spans are exported only when it is set."""
MESHSCOPE_FAILURE_RATE = "MESHSCOPE_FAILURE_RATE"
"""Share of local deliveries failed on purpose (demo fault injection; default 0)."""
MESHSCOPE_CHAOS_FLAP_INTERVAL_S = "MESHSCOPE_CHAOS_FLAP_INTERVAL_S"
"""Mean seconds between dropping one random mesh link on purpose (demo fault injection; 0: never)."""
MESHSCOPE_LINK_STATS_INTERVAL_S = "MESHSCOPE_LINK_STATS_INTERVAL_S"
"""Seconds between link state samples written to the ``meshscope:links`` stream."""


@dataclass(frozen=True)
class RelayConfig:
    region: Region
    relay_name: str
    host: str = "127.0.0.1"
    port: int = 7400
    peers: tuple[str, ...] = ()
    redis_url: str = "redis://127.0.0.1:6379/0"
    flow_stream: str = "meshscope:flows"
    flow_stream_maxlen: int = 1_000_000
    flow_queue_max: int = 200_000
    flow_batch: int = 500
    flow_flush_interval_s: float = 0.05
    max_body_bytes: int = 1 << 20
    max_event_bytes: int = 256 << 10
    subscriber_buffer: int = 1000
    link_queue_max: int = 100_000
    link_batch: int = 100
    link_backoff_base_s: float = 0.1
    link_backoff_max_s: float = 5.0
    ping_interval_s: float = 1.0
    link_delays_ms: dict[str, float] = field(default_factory=dict)
    dedup_window: int = 200_000
    trace_sample_ratio: float = 0.01
    otlp_endpoint: str | None = None
    failure_rate: float = 0.0
    chaos_flap_interval_s: float = 0.0
    link_stats_interval_s: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelayConfig:
        env = os.environ if environ is None else environ
        region_id = overrides.pop("region_id", None) or env.get(MESHSCOPE_REGION)
        if not region_id:
            raise s.SettingError(f"{MESHSCOPE_REGION} is required (e.g. aws:us-east-1)")
        try:
            region = resolve(
                region_id, s.get_optional_float(env, MESHSCOPE_LAT), s.get_optional_float(env, MESHSCOPE_LON)
            )
        except s.SettingError:
            raise
        except ValueError as exc:
            raise s.SettingError(f"{exc} ({MESHSCOPE_LAT}, {MESHSCOPE_LON})") from None
        d: dict[str, Any] = {f.name: f for f in fields(cls)}
        config = cls(
            region=region,
            relay_name=s.get_str(env, MESHSCOPE_RELAY_NAME, f"relay-{region_id}"),
            host=s.get_str(env, MESHSCOPE_HOST, d["host"].default),
            port=s.get_int(env, MESHSCOPE_PORT, d["port"].default),
            peers=s.get_list(env, MESHSCOPE_PEERS),
            redis_url=env.get(MESHSCOPE_REDIS_URL) or env.get(REDIS_URL) or d["redis_url"].default,
            flow_stream=s.get_str(env, MESHSCOPE_FLOW_STREAM, d["flow_stream"].default),
            flow_stream_maxlen=s.get_int(env, MESHSCOPE_FLOW_STREAM_MAXLEN, d["flow_stream_maxlen"].default, 1),
            flow_queue_max=s.get_int(env, MESHSCOPE_FLOW_QUEUE_MAX, d["flow_queue_max"].default, 1),
            flow_batch=s.get_int(env, MESHSCOPE_FLOW_BATCH, d["flow_batch"].default, 1),
            flow_flush_interval_s=s.get_float(env, MESHSCOPE_FLOW_FLUSH_INTERVAL_S, d["flow_flush_interval_s"].default),
            max_body_bytes=s.get_int(env, MESHSCOPE_MAX_BODY_BYTES, d["max_body_bytes"].default, 1),
            max_event_bytes=s.get_int(env, MESHSCOPE_MAX_EVENT_BYTES, d["max_event_bytes"].default, 1),
            subscriber_buffer=s.get_int(env, MESHSCOPE_SUBSCRIBER_BUFFER, d["subscriber_buffer"].default, 1),
            link_queue_max=s.get_int(env, MESHSCOPE_LINK_QUEUE_MAX, d["link_queue_max"].default, 1),
            link_batch=s.get_int(env, MESHSCOPE_LINK_BATCH, d["link_batch"].default, 1),
            link_backoff_base_s=s.get_float(env, MESHSCOPE_LINK_BACKOFF_BASE_S, d["link_backoff_base_s"].default),
            link_backoff_max_s=s.get_float(env, MESHSCOPE_LINK_BACKOFF_MAX_S, d["link_backoff_max_s"].default),
            ping_interval_s=s.get_float(env, MESHSCOPE_PING_INTERVAL_S, d["ping_interval_s"].default, 0.01),
            link_delays_ms=s.get_map_float(env, MESHSCOPE_LINK_DELAYS),
            dedup_window=s.get_int(env, MESHSCOPE_DEDUP_WINDOW, d["dedup_window"].default, 1),
            trace_sample_ratio=s.get_float(env, MESHSCOPE_TRACE_SAMPLE_RATIO, d["trace_sample_ratio"].default),
            otlp_endpoint=env.get(OTEL_EXPORTER_OTLP_ENDPOINT) or None,
            failure_rate=s.get_float(env, MESHSCOPE_FAILURE_RATE, 0.0),
            chaos_flap_interval_s=s.get_float(env, MESHSCOPE_CHAOS_FLAP_INTERVAL_S, 0.0),
            link_stats_interval_s=s.get_float(
                env, MESHSCOPE_LINK_STATS_INTERVAL_S, d["link_stats_interval_s"].default, 0.05
            ),
        )
        return replace(config, **overrides)
