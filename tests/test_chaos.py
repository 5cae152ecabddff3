"""meshscope chaos against a real meshscope up: faults injected into the running demo, every probe counted."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port, scaled

pytestmark = pytest.mark.faults


def test_chaos_against_a_running_up_loses_nothing_but_the_injected_failures_each_named(tmp_path: Path) -> None:
    """The demo fails 5 % of deliveries on purpose: those are lost, each with its drop record; the faults lose none."""
    data = tmp_path / "demo"
    env = {**os.environ, "MESHSCOPE_LOG_LEVEL": "WARNING"}
    regions = "aws:us-east-1,gcp:europe-west1,azure:westeurope"
    up = subprocess.Popen(
        [sys.executable, "-m", "meshscope", "up", "--data-dir", str(data), "--port", str(free_port()),
         "--regions", regions, "--rate", "20", "--flap-interval", "0", "--failure-rate", "0.05",
         "--redis-port", str(free_port())],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(90)
        while not (data / "up.json").exists():
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            assert time.monotonic() < deadline, "meshscope up did not come up"
            time.sleep(0.2)
        out = subprocess.run(  # about a minute and a half
            [sys.executable, "-m", "meshscope", "chaos", "--data-dir", str(data), "--events", "100", "--isolate", "10",
             "--scenarios", "relay-kill,partition,region-valkey-kill,region-isolation,governance-isolated"],
            env=env, capture_output=True, text=True, timeout=scaled(420),
        )  # fmt: skip
        print(out.stdout)  # the table, in the report of a failure
        assert out.returncode == 0, out.stdout + out.stderr
        rows = {line.split("|")[0].strip(): line for line in out.stdout.splitlines() if "|" in line}
        for scenario in ("relay-kill", "partition"):
            cells = [c.strip() for c in rows[scenario].split("|")]
            published, delivered, twice, lost, named, result = cells[1:7]
            assert (published, twice, result) == ("100", "0", "ok"), rows[scenario]
            assert int(delivered) + int(lost) == 100 and lost == named, rows[scenario]
            if int(lost):  # only the injected failures, each found in the flow history
                assert f"drops: {lost}x delivery_failed" in rows[scenario], rows[scenario]
        assert "via" in rows["partition"]  # the partition was routed around
        # regions stand alone: a killed store, a region cut off, a governance change meanwhile
        for scenario in ("region-valkey-kill", "region-isolation", "governance-isolated"):
            assert "| ok " in rows[scenario], rows[scenario]
        assert "map: stale after" in rows["region-isolation"] and "map: caught up" in rows["region-isolation"]
        assert "mismatch shown: True" in rows["governance-isolated"]
        assert "could not delete" not in out.stdout
        state = json.loads((data / "up.json").read_text())
        left = []
        for store in state["valkeys"].values():  # every region's own store
            with redis.Redis.from_url(store["url"]) as client:
                names = [*client.scan_iter("meshscope:group:*")]
                registries = [k for k in client.scan_iter("meshscope:groups:*") if client.type(k) == b"hash"]
                names += [field for key in registries for field in client.hkeys(key)]
                left += [n for n in names if b"relaykill" in n or b"partition" in n]
        assert left == []  # chaos forgets its probe groups: none is left to read as a stopped consumer
        assert state["restarts"].get("relay-aws:us-east-1", 0) >= 1 or any(
            n >= 1 for k, n in state["restarts"].items() if k.startswith("relay-")
        )  # up started the killed relay again
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        if up.stdout:
            up.stdout.close()
