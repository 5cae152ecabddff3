"""Every benchmark still runs (at a tiny size; no speed is asserted here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import scaled

ROOT = Path(__file__).resolve().parent.parent


def test_every_benchmark_runs_at_a_tiny_size(redis_url: str) -> None:
    # a process of its own: embedded ClickHouse allows one data path per process
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("CLICKHOUSE_URL", None) if not os.environ.get("CLICKHOUSE_URL") else None
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(600),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for title in (
        "Relay throughput and hop overhead",
        "Collector ingest",
        "Dashboard queries",
        "Live path",
        "Scale curve",
    ):
        assert f"### {title}" in out.stdout
    for measure in (
        "stream, 100 events/frame",
        "stream, 1 event/frame",
        "POST, 1 event/request",
        "hop latency p99",
        "collector ingest",
        "/api/topology 24h",
        "/api/edges/{src}/{dst} 24h",
        "/api/traces/{id}",
        "publish -> /ws/live p99",
        "4 relays",
        "4 collectors",
        "publish at A, B's store 40 ms away: one client",
        "stream, 100 events/frame : core NATS",
        "stream, 1 event/frame : JetStream, 8 in flight",
    ):
        line = next(line for line in out.stdout.splitlines() if line.startswith(f"| {measure} "))
        assert "| - " not in line.split("|")[2], line  # a median was measured
