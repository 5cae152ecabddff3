"""The relay's configuration: one frozen dataclass built by ``RelayConfig.from_env``.

Each variable is defined once, with a one-line docstring; precedence is an
explicit argument, then the environment, then the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from meshcore import names
from meshcore import settings as s
from meshcore.settings import MESHSCOPE_FLOW_SHARDS, MESHSCOPE_FLOW_STREAM, MESHSCOPE_REDIS_URL, REDIS_URL
from meshcore.tls import TlsFiles
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
MESHSCOPE_RELAY_WORKERS = "MESHSCOPE_RELAY_WORKERS"
"""Relay processes serving this region behind the one port (default 1); see router/workers.py."""
MESHSCOPE_RELAY_WORKER = "MESHSCOPE_RELAY_WORKER"
"""Set by ``--workers``: this process's index among the region's workers (0 holds the outbound links)."""
MESHSCOPE_RELAY_LISTEN_FD = "MESHSCOPE_RELAY_LISTEN_FD"
"""Set by ``--workers``: the listening socket the workers share, inherited from their parent."""
MESHSCOPE_PEERS = "MESHSCOPE_PEERS"
"""Comma-separated peer relays, ``region=wss://host:port`` (the region it must be) or a bare URL."""
MESHSCOPE_AUTH_FILE = "MESHSCOPE_AUTH_FILE"
"""TOML file of principals (token hashes, groups, roles); see meshcore/auth.py."""
MESHSCOPE_ALLOW_ANONYMOUS = "MESHSCOPE_ALLOW_ANONYMOUS"
"""``true`` lets clients without credentials in (development only; logged and shown in /healthz)."""
MESHSCOPE_MESH_TOKEN = "MESHSCOPE_MESH_TOKEN"
"""Bearer token this relay presents to peers when it has no region certificate (mesh links without mTLS)."""
MESHSCOPE_BODY_TIMEOUT_S = "MESHSCOPE_BODY_TIMEOUT_S"
"""Seconds a request body may take to arrive (408 after)."""
MESHSCOPE_MAX_JSON_DEPTH = "MESHSCOPE_MAX_JSON_DEPTH"
"""Deepest nesting of an event's JSON accepted (400 deeper)."""
MESHSCOPE_TOPIC_LABEL_MAX = "MESHSCOPE_TOPIC_LABEL_MAX"
"""Distinct topic label values in /metrics; later topics are summed under ``_other``."""
MESHSCOPE_LINK_DURABLE = "MESHSCOPE_LINK_DURABLE"
"""``false`` keeps events bound for other regions in memory only (faster; lost if the relay dies)."""
MESHSCOPE_LINK_STORE_MAX = "MESHSCOPE_LINK_STORE_MAX"
"""Events held per destination region until acknowledged; past it the overflow policy applies."""
MESHSCOPE_LINK_STORE_MAX_AGE_S = "MESHSCOPE_LINK_STORE_MAX_AGE_S"
"""Oldest an undelivered event may get before it is dropped with a ``drop``/``expired`` record."""
MESHSCOPE_LINK_OVERFLOW = "MESHSCOPE_LINK_OVERFLOW"
"""``drop_oldest`` (the oldest held events expire, with records) or ``reject`` (publishers get 503)."""
MESHSCOPE_LINK_ACK_TIMEOUT_S = "MESHSCOPE_LINK_ACK_TIMEOUT_S"
"""Seconds without an acknowledgement before unacknowledged events are sent again."""
MESHSCOPE_LINK_WINDOW = "MESHSCOPE_LINK_WINDOW"
"""Events per destination sent and not yet acknowledged, at most."""
MESHSCOPE_HOP_LIMIT = "MESHSCOPE_HOP_LIMIT"
"""Most relays an event may cross on a detour (2 = one transit relay)."""
MESHSCOPE_TRANSIT = "MESHSCOPE_TRANSIT"
"""``false``: this relay carries only its own events, never others' detours."""
MESHSCOPE_MESH_CLOCK_SKEW_S = "MESHSCOPE_MESH_CLOCK_SKEW_S"
"""Largest clock difference accepted in a peer's timestamps."""
MESHSCOPE_GOVERNANCE_HOME = "MESHSCOPE_GOVERNANCE_HOME"
"""The region whose relays order every governance change (the same on every relay); unset: this relay's store."""
MESHSCOPE_FAULT_INJECTION = "MESHSCOPE_FAULT_INJECTION"
"""``true`` opens POST /v1/faults to admins (meshscope chaos); never in production."""
MESHSCOPE_GROUP_CLAIM_IDLE_S = "MESHSCOPE_GROUP_CLAIM_IDLE_S"
"""A group entry un-acknowledged this long by a member that went away goes to another member of its principal."""
MESHSCOPE_GROUP_MAX_ENTRIES = "MESHSCOPE_GROUP_MAX_ENTRIES"
"""Unacknowledged entries a durable group keeps; past it the oldest are given up, each with a drop record."""
MESHSCOPE_GROUP_POLL_INTERVAL_S = "MESHSCOPE_GROUP_POLL_INTERVAL_S"
"""Longest a group member waits before looking for entries other relays of the region appended."""
MESHSCOPE_GROUP_CONNECTIONS = "MESHSCOPE_GROUP_CONNECTIONS"
"""Redis connections group members share (a pool of their own, apart from the one publishes use)."""
MESHSCOPE_MAX_SESSIONS_PER_PRINCIPAL = "MESHSCOPE_MAX_SESSIONS_PER_PRINCIPAL"
"""WebSocket sessions (subscriptions, group members, publish streams) one principal may hold open here (429 past it)."""
MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL = "MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL"
"""Durable groups one principal may own in this region (403 for one more)."""
MESHSCOPE_PUBLISH_TIMEOUT_S = "MESHSCOPE_PUBLISH_TIMEOUT_S"
"""Seconds a publish waits for its events to be made durable before answering 503."""
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
"""Encoded events waiting in one mesh connection's send queue."""
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
"""How many (principal, source, id) keys the relay remembers to drop duplicates."""
MESHSCOPE_DEDUP_RESTART_S = "MESHSCOPE_DEDUP_RESTART_S"
"""Seconds of accepted keys kept in the store, so a producer's retry is recognized after a relay restart."""
MESHSCOPE_STORE_WAIT = "MESHSCOPE_STORE_WAIT"
"""What a commit waits for before it is answered: ``none`` (the store's own appendfsync), ``fsync`` (WAITAOF: in
its append-only file on disk), ``replica`` (WAITAOF: in a replica's)."""
MESHSCOPE_DRAIN_TIMEOUT_S = "MESHSCOPE_DRAIN_TIMEOUT_S"
"""Longest a stopping relay waits for its commits in flight before it exits."""
MESHSCOPE_TRACE_SAMPLE_RATIO = "MESHSCOPE_TRACE_SAMPLE_RATIO"
"""Share of the traces a relay starts (events without trace context) that are sampled; producers' own decide theirs."""
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
"""OTLP/HTTP endpoint; hop spans are exported only when it is set."""
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
"""OpenTelemetry's sampler for the traces a relay starts, when MESHSCOPE_TRACE_SAMPLE_RATIO is unset."""
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
"""The ratio of ``traceidratio`` and ``parentbased_traceidratio`` (default 1)."""
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
"""``service.name`` of the relay's spans (default ``meshscope-relay``); wins over ``OTEL_RESOURCE_ATTRIBUTES``."""
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
"""More resource attributes of the relay's spans, ``key=value,...`` (percent-encoded values); override the defaults."""
MESHSCOPE_FAILURE_RATE = "MESHSCOPE_FAILURE_RATE"
"""Share of local deliveries failed on purpose (demo fault injection; default 0)."""
MESHSCOPE_CHAOS_FLAP_INTERVAL_S = "MESHSCOPE_CHAOS_FLAP_INTERVAL_S"
"""Mean seconds between dropping one random mesh link on purpose (demo fault injection; 0: never)."""
MESHSCOPE_LINK_STATS_INTERVAL_S = "MESHSCOPE_LINK_STATS_INTERVAL_S"
"""Seconds between link state samples written to the ``meshscope:links`` stream."""


