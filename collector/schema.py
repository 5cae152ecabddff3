"""The ClickHouse schema as versioned migrations, in a single-node and a cluster form.

Every statement is idempotent (``IF NOT EXISTS``) and each applied version is
recorded in ``schema_migrations``, so running ``migrate`` again is a no-op.

Single node: MergeTree tables. Cluster (``cluster`` set): each table is a
``Replicated*MergeTree`` named ``<table>_local`` on every node, with a
``Distributed`` table named ``<table>`` over it, sharded by region pair; the
materialized views read the local tables, so each shard aggregates its rows.

Deduplication: every MergeTree here keeps ``non_replicated_deduplication_window``
blocks, so a batch re-inserted with the same ``insert_deduplication_token``
(the collector derives it from stream ids) lands once, in ``flows`` and in
every aggregate fed from it. Replicated engines deduplicate by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector.histogram import sql_bucket
from meshcore.flowrecord import LOSSES

DEDUP_WINDOW = 10_000
EDGE_SECOND_TTL_HOURS = 2


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


@dataclass(frozen=True)
class SchemaOptions:
    database: str = "meshscope"
    cluster: str | None = None
    flows_ttl_days: int = 30
    aggregate_ttl_days: int = 400
    links_ttl_days: int = 30


class _Names:
    def __init__(self, opts: SchemaOptions):
        self.opts = opts
        self.db = opts.database
        self.on_cluster = f" ON CLUSTER `{opts.cluster}`" if opts.cluster else ""

    def local(self, table: str) -> str:
        return f"`{self.db}`.`{table}_local`" if self.opts.cluster else f"`{self.db}`.`{table}`"

    def engine(self, kind: str, table: str) -> str:
        if self.opts.cluster:
            return f"Replicated{kind}('/clickhouse/tables/{{shard}}/{self.db}/{table}', '{{replica}}')"
        return f"{kind}()"

    def settings(self, extra: str = "") -> str:
        parts = [] if self.opts.cluster else [f"non_replicated_deduplication_window = {DEDUP_WINDOW}"]
        if extra:
            parts.append(extra)
        return f" SETTINGS {', '.join(parts)}" if parts else ""

    def table(self, table: str, columns: str, kind: str, tail: str, sharding: str, extra: str = "") -> list[str]:
        out = [
            f"CREATE TABLE IF NOT EXISTS {self.local(table)}{self.on_cluster} ({columns}) "
            f"ENGINE = {self.engine(kind, table)} {tail}{self.settings(extra)}"
        ]
        if self.opts.cluster:
            out.append(
                f"CREATE TABLE IF NOT EXISTS `{self.db}`.`{table}`{self.on_cluster} AS {self.local(table)} "
                f"ENGINE = Distributed(`{self.opts.cluster}`, `{self.db}`, `{table}_local`, {sharding})"
            )
        return out


FLOW_COLUMNS = """
    ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    event_id String,
    trace_id String,
    span_id String,
    parent_span_id String,
    topic LowCardinality(String),
    kind LowCardinality(String),
    src_region LowCardinality(String),
    dst_region LowCardinality(String),
    relay LowCardinality(String),
    hop_ms Float32,
    e2e_ms Float32,
    status LowCardinality(String),
    bytes UInt32,
    attempt UInt16,
    seq UInt64,
    INDEX trace_bf trace_id TYPE bloom_filter(0.001) GRANULARITY 1
"""

# What an edge counts (the same as collector.livestats): ``entered`` = forward records
# (or publish records on a region's own src == dst edge), ``delivered`` = deliver
# records, ``errors`` = records whose status is not ok, by status; latency
# histograms of deliver records only. No ``kind`` column keeps one row per edge
# and bucket, which is what makes a 24 h topology cheap.
_AGG_VALUES = """
    records SimpleAggregateFunction(sum, UInt64),
    entered SimpleAggregateFunction(sum, UInt64),
    delivered SimpleAggregateFunction(sum, UInt64),
    errors SimpleAggregateFunction(sum, UInt64),
    status_counts SimpleAggregateFunction(sumMap, Map(String, UInt64)),
    bytes SimpleAggregateFunction(sum, UInt64),
    hop_hist SimpleAggregateFunction(sumMap, Map(UInt16, UInt64)),
    e2e_hist SimpleAggregateFunction(sumMap, Map(UInt16, UInt64))
