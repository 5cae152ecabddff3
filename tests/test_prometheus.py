"""Real Prometheus (the Debian package) against a real ``meshscope up``, with the configuration up writes.

Every target up over TLS with the prometheus principal's token, every relay series
with its region, the collector's series on the dashboard's target, and the rules
matching a stopped consumer group and a relay that stopped answering. Their ``for``
durations are minutes, so here they reach ``pending``; that they then fire is the
promtool test in test_metrics.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port, scaled
from tests.test_grafana import targets as grafana_targets

pytestmark = pytest.mark.faults

RULES = Path(__file__).resolve().parent.parent / "deploy" / "prometheus-rules.yml"
REGIONS = ("aws:us-east-1", "gcp:europe-west1")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Path]:
    data = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshscope", "up", "--data-dir", str(data), "--port", str(free_port()),
         "--regions", ",".join(REGIONS), "--rate", "20", "--flap-interval", "0", "--failure-rate", "0",
         "--redis-port", str(free_port()), "--base-port", "0"],
        env={**os.environ, "MESHSCOPE_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + scaled(90)
        while not (data / "up.json").exists():
            assert proc.poll() is None, "meshscope up exited"
            assert time.monotonic() < deadline, "meshscope up did not come up"
            time.sleep(0.2)
        yield data
    finally:
        _stop(proc)


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def wait(self, what: str, check: Any, timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + scaled(timeout_s)
        while True:
            found = check()
            if found:
                return found
            assert time.monotonic() < deadline, f"Prometheus never saw {what}"
            time.sleep(0.5)


@pytest.fixture
def prometheus(up: Path, tmp_path: Path) -> Iterator[Prometheus]:
    if shutil.which("prometheus") is None:
        advice = "prometheus is missing: apt-get install -y prometheus"
        if os.environ.get("CI"):
            pytest.fail(advice)
        pytest.skip(advice)
    # the configuration meshscope up wrote, with the intervals of a test
    config = yaml.safe_load((up / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="900ms", evaluation_interval="1s")
    assert config["rule_files"] == [str(RULES)]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"meshscope-relays", "meshscope-dashboard"}
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}")
        prom.wait("its own start", lambda: _ready(prom.url))
        yield prom
    finally:
        _stop(proc, signal.SIGTERM)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def _alerts(prom: Prometheus, name: str) -> list[dict[str, Any]]:
    return [a for a in prom.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


def test_prometheus_scrapes_the_stack_and_the_rules_match_it(up: Path, prometheus: Prometheus) -> None:
    prom = prometheus
    # every target up: two relays and the dashboard, over TLS with the prometheus principal's token
    targets = prom.wait(
        "every target up",
        lambda: (
            (t := prom.get("/api/v1/targets")["activeTargets"])
            and len(t) == len(REGIONS) + 1
            and all(x["health"] == "up" for x in t)
            and t
        ),
    )
    assert {t["labels"]["job"] for t in targets} == {"meshscope-relays", "meshscope-dashboard"}
    assert {t["scrapeUrl"].split(":")[0] for t in targets} == {"https"}
    # every series a relay exports says its region; the scrape's own series (up, scrape_*) are Prometheus's
    prom.wait("the relays' series", lambda: prom.query('count(meshscope_anonymous{job="meshscope-relays"}) == 2'))
    unlabelled = prom.query('count by (__name__) ({job="meshscope-relays", region="", __name__!~"up|scrape_.*"})')
    assert unlabelled == []
    regions = {r["metric"]["region"] for r in prom.query('process_resident_memory_bytes{job="meshscope-relays"}')}
    assert regions == set(REGIONS)
    # the collector's series, on the dashboard's target, and its freshness in seconds
    lag = prom.wait(
        "the collector's lag", lambda: prom.query('meshscope_collector_lag_seconds{job="meshscope-dashboard"}')
    )
    assert float(lag[0]["value"][1]) < 60
    assert prom.query("meshscope_collector_rows_inserted_total > 0")

    # a durable group whose only member left: its backlog grows with no consumer anywhere in its region
    state = json.loads((up / "up.json").read_text())
    region = REGIONS[0]
    port = state["relays"][region]["port"]
    token = (Path(state["tokens"]) / "ops.token").read_text().strip()
    _join_and_leave(f"wss://127.0.0.1:{port}", "audit", token, state["ca"])
    stopped = prom.wait("ConsumerGroupStopped pending", lambda: _alerts(prom, "ConsumerGroupStopped"))
    assert stopped[0]["labels"]["group"] == "audit" and stopped[0]["labels"]["region"] == region
    assert stopped[0]["state"] in ("pending", "firing")

    # a relay that stops answering: TargetDown names its region from its last scrape
    pid = state["relays"][REGIONS[1]]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        down = prom.wait("TargetDown pending", lambda: _alerts(prom, "TargetDown"))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert down[0]["labels"]["region"] == REGIONS[1] and down[0]["labels"]["job"] == "meshscope-relays"
    assert "(gcp:europe-west1) is down" in down[0]["annotations"]["summary"]

    # the Grafana dashboard's panels: every query valid, every metric it names scraped from this stack
    # (ALERTS is Prometheus's own series of the rules' alerts, pending ones included)
    scraped = set(prom.get("/api/v1/label/__name__/values"))
    for title, target in grafana_targets("meshscope-prometheus"):
        expr = target["expr"].replace("$__rate_interval", "1m")
        prom.query(expr)  # an invalid query is an error answer
        missing = set(re.findall(r"\b(meshscope_[a-z0-9_]+|ALERTS)\b", expr)) - scraped
        assert missing == set(), f"{title}: {missing} not scraped"


def _join_and_leave(url: str, group: str, token: str, ca: str) -> None:
    """Join durable group ``group`` on every topic, and leave: the group stays, with no member."""
    import asyncio

    from websockets.asyncio.client import connect

    async def run() -> None:
        context = ssl.create_default_context(cafile=ca)
        headers = {"authorization": f"Bearer {token}"}
        async with connect(f"{url}/v1/subscribe?topic=%3E&group={group}&consumer=c1", additional_headers=headers,
                           ssl=context):  # fmt: skip
            pass

    asyncio.run(run())