MAX_WORKERS = 64
FRAME_OVERHEAD = 1024  # a mesh frame's header and one item's routing fields, at most
STORE_WAITS = ("none", "fsync", "replica")


@dataclass(frozen=True)
class RelayConfig:
    region: Region
    relay_name: str
    host: str = "127.0.0.1"
    port: int = 7400
    peers: tuple[str, ...] = ()
    workers: int = 1
    worker: int = -1  # this process's index among the region's workers; -1: a relay of its own
    listen_fd: int = -1
    auth_file: str | None = None
    allow_anonymous: bool = False
    mesh_token: str | None = None
    tls: TlsFiles | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"
    flow_stream: str = "meshscope:flows"
    flow_shards: int = 1
    flow_stream_maxlen: int = 1_000_000
    flow_queue_max: int = 200_000
    flow_batch: int = 500
    flow_flush_interval_s: float = 0.05
    max_body_bytes: int = 1 << 20
    max_event_bytes: int = 256 << 10
    subscriber_buffer: int = 1000
    link_queue_max: int = 10_000
    link_batch: int = 200
    link_backoff_base_s: float = 0.1
    link_backoff_max_s: float = 3.0
    ping_interval_s: float = 1.0
    link_delays_ms: dict[str, float] = field(default_factory=dict)
    dedup_window: int = 200_000
    dedup_restart_s: float = 300.0
    drain_timeout_s: float = 15.0
    store_wait: str = "none"
    trace_sample_ratio: float = 0.01
    otlp_endpoint: str | None = None
    otel_service_name: str | None = None
    otel_resource_attributes: str | None = None
    failure_rate: float = 0.0
    chaos_flap_interval_s: float = 0.0
    link_stats_interval_s: float = 1.0
    body_timeout_s: float = 10.0
    max_json_depth: int = 32
    topic_label_max: int = 200
    link_durable: bool = True
    link_store_max: int = 200_000
    link_store_max_age_s: float = 3600.0
    link_overflow: str = "drop_oldest"
    link_ack_timeout_s: float = 10.0
    link_window: int = 5000
    hop_limit: int = 3
    transit: bool = True
    clock_skew_s: float = 300.0
    publish_timeout_s: float = 2.0
    group_claim_idle_s: float = 60.0
    group_max_entries: int = 1_000_000
    group_poll_interval_s: float = 0.25
    group_connections: int = 32
    max_sessions_per_principal: int = 100
    max_groups_per_principal: int = 100
    fault_injection: bool = False
    governance_home: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelayConfig:
        env = os.environ if environ is None else environ
        region_id = overrides.pop("region_id", None) or env.get(MESHSCOPE_REGION)
        if not region_id:
            raise s.SettingError(f"{MESHSCOPE_REGION} is required (e.g. aws:us-east-1)")
        try:
            names.region_id(region_id)
        except names.InvalidName as exc:
            raise s.SettingError(f"{MESHSCOPE_REGION}: {exc}") from None
        try:
            region = resolve(
                region_id, s.get_optional_float(env, MESHSCOPE_LAT), s.get_optional_float(env, MESHSCOPE_LON)
            )
        except s.SettingError:
            raise
        except ValueError as exc:
            raise s.SettingError(f"{exc} ({MESHSCOPE_LAT}, {MESHSCOPE_LON})") from None
        d: dict[str, Any] = {f.name: f for f in fields(cls)}
        home = env.get(MESHSCOPE_GOVERNANCE_HOME) or None
        if home is not None and not names.is_region_id(home):
            raise s.SettingError(f"{MESHSCOPE_GOVERNANCE_HOME}: {home!r} is not a region id (e.g. aws:us-east-1)")
        body_bytes = s.get_int(env, MESHSCOPE_MAX_BODY_BYTES, d["max_body_bytes"].default, 1)
        config = cls(
            region=region,
            relay_name=s.get_str(env, MESHSCOPE_RELAY_NAME, f"relay-{region_id}"),
            host=s.get_str(env, MESHSCOPE_HOST, d["host"].default),
            port=s.get_int(env, MESHSCOPE_PORT, d["port"].default),
            peers=s.get_list(env, MESHSCOPE_PEERS),
            workers=s.get_int(env, MESHSCOPE_RELAY_WORKERS, 1, 1),
            worker=s.get_int(env, MESHSCOPE_RELAY_WORKER, -1, -1),
            listen_fd=s.get_int(env, MESHSCOPE_RELAY_LISTEN_FD, -1, -1),
            auth_file=env.get(MESHSCOPE_AUTH_FILE) or None,
            allow_anonymous=s.get_bool(env, MESHSCOPE_ALLOW_ANONYMOUS, False),
            mesh_token=env.get(MESHSCOPE_MESH_TOKEN) or None,
            tls=TlsFiles.from_env(env),
            redis_url=env.get(MESHSCOPE_REDIS_URL) or env.get(REDIS_URL) or d["redis_url"].default,
            flow_stream=s.get_str(env, MESHSCOPE_FLOW_STREAM, d["flow_stream"].default),
            flow_shards=s.get_int(env, MESHSCOPE_FLOW_SHARDS, d["flow_shards"].default, 1),
            flow_stream_maxlen=s.get_int(env, MESHSCOPE_FLOW_STREAM_MAXLEN, d["flow_stream_maxlen"].default, 1),
            flow_queue_max=s.get_int(env, MESHSCOPE_FLOW_QUEUE_MAX, d["flow_queue_max"].default, 1),
            flow_batch=s.get_int(env, MESHSCOPE_FLOW_BATCH, d["flow_batch"].default, 1),
            flow_flush_interval_s=s.get_float(env, MESHSCOPE_FLOW_FLUSH_INTERVAL_S, d["flow_flush_interval_s"].default),
            max_body_bytes=body_bytes,
            max_event_bytes=s.get_int(
                env,
                MESHSCOPE_MAX_EVENT_BYTES,
                min(d["max_event_bytes"].default, body_bytes - FRAME_OVERHEAD),
                1,
            ),
            subscriber_buffer=s.get_int(env, MESHSCOPE_SUBSCRIBER_BUFFER, d["subscriber_buffer"].default, 1),
            link_queue_max=s.get_int(env, MESHSCOPE_LINK_QUEUE_MAX, d["link_queue_max"].default, 1),
            link_batch=s.get_int(env, MESHSCOPE_LINK_BATCH, d["link_batch"].default, 1),
            link_backoff_base_s=s.get_float(env, MESHSCOPE_LINK_BACKOFF_BASE_S, d["link_backoff_base_s"].default),
            link_backoff_max_s=s.get_float(env, MESHSCOPE_LINK_BACKOFF_MAX_S, d["link_backoff_max_s"].default),
            ping_interval_s=s.get_float(env, MESHSCOPE_PING_INTERVAL_S, d["ping_interval_s"].default, 0.01),
            link_delays_ms=s.get_map_float(env, MESHSCOPE_LINK_DELAYS),
            dedup_window=s.get_int(env, MESHSCOPE_DEDUP_WINDOW, d["dedup_window"].default, 1),
            dedup_restart_s=s.get_float(env, MESHSCOPE_DEDUP_RESTART_S, d["dedup_restart_s"].default, 0.0),
            drain_timeout_s=s.get_float(env, MESHSCOPE_DRAIN_TIMEOUT_S, d["drain_timeout_s"].default, 0.0),
            store_wait=s.get_choice(env, MESHSCOPE_STORE_WAIT, "none", STORE_WAITS),
            trace_sample_ratio=trace_sample_ratio(env, d["trace_sample_ratio"].default),
            otlp_endpoint=env.get(OTEL_EXPORTER_OTLP_ENDPOINT) or None,
            otel_service_name=env.get(OTEL_SERVICE_NAME) or None,
            otel_resource_attributes=env.get(OTEL_RESOURCE_ATTRIBUTES) or None,
            failure_rate=s.get_float(env, MESHSCOPE_FAILURE_RATE, 0.0),
            chaos_flap_interval_s=s.get_float(env, MESHSCOPE_CHAOS_FLAP_INTERVAL_S, 0.0),
            link_stats_interval_s=s.get_float(
                env, MESHSCOPE_LINK_STATS_INTERVAL_S, d["link_stats_interval_s"].default, 0.05
            ),
            body_timeout_s=s.get_float(env, MESHSCOPE_BODY_TIMEOUT_S, d["body_timeout_s"].default, 0.01),
            max_json_depth=s.get_int(env, MESHSCOPE_MAX_JSON_DEPTH, d["max_json_depth"].default, 2),
            topic_label_max=s.get_int(env, MESHSCOPE_TOPIC_LABEL_MAX, d["topic_label_max"].default, 1),
            link_durable=s.get_bool(env, MESHSCOPE_LINK_DURABLE, True),
            link_store_max=s.get_int(env, MESHSCOPE_LINK_STORE_MAX, d["link_store_max"].default, 1),
            link_store_max_age_s=s.get_float(
                env, MESHSCOPE_LINK_STORE_MAX_AGE_S, d["link_store_max_age_s"].default, 1.0
            ),
            link_overflow=s.get_choice(env, MESHSCOPE_LINK_OVERFLOW, "drop_oldest", ("drop_oldest", "reject")),
            link_ack_timeout_s=s.get_float(env, MESHSCOPE_LINK_ACK_TIMEOUT_S, d["link_ack_timeout_s"].default, 0.1),
            link_window=s.get_int(env, MESHSCOPE_LINK_WINDOW, d["link_window"].default, 1),
            hop_limit=s.get_int(env, MESHSCOPE_HOP_LIMIT, d["hop_limit"].default, 1),
            transit=s.get_bool(env, MESHSCOPE_TRANSIT, True),
            clock_skew_s=s.get_float(env, MESHSCOPE_MESH_CLOCK_SKEW_S, d["clock_skew_s"].default, 1.0),
            publish_timeout_s=s.get_float(env, MESHSCOPE_PUBLISH_TIMEOUT_S, d["publish_timeout_s"].default, 0.05),
            group_claim_idle_s=s.get_float(env, MESHSCOPE_GROUP_CLAIM_IDLE_S, d["group_claim_idle_s"].default, 0.1),
            group_max_entries=s.get_int(env, MESHSCOPE_GROUP_MAX_ENTRIES, d["group_max_entries"].default, 1),
            group_poll_interval_s=s.get_float(
                env, MESHSCOPE_GROUP_POLL_INTERVAL_S, d["group_poll_interval_s"].default, 0.01
            ),
            group_connections=s.get_int(env, MESHSCOPE_GROUP_CONNECTIONS, d["group_connections"].default, 1),
            max_sessions_per_principal=s.get_int(
                env, MESHSCOPE_MAX_SESSIONS_PER_PRINCIPAL, d["max_sessions_per_principal"].default, 1
            ),
            max_groups_per_principal=s.get_int(
                env, MESHSCOPE_MAX_GROUPS_PER_PRINCIPAL, d["max_groups_per_principal"].default, 1
            ),
            fault_injection=s.get_bool(env, MESHSCOPE_FAULT_INJECTION, False),
            governance_home=home,
        )
        if config.max_event_bytes + FRAME_OVERHEAD > config.max_body_bytes:
            raise s.SettingError(
                f"{MESHSCOPE_MAX_EVENT_BYTES} must be at least {FRAME_OVERHEAD} bytes below {MESHSCOPE_MAX_BODY_BYTES} "
                "(an event must fit in one mesh frame with its routing header)"
            )
        config = replace(config, **overrides)
        if config.workers > MAX_WORKERS:
            raise s.SettingError(f"{MESHSCOPE_RELAY_WORKERS}={config.workers}: at most {MAX_WORKERS} relay processes")
        if config.workers > 1 and config.dedup_restart_s <= 0:
            raise s.SettingError(
                f"{MESHSCOPE_RELAY_WORKERS}={config.workers} needs {MESHSCOPE_DEDUP_RESTART_S} above 0: workers "
                "recognize each other's retries through the stored keys"
            )
        return config