"""
# added by migration 5: events lost on the edge (gap records stand for seq..seq_end), and forwards by
# next hop (a detour shows as a next hop other than the destination)
_AGG_VALUES_5 = (
    ("lost", "SimpleAggregateFunction(sum, UInt64)"),
    ("via_counts", "SimpleAggregateFunction(sumMap, Map(String, UInt64))"),
)
_LOSS_LIST = ", ".join(f"'{s}'" for s in sorted(LOSSES))

_AGG_SELECT = f"""
    count() AS records,
    countIf(kind IN ('forward', 'publish')) AS entered,
    countIf(kind = 'deliver') AS delivered,
    countIf(status != 'ok') AS errors,
    sumMapIf(map(toString(status), toUInt64(1)), status != 'ok') AS status_counts,
    sumIf(bytes, kind IN ('forward', 'publish')) AS bytes,
    sumMapIf(map({sql_bucket("hop_ms")}, toUInt64(1)), kind = 'deliver') AS hop_hist,
    sumMapIf(map({sql_bucket("e2e_ms")}, toUInt64(1)), kind = 'deliver') AS e2e_hist
"""
_AGG_SELECT_5 = (
    _AGG_SELECT.rstrip()
    + f""",
    sumIf(if(status = 'gap', seq_end - seq + 1, 1), status IN ({_LOSS_LIST})) AS lost,
    sumMapIf(map(toString(via), toUInt64(1)), kind = 'forward' AND via != '' AND via != dst_region) AS via_counts
"""
)

_ROLLUP_SELECT = """
    sum(records) AS records, sum(entered) AS entered, sum(delivered) AS delivered, sum(errors) AS errors,
    sumMap(status_counts) AS status_counts, sum(bytes) AS bytes, sumMap(hop_hist) AS hop_hist,
    sumMap(e2e_hist) AS e2e_hist
