"""A collector killed mid-batch and replaced by one with another consumer name: every record once.

The default consumer name is host-pid, so every restart is a new consumer. The
newcomer finds the dead one's in-flight batch (its manifest) and its idle
entries; both must be taken over so that each record is inserted under exactly
one deduplication token. Real processes, a real Valkey, embedded ClickHouse.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import redis

from meshcore import storekeys as sk
from meshcore.flowrecord import FlowRecord, pack
from tests.conftest import eventually, scaled
from tests.faults.conftest import ValkeyProcess

pytestmark = pytest.mark.faults

A, B = "aws:us-east-1", "gcp:europe-west1"
STREAM = "meshscope:flows"
GROUP = "meshscope-collectors"
MANIFESTS = sk.manifests("meshscope:flows")


def add_records(client: redis.Redis, first: int, count: int, per_entry: int = 100) -> None:
    for start in range(first, first + count, per_entry):
        rows = [
            FlowRecord(1_795_000_000_000_000 + i, f"e{i}", "t" * 32, f"{i:016x}", "", "orders.x", "deliver", A, B,
                       "r", 1.0, 2.0, "ok", 100, 1, i)
            for i in range(start, start + per_entry)
        ]  # fmt: skip
        client.xadd(STREAM, pack(rows))  # type: ignore[arg-type]


class Collectors:
    """``meshscope collector`` processes sharing one stream and one embedded ClickHouse."""

    def __init__(self, workdir: Path, valkey: ValkeyProcess, **env: str):
        self.workdir = workdir
        self.env = {
            **os.environ,
            "REDIS_URL": valkey.url,
            "CLICKHOUSE_URL": f"chdb://{workdir}/clickhouse",
            "MESHSCOPE_COLLECTOR_METRICS_PORT": "-1",
            "MESHSCOPE_ALERTS": "false",
            "MESHSCOPE_LOG_LEVEL": "INFO",
            **env,
        }
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, redis_url: str | None = None, **more: str) -> subprocess.Popen[bytes]:
        env = {**self.env, "MESHSCOPE_COLLECTOR_NAME": name, **more}
        if redis_url is not None:
            env["REDIS_URL"] = redis_url
        with open(self.workdir / "collector.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "meshscope", "collector"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.kill(proc)

    def rows(self) -> tuple[int, int]:
        """(rows, distinct records) in ClickHouse, read once no collector holds the embedded store."""
        out = subprocess.run(
            [sys.executable, "-m", "meshscope", "sql", "SELECT count(), uniqExact(span_id) FROM flows",
             "--format", "csv"],
            env=self.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        total, distinct = out.stdout.splitlines()[1].split(",")
        return int(total), int(distinct)


async def test_a_newcomer_under_another_name_takes_over_a_dead_collectors_batch_once(
    tmp_path: Path, valkey: ValkeyProcess
) -> None:
    """The dead collector inserted its batch and died before the ack; its manifest is young, its entries old.

    Its batch waited ``idle_s`` in memory before the manifest was written, so the entries are idle
    long enough to be claimed while the manifest is not yet stale. The newcomer, a new consumer
    name with records still arriving, must leave them to the manifest's recovery, which inserts
    them again with the batch's own token (ClickHouse drops the repeat).
    """
    client = redis.Redis.from_url(valkey.url)
    idle_s = scaled(8)  # a collector starts in less than idle_s / 2
    first_batch = 4000
    add_records(client, 0, first_batch)
    # the first collector inserts, then cannot acknowledge (nor claim its entries again while it retries):
    # it stands for one that died between the insert and the ack
    client.acl_setuser(
        "noack",
        enabled=True,
        passwords=["+secret"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-xack", "-xclaim"],
    )
    collectors = Collectors(
        tmp_path,
        valkey,
        MESHSCOPE_COLLECTOR_CLAIM_IDLE_S=str(idle_s),
        MESHSCOPE_COLLECTOR_BATCH_ROWS="1000000",
        MESHSCOPE_COLLECTOR_READ_ENTRIES="1000",
    )
    total = first_batch
    try:
        noack = f"redis://noack:secret@127.0.0.1:{valkey.port}/0"
        # entries wait idle_s in its memory before their manifest is written
        first = collectors.start(
            f"first-{uuid.uuid4().hex[:6]}", noack, MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S=str(idle_s)
        )

        def refused_ack() -> bool:
            return any(entry.get("object") == "xack" for entry in client.acl_log())

        await eventually(refused_ack, 30 + 2 * idle_s, 0.005)
        collectors.kill(first)  # inserted, never acknowledged: died between the two
        (manifest,) = client.hvals(MANIFESTS)
        saved = orjson.loads(manifest)["ts"]
        assert client.xpending(STREAM, GROUP)["pending"] == first_batch // 100
        # the newcomer looks while the manifest is young, and again every idle_s / 2
        await asyncio.sleep(max(0.0, saved + idle_s / 2 - time.time()))
        second = f"second-{uuid.uuid4().hex[:6]}"
        collectors.start(second, MESHSCOPE_COLLECTOR_FLUSH_INTERVAL_S="0.2")

        def joined() -> bool:
            return any(c["name"].decode() == second for c in client.xinfo_consumers(STREAM, GROUP))

        await eventually(joined, 30, 0.01)
        age_s = time.time() - saved
        assert idle_s / 2 <= age_s < idle_s, f"the newcomer looked after {age_s:.1f} s, not in [{idle_s / 2}, {idle_s})"
        while time.time() - saved < 2.5 * idle_s:  # records go on arriving while it takes over
            add_records(client, total, 100)
            total += 100
            await asyncio.sleep(0.25)

        def settled() -> bool:
            return client.xpending(STREAM, GROUP)["pending"] == 0 and not client.hlen(MANIFESTS)

        await eventually(settled, 30 + 2 * idle_s, 0.1)
    finally:
        collectors.stop()
        client.acl_deluser("noack")
    assert collectors.rows() == (total, total)