_SAMPLER_RATIOS = {"always_on": 1.0, "parentbased_always_on": 1.0, "always_off": 0.0, "parentbased_always_off": 0.0}
_RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")


def trace_sample_ratio(env: Mapping[str, str], default: float) -> float:
    """The share of the traces a relay starts that are sampled (0 to 1).

    ``MESHSCOPE_TRACE_SAMPLE_RATIO``, else OpenTelemetry's ``OTEL_TRACES_SAMPLER``
    (and ``_ARG``), else ``default``. Either way a trace a producer started follows
    its own sampled flag: the relay samples parent-based, whatever the sampler's name.
    """
    if env.get(MESHSCOPE_TRACE_SAMPLE_RATIO):
        ratio = s.get_float(env, MESHSCOPE_TRACE_SAMPLE_RATIO, default)
        if ratio > 1.0:
            raise s.SettingError(f"{MESHSCOPE_TRACE_SAMPLE_RATIO}={ratio} is over 1 (a share of traces)")
        return ratio
    sampler = (env.get(OTEL_TRACES_SAMPLER) or "").strip().lower()
    if not sampler:
        return default
    if sampler in _SAMPLER_RATIOS:
        return _SAMPLER_RATIOS[sampler]
    if sampler in _RATIO_SAMPLERS:
        ratio = s.get_float(env, OTEL_TRACES_SAMPLER_ARG, 1.0)
        if ratio > 1.0:
            raise s.SettingError(f"{OTEL_TRACES_SAMPLER_ARG}={ratio} is over 1 (a share of traces)")
        return ratio
    known = ", ".join([*_SAMPLER_RATIOS, *_RATIO_SAMPLERS])
    raise s.SettingError(f"{OTEL_TRACES_SAMPLER}={sampler!r}: the relay knows {known}")
