"""Pure parts of the collector: histogram buckets, live stats, batching, the DDL text."""

from __future__ import annotations

import pytest

from collector.batch import Batch, batch_token, should_flush, split_entries
from collector.histogram import bucket, histogram, quantile, value
from collector.livestats import LiveWindow, percentile
from collector.schema import SchemaOptions, migrations
from meshcore.flowrecord import FlowRecord, pack


@pytest.mark.parametrize("ms", [0.0, 0.005, 0.01, 0.5, 1.0, 3.7, 40.0, 250.0, 9_999.0, 3_600_000.0])
def test_bucket_value_is_within_a_half_step(ms: float) -> None:
    v = value(bucket(ms))
    if ms <= 0.01:
        assert v == 0.01
    else:
        assert abs(v - ms) / ms <= 2 ** (1 / 16) - 1 + 1e-9  # 4.4 %


def test_histogram_quantiles() -> None:
    values = [float(i) for i in range(1, 1001)]
    hist = histogram(values)
    assert sum(hist.values()) == 1000
    for q, exact in ((0.5, 500.0), (0.99, 990.0)):
        got = quantile(hist, q)
        assert got is not None and abs(got - exact) / exact < 0.05
    assert quantile({}, 0.5) is None


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.99) == 5.0


def row(kind: str, src: str = "a", dst: str = "b", status: str = "ok", e2e: float = 1.0) -> list[object]:
    return list(FlowRecord(1, "e", "t", "s", "p", "x.y", kind, src, dst, "r", 0.5, e2e, status, 10, 1, 0))


def test_live_window_counts_what_an_edge_means() -> None:
    w = LiveWindow(seed=1)
    rows = [
        row("forward"),
        row("forward"),
        row("deliver", e2e=10.0),
        row("deliver", e2e=30.0),
        row("drop", status="backpressure"),
        row("publish", "a", "a"),
    ]
    w.add([list(c) for c in zip(*rows, strict=True)])
    msg = w.flush(100, "c1")
    edges = {(e["src"], e["dst"]): e for e in msg["edges"]}
    ab = edges[("a", "b")]
    assert (ab["count"], ab["delivered"], ab["errors"]) == (2, 2, 1)
    assert ab["errors_by_status"] == {"backpressure": 1}
    assert (ab["e2e_p50"], ab["e2e_p99"]) == (10.0, 30.0)
    assert edges[("a", "a")]["count"] == 1
    assert {s["kind"] for s in msg["samples"]} == {"deliver", "drop"}
    assert w.flush(101, "c1")["edges"] == []  # the window starts empty again


def test_batches_token_and_flush_policy() -> None:
    assert batch_token(["1-0", "2-0"]) == batch_token(["1-0", "2-0"]) != batch_token(["1-0"])
    b = Batch(started=10.0)
    b.add("1-0", [[1, 3], [2, 4]] + [[0, 0]] * 18)
    assert b.columns[:2] == [[1, 3], [2, 4]] and len(b) == 2
    assert should_flush(b, 10.5, 2, 1.0)  # enough rows
    assert not should_flush(b, 10.5, 3, 1.0)
    assert should_flush(b, 11.0, 3, 1.0)  # old enough
    assert not should_flush(Batch(), 99.0, 1, 1.0)


def test_a_batch_keeps_only_the_entries_still_its_own() -> None:
    width = len(Batch().columns)
    b = Batch(started=5.0)
    for entry_id, rows in (("1-0", [1, 2]), ("2-0", [3]), ("3-0", [4, 5, 6])):
        b.add(entry_id, [rows] * width)
    kept = b.keep({"1-0", "3-0"})
    assert kept.ids == ["1-0", "3-0"] and kept.sizes == [2, 3] and kept.started == 5.0
    assert kept.columns == [[1, 2, 4, 5, 6]] * width
    assert b.keep(set()).ids == [] and len(b.keep(set())) == 0
    assert b.keep({"1-0", "2-0", "3-0"}).columns == b.columns


def test_split_entries_separates_poison() -> None:
    good_fields = pack([FlowRecord(1, "e", "t", "s", "p", "x", "publish", "a", "a", "r", 0.1, 0.1, "ok", 1, 1, 0)])
    good, bad = split_entries([("1-0", good_fields), ("2-0", {b"v": b"1", b"r": b"garbage"})])
    assert [g[0] for g in good] == ["1-0"] and len(good[0][1]) == 20 and good[0][1][1] == ["e"]
    assert bad[0].entry_id == "2-0" and "JSON" in bad[0].reason


def test_cluster_ddl_is_replicated_and_distributed() -> None:
    single = [s for m in migrations(SchemaOptions()) for s in m.statements]
    cluster = [s for m in migrations(SchemaOptions(cluster="prod")) for s in m.statements]
    assert not any("Replicated" in s or "Distributed" in s for s in single)
    assert all("ON CLUSTER `prod`" in s for s in cluster)
    assert any("ReplicatedMergeTree('/clickhouse/tables/{shard}/meshscope/flows', '{replica}')" in s for s in cluster)
    assert any("ReplicatedAggregatingMergeTree" in s and "edge_minute_local" in s for s in cluster)
    assert any(
        "Distributed(`prod`, `meshscope`, `flows_local`, cityHash64(src_region, dst_region))" in s for s in cluster
    )
    mv = next(s for s in cluster if "edge_minute_mv" in s)
    assert "TO `meshscope`.`edge_minute_local`" in mv and "FROM `meshscope`.`flows_local`" in mv
    assert all("non_replicated_deduplication_window" not in s for s in cluster)
    assert sum("non_replicated_deduplication_window" in s for s in single) == 11  # every MergeTree table
