"""Every benchmark still runs (at a tiny size; no speed is asserted here).

The suites run in two groups, so that a suite run side by side (``-n``) takes
each group in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import SUITES
from tests.conftest import scaled

ROOT = Path(__file__).resolve().parent.parent

# suites -> a median each of these rows must have
GROUPS = {
    "relay collector queries live viewers": (
        "stream, 100 events/frame",
        "stream, 1 event/frame",
        "POST, 1 event/request",
        "hop latency p99",
        "stream, 100 events/frame : core NATS",
        "stream, 1 event/frame : JetStream, 8 in flight",
        "collector ingest",
        "/api/topology 24h",
        "/api/edges/{src}/{dst} 24h",
        "/api/traces/{id}",
        "publish -> /ws/live p99",
        "/api/topology 1h, 10 viewers p99",
    ),
    "scale mesh store governance matching metrics bulk": (
        "4 relays",
        "4 collectors",
        "stream, mTLS links + token-authenticated publisher",
        "publish at A, B's store 40 ms away: one client",
        "match one event, 10,000 live subscribers",
        "/healthz p99 while 10k-event batches arrive (POST + stream)",
    ),
}


def test_the_groups_cover_every_benchmark() -> None:
    named = [s for group in GROUPS for s in group.split()]
    assert sorted(named) == sorted(SUITES)


@pytest.mark.parametrize("suites", list(GROUPS))
def test_every_benchmark_runs_at_a_tiny_size(redis_url: str, suites: str) -> None:
    # a process of its own: embedded ClickHouse allows one data path per process
    env = {**os.environ, "REDIS_URL": redis_url}
    env.pop("CLICKHOUSE_URL", None) if not os.environ.get("CLICKHOUSE_URL") else None
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *suites.split()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=scaled(600),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for suite in suites.split():
        assert f"### {SUITES[suite][0]}" in out.stdout
    for measure in GROUPS[suites]:
        line = next(line for line in out.stdout.splitlines() if line.startswith(f"| {measure} "))
        assert "| - " not in line.split("|")[2], line  # a median was measured
