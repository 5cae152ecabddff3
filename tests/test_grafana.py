"""The Grafana provisioning in deploy/grafana against what exists: data sources, tables, columns, metrics.

Grafana itself does not run here. Each ClickHouse panel's SQL, with the data
source plugin's macros expanded as the plugin does, runs against the real
schema (embedded ClickHouse, migrated); the Prometheus panels' PromQL is run
against a real Prometheus scraping a real stack in test_prometheus.py, whose
metric names are checked here against the names the services declare.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
TO_S = int(time.time())
FROM_S = TO_S - 3600  # the last hour: older raw rows may be past the flows table's TTL
PROMQL_FUNCTIONS = {"sum", "rate", "max", "histogram_quantile", "by", "le"}


def datasources() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "meshscope.yml").read_text())
    assert doc["apiVersion"] == 1
    return {d["uid"]: d for d in doc["datasources"]}


def dashboard(uid: str) -> dict[str, Any]:
    found = [json.loads(p.read_text()) for p in DASHBOARDS]
    return next(d for d in found if d["uid"] == uid)


def targets(uid: str) -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in dashboard(uid)["panels"] for t in p["targets"]]


def expand_macros(sql: str, interval_s: int = 60) -> str:
    """The ClickHouse data source plugin's macros, expanded as the plugin does (seconds)."""
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        lambda m: f"{m.group(1)} >= toDateTime({FROM_S}) AND {m.group(1)} <= toDateTime({TO_S})",
        sql,
    )
    sql = re.sub(
        r"\$__timeInterval\(([^)]+)\)",
        lambda m: f"toStartOfInterval(toDateTime({m.group(1)}), INTERVAL {interval_s} second)",
        sql,
    )
    sql = sql.replace("$__fromTime", f"toDateTime({FROM_S})").replace("$__toTime", f"toDateTime({TO_S})")
    sql = sql.replace("$__interval_s", str(interval_s))
    assert "$" not in sql, f"a macro this test does not know: {sql}"
    return sql


def test_provisioning_names_two_data_sources_and_loads_the_dashboards() -> None:
    found = datasources()
    assert {d["type"] for d in found.values()} == {"prometheus", "grafana-clickhouse-datasource"}
    ch = found["meshscope-clickhouse"]["jsonData"]
    assert ch["protocol"] in ("http", "native") and ch["defaultDatabase"] == "meshscope"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "meshscope.yml").read_text())
    assert providers["providers"][0]["options"]["path"].endswith("/meshscope")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    grafana = compose["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts[providers["providers"][0]["options"]["path"]] == "./deploy/grafana/dashboards"
    assert grafana["profiles"] == ["observability"] == compose["prometheus"]["profiles"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_follow_grafanas_dashboard_model(path: Path) -> None:
    """The fields Grafana's dashboard schema requires, ids and places that do not collide, known data sources."""
    d = json.loads(path.read_text())
    assert {"uid", "title", "schemaVersion", "panels", "time"} <= set(d)
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", d["uid"]) and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    sources = datasources()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["type"] in {"timeseries", "table", "state-timeline", "stat"}, p["type"]
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
        for t in p["targets"]:
            assert sources[t["datasource"]["uid"]]["type"] == t["datasource"]["type"], p["title"]


def promql_metrics() -> set[str]:
    names: set[str] = set()
    for _, t in targets("meshscope-prometheus"):
        names |= set(re.findall(r"\b(meshscope_[a-z0-9_]+|ALERTS)\b", t["expr"]))
    return names


def test_every_promql_metric_is_one_the_services_export() -> None:
    from tests.test_metrics import declared_metrics

    declared = declared_metrics()
    for name in promql_metrics() - {"ALERTS"}:
        base = name.removeprefix("meshscope_")
        if base.endswith("_bucket"):
            assert declared.get(base.removesuffix("_bucket")) == "histogram", name
        else:
            assert base in declared, f"{name} is exported by no service"


def test_every_clickhouse_panel_runs_against_the_real_schema(ch_admin: Any, clickhouse_url: str, database: str) -> None:
    from collector.clickhouse import make_client, migrate
    from collector.schema import SchemaOptions

    migrate(ch_admin, SchemaOptions(database=database))
    client = make_client(clickhouse_url, database=database)  # as the data source's defaultDatabase
    # a delivery, a drop, a link sample and a group sample inside the panels' time range
    at = f"toDateTime64({FROM_S + 60}, 6, 'UTC')"
    a, b = "'aws:us-east-1'", "'gcp:europe-west1'"
    client.command(
        "INSERT INTO flows (ts, event_id, trace_id, span_id, topic, kind, src_region, dst_region, relay, e2e_ms,"
        f" status) VALUES ({at}, 'e1', 't1', 's1', 'orders.created', 'deliver', {a}, {b}, 'r', 120, 'ok'),"
        f" ({at}, 'e2', 't2', 's2', 'orders.created', 'drop', {a}, {a}, 'r', 0, 'no_route')"
    )
    client.command(
        "INSERT INTO links (ts, relay, src_region, dst_region, state, rtt_ms, queue_depth, reconnects)"
        f" VALUES ({at}, 'r', 'aws:us-east-1', 'gcp:europe-west1', 'up', 80, 0, 1)"
    )
    client.command(
        "INSERT INTO group_lag (ts, region, `group`, owner, patterns, added, acked, pending, lag, oldest_age_s,"
        f" consumers) VALUES ({at}, 'aws:us-east-1', 'audit', 'ops', ['>'], 10, 2, 3, 5, 4.5, 0)"
    )
    ran = 0
    for title, t in targets("meshscope-clickhouse"):
        sql = expand_macros(t["rawSql"])
        try:
            result = client.query(sql)
        except Exception as exc:  # the panel's title in the failure
            pytest.fail(f"{title}: {exc}\n{sql}")
        assert result.result_rows, f"{title}: no rows from the sample data\n{sql}"
        if t["format"] == 0:  # time series: the first column is the time
            assert result.column_names[0] == "time", title
        ran += 1
    assert ran == len(dashboard("meshscope-clickhouse")["panels"]) >= 5


def test_compose_prometheus_configuration_is_valid(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        pytest.skip("promtool is missing: apt-get install -y prometheus")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "compose.yml").read_text())
    # promtool reads the files it names: point them at stand-ins
    (tmp_path / "token").write_text("x")
    config["rule_files"] = [str(ROOT / "deploy" / "prometheus-rules.yml")]
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(tmp_path / "token")
        if "tls_config" in job:
            job["tls_config"]["ca_file"] = str(tmp_path / "token")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"meshscope-relays", "meshscope-dashboard", "meshscope-collector"} == jobs