"""
_ROLLUP_SELECT_5 = _ROLLUP_SELECT.rstrip() + ", sum(lost) AS lost, sumMap(via_counts) AS via_counts\n"

PAIR_SHARDING = "cityHash64(src_region, dst_region)"


def migrations(opts: SchemaOptions) -> list[Migration]:
    n = _Names(opts)
    db = n.db
    agg_ttl = f"INTERVAL {opts.aggregate_ttl_days} DAY"

    def aggregate(table: str, bucket: str, key: str, ttl: str) -> list[str]:
        group = key.replace("bucket", bucket)
        stmts = n.table(
            table,
            f"bucket DateTime('UTC'), src_region LowCardinality(String), dst_region LowCardinality(String), "
            f"{'topic LowCardinality(String), ' if 'topic' in key else ''}{_AGG_VALUES}",
            "AggregatingMergeTree",
            f"PARTITION BY toDate(bucket) ORDER BY ({key}) TTL bucket + {ttl}",
            PAIR_SHARDING,
            "ttl_only_drop_parts = 1",
        )
        stmts.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{table}_mv`{n.on_cluster} TO {n.local(table)} AS "
            f"SELECT {bucket} AS bucket, src_region, dst_region, {'topic, ' if 'topic' in key else ''}"
            f"{_AGG_SELECT} FROM {n.local('flows')} GROUP BY {group}"
        )
        return stmts

    edge_key = "src_region, dst_region, topic, bucket"
    pair_key = "src_region, dst_region, bucket"
    return [
        Migration(
            1,
            "flows",
            tuple(
                [
                    f"CREATE DATABASE IF NOT EXISTS `{db}`{n.on_cluster}",
                    *n.table(
                        "flows",
                        FLOW_COLUMNS,
                        "MergeTree",
                        f"PARTITION BY toDate(ts) ORDER BY (src_region, dst_region, topic, ts) "
                        f"TTL toDateTime(ts) + INTERVAL {opts.flows_ttl_days} DAY",
                        PAIR_SHARDING,
                        "ttl_only_drop_parts = 1",
                    ),
                ]
            ),
        ),
        Migration(
            2,
            "edge aggregates",
            tuple(
                aggregate("edge_minute", "toStartOfMinute(ts)", edge_key, agg_ttl)
                + aggregate("edge_second", "toStartOfSecond(ts)", edge_key, f"INTERVAL {EDGE_SECOND_TTL_HOURS} HOUR")
                + aggregate("pair_minute", "toStartOfMinute(ts)", pair_key, agg_ttl)
            ),
        ),
        Migration(
            3,
            "links and regions",
            tuple(
                n.table(
                    "links",
                    "ts DateTime64(6, 'UTC'), relay LowCardinality(String), src_region LowCardinality(String), "
                    "dst_region LowCardinality(String), state LowCardinality(String), rtt_ms Float32, "
                    "queue_depth UInt32, reconnects UInt32",
                    "MergeTree",
                    f"PARTITION BY toDate(ts) ORDER BY (src_region, dst_region, ts) "
                    f"TTL toDateTime(ts) + INTERVAL {opts.links_ttl_days} DAY",
                    PAIR_SHARDING,
                    "ttl_only_drop_parts = 1",
                )
                + n.table(
                    "regions",
                    "id String, provider SimpleAggregateFunction(anyLast, String), "
                    "lat SimpleAggregateFunction(anyLast, Float64), lon SimpleAggregateFunction(anyLast, Float64), "
                    "city SimpleAggregateFunction(anyLast, String), relay SimpleAggregateFunction(anyLast, String), "
                    "first_seen SimpleAggregateFunction(min, DateTime('UTC')), "
                    "last_seen SimpleAggregateFunction(max, DateTime('UTC'))",
                    "AggregatingMergeTree",
                    "ORDER BY id",
                    "cityHash64(id)",
                )
            ),
        ),
        Migration(
            4,
            "hourly rollup and trace index",
            (
                # pair_hour is fed from pair_minute's inserts (a cascade, no join): a 24 h map merges 24
                # rows per pair instead of 1,440
                *n.table(
                    "pair_hour",
                    f"bucket DateTime('UTC'), src_region LowCardinality(String), "
                    f"dst_region LowCardinality(String), {_AGG_VALUES}",
                    "AggregatingMergeTree",
                    f"PARTITION BY toYYYYMM(bucket) ORDER BY ({pair_key}) TTL bucket + {agg_ttl}",
                    PAIR_SHARDING,
                    "ttl_only_drop_parts = 1",
                ),
                (
                    f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`pair_hour_mv`{n.on_cluster} TO "
                    f"{n.local('pair_hour')} AS SELECT toStartOfHour(bucket) AS bucket, src_region, dst_region, "
                    f"{_ROLLUP_SELECT} FROM {n.local('pair_minute')} GROUP BY src_region, dst_region, bucket"
                ),
                # trace_index answers "when and on which edges did this trace happen" by a binary search on
                # trace_id; the lookup in flows then reads only those (src, dst, topic) key prefixes in that
                # time range instead of testing every granule's bloom filter
                *n.table(
                    "trace_index",
                    "trace_id String, first_ts SimpleAggregateFunction(min, DateTime64(6, 'UTC')), "
                    "last_ts SimpleAggregateFunction(max, DateTime64(6, 'UTC')), "
                    "edges SimpleAggregateFunction(groupUniqArrayArray, Array(Tuple(String, String, String)))",
                    "AggregatingMergeTree",
                    f"PARTITION BY toDate(first_ts) ORDER BY trace_id "
                    f"TTL toDateTime(first_ts) + INTERVAL {opts.flows_ttl_days} DAY",
                    "cityHash64(trace_id)",
                    "ttl_only_drop_parts = 1",
                ),
                (
                    f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`trace_index_mv`{n.on_cluster} TO "
                    f"{n.local('trace_index')} AS SELECT trace_id, min(ts) AS first_ts, max(ts) AS last_ts, "
                    f"groupUniqArray((toString(src_region), toString(dst_region), toString(topic))) AS edges "
                    f"FROM {n.local('flows')} WHERE trace_id != '' GROUP BY trace_id"
                ),
            ),
        ),
        Migration(5, "principals, detours, losses and refusals", tuple(_migration_5(n, opts))),
        Migration(
            6,
            "durable group lag",
            tuple(
                n.table(
                    "group_lag",
                    "ts DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)), region LowCardinality(String), "
                    "`group` LowCardinality(String), owner LowCardinality(String), patterns Array(String), "
                    "added UInt64, acked UInt64, pending UInt64, lag UInt64, oldest_age_s Float32, consumers UInt32",
                    "MergeTree",
                    f"PARTITION BY toDate(ts) ORDER BY (region, `group`, ts) "
                    f"TTL toDateTime(ts) + INTERVAL {opts.links_ttl_days} DAY",
                    "cityHash64(region, `group`)",
                    "ttl_only_drop_parts = 1",
                )
            ),
        ),
        Migration(7, "alerts", tuple(_migration_7(n, opts))),
        Migration(
            8,
            "event id index",
            tuple(
                # the dashboard's search finds an event by id: a bloom filter skips the granules without it
                f"ALTER TABLE `{db}`.`{table}`{n.on_cluster} "
                "ADD INDEX IF NOT EXISTS event_bf event_id TYPE bloom_filter(0.001) GRANULARITY 1"
                for table in (["flows_local"] if opts.cluster else ["flows"])  # a Distributed table has no index
            ),
        ),
        Migration(9, "link clocks and probe groups", tuple(_migration_9(n, opts))),
    ]


def _migration_9(n: _Names, opts: SchemaOptions) -> list[str]:
    """Link samples say how far the peer's clock is from the relay's and what skew the peer accepts;
    group samples say whether the group is a probe (``meshscope chaos``'s), which never pages."""
    db, out = n.db, []
    for table in ["links"] + (["links_local"] if opts.cluster else []):
        out.append(
            f"ALTER TABLE `{db}`.`{table}`{n.on_cluster} "
            "ADD COLUMN IF NOT EXISTS clock_offset_ms Float32 DEFAULT 0, "
            "ADD COLUMN IF NOT EXISTS peer_skew_s Float32 DEFAULT 0"
        )
    for table in ["group_lag"] + (["group_lag_local"] if opts.cluster else []):
        out.append(f"ALTER TABLE `{db}`.`{table}`{n.on_cluster} ADD COLUMN IF NOT EXISTS probe UInt8 DEFAULT 0")
    return out


def _migration_7(n: _Names, opts: SchemaOptions) -> list[str]:
    """Alert state transitions (collector.alerting), one row each, for the history of an edge, region or group.

    The subject columns come from the labels: ``src_region`` is the edge's source (or the
    region of a region or group alert), ``dst_region`` the edge's destination ('' otherwise).
    The history of an edge reads one key prefix, a region's its prefix plus the skip index on
    ``dst_region``, a group's the prefix and ``group``.
    """
    return n.table(
        "alerts",
        "ts DateTime64(3, 'UTC'), alertname LowCardinality(String), fingerprint String, "
        "state LowCardinality(String), severity LowCardinality(String), labels Map(String, String), "
        "value Float64, summary String, description String, starts_at DateTime64(3, 'UTC'), "
        "ends_at DateTime64(3, 'UTC'), "
        "src_region LowCardinality(String) MATERIALIZED if(labels['src'] != '', labels['src'], labels['region']), "
        "dst_region LowCardinality(String) MATERIALIZED labels['dst'], "
        "`group` LowCardinality(String) MATERIALIZED labels['group'], "
        "INDEX dst_set dst_region TYPE set(0) GRANULARITY 4, "
        "INDEX fingerprint_bf fingerprint TYPE bloom_filter(0.01) GRANULARITY 4",
        "MergeTree",
        f"PARTITION BY toYYYYMM(ts) ORDER BY (src_region, dst_region, ts) "
        f"TTL toDateTime(ts) + INTERVAL {opts.aggregate_ttl_days} DAY",
        "cityHash64(fingerprint)",
        "ttl_only_drop_parts = 1",
    )


def _migration_5(n: _Names, opts: SchemaOptions) -> list[str]:
    """Flow record format 2: new columns, losses and detours per edge, refusals by principal and schema."""
    db = n.db
    tables = ["flows"] + (["flows_local"] if opts.cluster else [])
    out = [
        f"ALTER TABLE `{db}`.`{table}`{n.on_cluster} "
        "ADD COLUMN IF NOT EXISTS principal LowCardinality(String) DEFAULT '', "
        "ADD COLUMN IF NOT EXISTS via LowCardinality(String) DEFAULT '', "
        "ADD COLUMN IF NOT EXISTS seq_end UInt64 DEFAULT 0, "
        "ADD COLUMN IF NOT EXISTS dataschema LowCardinality(String) DEFAULT ''"
        for table in tables
    ]
    aggregates = {
        "edge_minute": ("toStartOfMinute(ts)", "src_region, dst_region, topic, bucket", True),
        "edge_second": ("toStartOfSecond(ts)", "src_region, dst_region, topic, bucket", True),
        "pair_minute": ("toStartOfMinute(ts)", "src_region, dst_region, bucket", False),
    }
    for table in [*aggregates, "pair_hour"]:
        for physical in [table] + ([f"{table}_local"] if opts.cluster else []):
            out.append(
                f"ALTER TABLE `{db}`.`{physical}`{n.on_cluster} "
                + ", ".join(f"ADD COLUMN IF NOT EXISTS {name} {kind}" for name, kind in _AGG_VALUES_5)
            )
    # the views read the new columns: replaced, not altered (a view's query is its definition)
    for table, (bucket, key, with_topic) in aggregates.items():
        out.append(f"DROP VIEW IF EXISTS `{db}`.`{table}_mv`{n.on_cluster}")
        out.append(
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`{table}_mv`{n.on_cluster} TO {n.local(table)} AS "
            f"SELECT {bucket} AS bucket, src_region, dst_region, {'topic, ' if with_topic else ''}"
            f"{_AGG_SELECT_5} FROM {n.local('flows')} GROUP BY {key.replace('bucket', bucket)}"
        )
    out.append(f"DROP VIEW IF EXISTS `{db}`.`pair_hour_mv`{n.on_cluster}")
    out.append(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`pair_hour_mv`{n.on_cluster} TO "
        f"{n.local('pair_hour')} AS SELECT toStartOfHour(bucket) AS bucket, src_region, dst_region, "
        f"{_ROLLUP_SELECT_5} FROM {n.local('pair_minute')} GROUP BY src_region, dst_region, bucket"
    )
    # link samples say how each link is secured, whether its region is reached by a detour, and which
    # governance version each side enforces
    for table in ["links"] + (["links_local"] if opts.cluster else []):
        out.append(
            f"ALTER TABLE `{db}`.`{table}`{n.on_cluster} "
            "ADD COLUMN IF NOT EXISTS security LowCardinality(String) DEFAULT '', "
            "ADD COLUMN IF NOT EXISTS via LowCardinality(String) DEFAULT '', "
            "ADD COLUMN IF NOT EXISTS peer_gov LowCardinality(String) DEFAULT '', "
            "ADD COLUMN IF NOT EXISTS gov LowCardinality(String) DEFAULT ''"
        )
    # refusals (policy denials, schema rejections, malformed events) by who and what, for the governance view
    out += n.table(
        "refusal_minute",
        "bucket DateTime('UTC'), src_region LowCardinality(String), topic LowCardinality(String), "
        "principal LowCardinality(String), status LowCardinality(String), dataschema LowCardinality(String), "
        "events SimpleAggregateFunction(sum, UInt64)",
        "AggregatingMergeTree",
        f"PARTITION BY toDate(bucket) ORDER BY (src_region, topic, principal, status, dataschema, bucket) "
        f"TTL bucket + INTERVAL {opts.aggregate_ttl_days} DAY",
        PAIR_SHARDING.replace("dst_region", "topic"),
        "ttl_only_drop_parts = 1",
    )
    out.append(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS `{db}`.`refusal_minute_mv`{n.on_cluster} TO "
        f"{n.local('refusal_minute')} AS SELECT toStartOfMinute(ts) AS bucket, src_region, topic, principal, "
        f"status, dataschema, count() AS events FROM {n.local('flows')} "
        f"WHERE status IN ('policy_denied', 'schema_rejected', 'malformed') "
        f"GROUP BY bucket, src_region, topic, principal, status, dataschema"
    )
    return out


def migrations_table(opts: SchemaOptions) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS `{opts.database}`.`schema_migrations` "
        "(version UInt32, name String, applied_at DateTime('UTC') DEFAULT now()) "
        "ENGINE = MergeTree ORDER BY version"
    )
