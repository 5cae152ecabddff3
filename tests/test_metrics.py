"""The metrics registry (on prometheus_client), the event-loop lag monitor, and the Prometheus rules file."""

from __future__ import annotations

import ast
import itertools
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from meshcore.loopmon import LAG_LAST_SECONDS, LAG_SECONDS, describe, monitor_loop
from meshcore.metrics import (
    E2E_LATENCY_MS,
    HOP_LATENCY_MS,
    LATENCY_BUCKETS_MS,
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Registry,
    content_type_for,
    open_sockets,
)
from meshcore.supervise import Supervisor
from router.status import METRICS as RELAY_METRICS
from tests.conftest import eventually, scaled

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus-rules.yml"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def relay_like() -> Registry:
    reg = Registry(topic_label_max=3)
    reg.describe("events_in_total", "counter", "Events received")
    reg.describe("link_state", "gauge", "Link state")
    reg.describe("subscribers", "gauge", "Connected live subscribers")
    reg.describe(HOP_LATENCY_MS, "histogram", "Hop latency")
    return reg


# (what is done to a fresh relay_like() registry, lines the text format must hold)
RENDER_CASES: list[tuple[str, Callable[[Registry], None], list[str]]] = [
    (
        "labelled counter, labels sorted by name",
        lambda r: (
            r.inc("events_in_total", topic="a.b", source="producer"),
            r.inc("events_in_total", 2, topic="a.b", source="producer"),
        ),
        [
            "# TYPE meshscope_events_in_total counter",
            'meshscope_events_in_total{source="producer",topic="a.b"} 3',
        ],
    ),
    (
        "batched counter",
        lambda r: r.inc_many("events_in_total", ("source", "topic"), {("producer", "x"): 4, ("eu", "y"): 1}),
        [
            'meshscope_events_in_total{source="producer",topic="x"} 4',
            'meshscope_events_in_total{source="eu",topic="y"} 1',
        ],
    ),
    (
        "batched counter, label names in another order",
        lambda r: r.inc_many("events_in_total", ("topic", "source"), {("x", "producer"): 2}),
        ['meshscope_events_in_total{source="producer",topic="x"} 2'],
    ),
    (
        "labelled gauge",
        lambda r: r.set("link_state", 2, peer="gcp:europe-west1"),
        ["# TYPE meshscope_link_state gauge", 'meshscope_link_state{peer="gcp:europe-west1"} 2'],
    ),
    ("label-less gauge", lambda r: r.set("subscribers", 7), ["meshscope_subscribers 7"]),
    (
        "label values escaped",
        lambda r: r.set("link_state", 1, peer='a"b\\c\nd'),
        ['meshscope_link_state{peer="a\\"b\\\\c\\nd"} 1'],
    ),
    (
        "histogram: cumulative buckets, count and sum",
        lambda r: [r.observe(HOP_LATENCY_MS, ms, peer="eu", topic="t") for ms in (0.05, 3, 3, 70_000)],
        [
            "# TYPE meshscope_hop_latency_ms histogram",
            'meshscope_hop_latency_ms_bucket{le="0.25",peer="eu",topic="t"} 1',
            'meshscope_hop_latency_ms_bucket{le="2.5",peer="eu",topic="t"} 1',
            'meshscope_hop_latency_ms_bucket{le="5.0",peer="eu",topic="t"} 3',
            'meshscope_hop_latency_ms_bucket{le="60000.0",peer="eu",topic="t"} 3',
            'meshscope_hop_latency_ms_bucket{le="+Inf",peer="eu",topic="t"} 4',
            'meshscope_hop_latency_ms_count{peer="eu",topic="t"} 4',
            'meshscope_hop_latency_ms_sum{peer="eu",topic="t"} 70006.05',
        ],
    ),
    (
        "negative latency (clock skew) counts as 0",
        lambda r: r.observe(HOP_LATENCY_MS, -5.0, peer="eu", topic="t"),
        [
            'meshscope_hop_latency_ms_bucket{le="0.25",peer="eu",topic="t"} 1',
            'meshscope_hop_latency_ms_sum{peer="eu",topic="t"} 0',
        ],
    ),
]


def sample_lines(text: str) -> set[str]:
    """Lines of an exposition with values normalised (``3.0`` -> ``3``) and exemplars cut off."""
    out = set()
    for line in text.splitlines():
        line = line.split(" # ")[0]
        if line.startswith("#"):
            out.add(line)
            continue
        series, _, value = line.rpartition(" ")
        number = float(value)
        out.add(f"{series} {int(number) if number.is_integer() else number}")
    return out


@pytest.mark.parametrize(("case", "act", "expected"), RENDER_CASES, ids=[c[0] for c in RENDER_CASES])
def test_render_text_and_openmetrics(case: str, act: Callable[[Registry], None], expected: list[str]) -> None:
    reg = relay_like()
    act(reg)
    text = reg.render()
    assert set(expected) <= sample_lines(text), text
    list(parse_text(text))  # Prometheus text a parser accepts
    om = reg.render(openmetrics=True)
    assert om.endswith("# EOF\n")
    om_expected = {line.replace("# TYPE meshscope_events_in_total", "# TYPE meshscope_events_in") for line in expected}
    assert om_expected <= sample_lines(om.removesuffix("# EOF\n")), om
    list(parse_openmetrics(om))  # strict: one family per name, well-formed exemplars, the EOF


def test_existing_assertions_on_the_text_format_still_hold() -> None:
    reg = relay_like()
    reg.inc("events_in_total", topic="a.b", source="producer")
    reg.inc("events_in_total", 2, topic="a.b", source="producer")
    reg.set("link_state", 2, peer="gcp:europe-west1")
    text = reg.render()
    assert 'meshscope_events_in_total{source="producer",topic="a.b"} 3' in text
    assert 'meshscope_link_state{peer="gcp:europe-west1"} 2' in text
    assert "_created" not in text


def test_openmetrics_carries_the_trace_id_as_exemplar_of_the_bucket() -> None:
    reg = relay_like()
    reg.observe(HOP_LATENCY_MS, 3.2, TRACE, peer="eu", topic="orders")
    reg.observe(HOP_LATENCY_MS, 400.0, None, peer="eu", topic="orders")
    reg.observe(HOP_LATENCY_MS, 450.0, "", peer="eu", topic="orders")  # no trace context: no exemplar
    reg.observe(HOP_LATENCY_MS, 1.0, "x" * 200, peer="eu", topic="orders")  # too long for OpenMetrics: left out
    om = reg.render(openmetrics=True)
    (family,) = [f for f in parse_openmetrics(om) if f.name == "meshscope_hop_latency_ms"]
    exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.exemplar}
    assert list(exemplars) == ["5.0"]
    assert exemplars["5.0"].labels == {"trace_id": TRACE} and exemplars["5.0"].value == 3.2
    assert abs(float(exemplars["5.0"].timestamp or 0) - time.time()) < 60
    assert f'# {{trace_id="{TRACE}"}} 3.2' in om
    assert "trace_id" not in reg.render()  # the Prometheus text format has no exemplars


@pytest.mark.parametrize(
    ("accept", "openmetrics", "content_type"),
    [
        (None, False, TEXT_CONTENT_TYPE),
        ("", False, TEXT_CONTENT_TYPE),
        ("text/plain;version=0.0.4;q=1,*/*;q=0.1", False, TEXT_CONTENT_TYPE),
        (
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
            "text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            True,
            OPENMETRICS_CONTENT_TYPE,
        ),
        ("Application/OpenMetrics-Text", True, OPENMETRICS_CONTENT_TYPE),
        ("application/openmetrics-text;q=0, text/plain", False, TEXT_CONTENT_TYPE),
        ("application/openmetrics-text;q=bogus", False, TEXT_CONTENT_TYPE),
    ],
)
def test_content_type_follows_the_accept_header(accept: str | None, openmetrics: bool, content_type: str) -> None:
    assert content_type_for(accept) == (openmetrics, content_type)


def test_a_counter_beside_a_gauge_of_its_base_name_stays_valid_openmetrics() -> None:
    reg = Registry()
    reg.describe("collector_insert_seconds", "gauge", "Duration of the last insert")
    reg.describe("collector_insert_seconds_total", "counter", "Time spent inserting")
    reg.set("collector_insert_seconds", 0.5)
    reg.inc("collector_insert_seconds_total", 0.5)
    assert "# TYPE meshscope_collector_insert_seconds_total counter" in reg.render()
    families = {f.name: f for f in parse_openmetrics(reg.render(openmetrics=True))}
    assert families["meshscope_collector_insert_seconds"].type == "gauge"
    assert families["meshscope_collector_insert_seconds_total"].samples[0].value == 0.5


@pytest.mark.parametrize("kind", ["counter", "gauge", "histogram"])
def test_topic_labels_are_bounded(kind: str) -> None:
    reg = Registry(topic_label_max=3)
    name = {"counter": "events_total", "gauge": "depth", "histogram": E2E_LATENCY_MS}[kind]
    reg.describe(name, kind, "bounded")
    for i in range(1000):
        topic = f"t{i}"
        if kind == "counter":
            reg.inc(name, topic=topic, source="producer")
        elif kind == "gauge":
            reg.set(name, 1, topic=topic, source="producer")
        else:
            reg.observe(name, 1.0, TRACE, topic=topic, source="producer")
    if kind == "counter":
        reg.inc_many("events_total", ("source", "topic"), {("producer", "t1"): 1, ("producer", "new"): 5})
    text = reg.render()
    count_of = {"counter": "meshscope_events_total{", "gauge": "meshscope_depth{", "histogram": "_count{"}[kind]
    assert text.count(count_of) == 4  # three topics and the rest
    assert {"counter": 1002, "gauge": 1, "histogram": 997}[kind] == reg.get(name, source="producer", topic="_other")
    assert reg.total(name) == {"counter": 1006, "gauge": 4, "histogram": 1000}[kind]
    list(parse_openmetrics(reg.render(openmetrics=True)))


def test_total_sums_the_series_whose_labels_include_the_ones_given() -> None:
    reg = relay_like()
    reg.inc_many("events_in_total", ("source", "topic"), {("producer", "a"): 2, ("eu", "a"): 3, ("producer", "b"): 4})
    for peer, ms in (("eu", 1.0), ("eu", 2.0), ("us", 3.0)):
        reg.observe(HOP_LATENCY_MS, ms, peer=peer, topic="a")
    assert reg.total("events_in_total") == 9
    assert reg.total("events_in_total", topic="a") == 5
    assert reg.total("events_in_total", source="producer") == 6
    assert reg.total("events_in_total", source="nobody") == 0
    assert reg.get("events_in_total", source="eu", topic="a") == 3
    assert reg.total(HOP_LATENCY_MS, peer="eu") == 2 and reg.get(HOP_LATENCY_MS, peer="us", topic="a") == 1


def test_remove_drops_one_series() -> None:
    reg = relay_like()
    reg.set("link_state", 2, peer="eu")
    reg.set("link_state", 0, peer="us")
    reg.observe(HOP_LATENCY_MS, 1.0, peer="eu", topic="a")
    reg.observe(HOP_LATENCY_MS, 1.0, peer="us", topic="a")
    reg.remove("link_state", peer="eu")
    reg.remove(HOP_LATENCY_MS, peer="us", topic="a")
    reg.remove("link_state", peer="never-there")
    text = reg.render()
    assert 'peer="eu"' not in text.split("meshscope_link_state", 1)[1].split("# HELP", 1)[0]
    assert 'meshscope_link_state{peer="us"} 0' in sample_lines(text)
    assert 'meshscope_hop_latency_ms_count{peer="us",topic="a"}' not in text
    reg.observe(HOP_LATENCY_MS, 1.0, peer="us", topic="a")  # a removed series starts again from zero
    assert reg.get(HOP_LATENCY_MS, peer="us", topic="a") == 1 and reg.get(HOP_LATENCY_MS, peer="eu", topic="a") == 1


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.describe("x_total", "summary", "?"), ValueError),
        (lambda r: r.describe("events", "counter", "counters end in _total"), ValueError),
        (lambda r: r.describe("bad-name", "gauge", "?"), ValueError),
        (lambda r: r.describe("g", "gauge", "?", buckets=[1.0]), ValueError),
        (lambda r: r.describe("h", "histogram", "?", buckets=[1.0, 1.0]), ValueError),
        (lambda r: r.describe("h", "histogram", "?", buckets=[]), ValueError),
        (lambda r: r.describe("link_state", "counter", "already a gauge"), ValueError),
        (lambda r: r.inc("undeclared_total"), KeyError),
        (lambda r: r.observe("link_state", 1.0), KeyError),
        (lambda r: r.inc_many("events_in_total", ("source", "topic"), {("only-one",): 1}), ValueError),
    ],
)
def test_misuse_is_refused(call: Callable[[Registry], Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        call(relay_like())


def test_custom_buckets_and_default_latency_buckets() -> None:
    reg = Registry()
    reg.describe("batch_rows", "histogram", "Rows per batch", buckets=[1000, 10, 100])
    reg.observe("batch_rows", 50)
    assert 'meshscope_batch_rows_bucket{le="100.0"} 1' in sample_lines(reg.render())
    assert LATENCY_BUCKETS_MS[0] == 0.25 and LATENCY_BUCKETS_MS[-1] == 60_000
    # where cross-region latencies are (10 ms - 1 s), no bucket is over 1.5 times the one below it,
    # so histogram_quantile is never off by more than half a bucket's lower bound there
    within = [b for b in LATENCY_BUCKETS_MS if 10 <= b <= 1_000]
    assert max(hi / lo for lo, hi in itertools.pairwise(within)) <= 1.5
    assert list(LATENCY_BUCKETS_MS) == sorted(LATENCY_BUCKETS_MS)


def test_registries_are_independent() -> None:
    one, two = relay_like(), relay_like()
    one.inc("events_in_total", source="producer", topic="a")
    assert two.total("events_in_total") == 0
    assert one.collector_registry is not two.collector_registry
    assert "meshscope_events_in_total{" not in two.render()


def test_render_in_a_worker_thread_while_the_loop_counts() -> None:
    reg = Registry(topic_label_max=1000)
    reg.describe("events_in_total", "counter", "Events received")
    reg.describe(HOP_LATENCY_MS, "histogram", "Hop latency")
    errors: list[Exception] = []
    scrapes: list[int] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                list(parse_openmetrics(reg.render(openmetrics=True)))  # cumulative buckets, count == +Inf
                scrapes.append(1)
        except Exception as exc:
            errors.append(exc)

    worker = threading.Thread(target=scrape)
    worker.start()
    try:
        for i in range(3_000):
            reg.observe(HOP_LATENCY_MS, float(i % 300), TRACE, peer=f"p{i % 3}", topic=f"t{i % 50}")
            reg.inc("events_in_total", source="producer", topic=f"t{i % 300}")
            if i % 200 == 0:
                reg.remove(HOP_LATENCY_MS, peer="p1", topic="t1")
    finally:
        done.set()
        worker.join()
    assert errors == [] and scrapes


def test_process_metrics_are_there_when_asked() -> None:
    reg = Registry(process=True)
    before = open_sockets()
    assert before is not None
    with socket.socket() as extra:
        assert extra.fileno() >= 0
        text_names = {f.name for f in parse_text(reg.render())}
        om_names = {f.name for f in parse_openmetrics(reg.render(openmetrics=True))}
        for names in (text_names, om_names):
            for name in (
                "process_resident_memory_bytes",
                "process_cpu_seconds",
                "process_open_fds",
                "meshscope_open_sockets",
            ):
                assert name in names, names
        assert "\nprocess_cpu_seconds_total " in reg.render()
        sockets = next(f for f in parse_text(reg.render()) if f.name == "meshscope_open_sockets")
        assert sockets.samples[0].value >= before + 1
    assert "process_resident_memory_bytes" not in Registry().render()


def late_wakeups(reg: Registry) -> float:
    """Loop-lag observations over 0.1 s, read from /metrics."""
    (family,) = [f for f in parse_text(reg.render()) if f.name == "meshscope_event_loop_lag_seconds"]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    return buckets["+Inf"] - buckets["0.1"]


async def test_loop_lag_monitor_records_a_blocked_loop() -> None:
    reg = Registry()
    describe(reg)  # what monitor_loop declares as it starts; declaring twice is harmless
    supervisor = Supervisor()
    supervisor.spawn("loop-monitor", lambda: monitor_loop(reg, interval_s=0.02))
    try:
        await eventually(lambda: reg.get(LAG_SECONDS) >= 3)
        before = late_wakeups(reg)  # 0 on an idle machine

        async def hog() -> None:
            time.sleep(scaled(0.3))  # holds the loop, as a synchronous call would

        await hog()
        await eventually(lambda: late_wakeups(reg) >= before + 1)  # the wake-up the hog delayed by over 0.1 s
        assert reg.get(LAG_LAST_SECONDS) >= 0
        assert "meshscope_event_loop_lag_last_seconds" in reg.render()
        assert supervisor.problems() == []
    finally:
        await supervisor.stop()


# --- the Prometheus rules file ---

ALERTS = {
    "EdgeErrorRateHigh": "2m",
    "EdgeLagP99High": "5m",
    "EventRateDrop": "10m",
    "LinkDown": "1m",
    "PolicyOrSchemaRejections": "10m",
    "ConsumerLagGrowing": "10m",
    "ConsumerGroupStopped": "2m",
    "TargetDown": "1m",
    "CollectorLagHigh": "2m",
    "RelayDegraded": "1m",
    "TaskRestarts": "1m",
}


def declared_metrics() -> dict[str, str]:
    """name -> kind of every metric a service declares: the relay's table, and ``describe("name", "kind", ...)``."""
    out = {name: kind for name, kind, _ in RELAY_METRICS}
    for package in ("router", "collector", "meshcore"):
        for path in sorted((ROOT / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "describe":
                    literals = [
                        a.value for a in node.args[:2] if isinstance(a, ast.Constant) and isinstance(a.value, str)
                    ]
                    if len(literals) == 2:
                        out[literals[0]] = literals[1]
    return out


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    out: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        out += group["rules"]
    return out


def test_rules_file_has_the_dashboard_alerts() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) == set(ALERTS)
    for name, rule in found.items():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule.get("for") == ALERTS[name], name
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_rules_name_only_metrics_the_services_declare() -> None:
    declared = declared_metrics()
    for rule in rules():
        text = rule["expr"] + " ".join(rule["annotations"].values())
        names = set(re.findall(r"\bmeshscope_([a-z0-9_]+)", text))
        assert names, rule["alert"]
        for name in names:
            if name.endswith("_bucket"):
                assert declared.get(name.removesuffix("_bucket")) == "histogram", (rule["alert"], name)
            else:
                assert name in declared, (rule["alert"], name)
        for inner in re.findall(r"\b(?:rate|increase)\(meshscope_([a-z0-9_]+)", rule["expr"]):
            assert inner.endswith("_bucket") or declared[inner] == "counter", (rule["alert"], inner)


PROMTOOL_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'meshscope_events_out_total{{instance="r1",region="aws:us-east-1",destination="eu",topic="a"}}'
        values: '0+100x20'
      - series: 'meshscope_drops_total{{instance="r1",region="aws:us-east-1",reason="backpressure"}}'
        values: '0+10x20'
      - series: 'meshscope_events_out_total{{instance="r2",region="gcp:europe-west1",destination="eu",topic="a"}}'
        values: '0+100x20'
      - series: 'meshscope_drops_total{{instance="r2",region="gcp:europe-west1",reason="backpressure"}}'
        values: '0+1x20'
      - series: 'meshscope_drops_total{{instance="r3",region="azure:westeurope",reason="link_down"}}'
        values: '0+5x20'
      - series: 'meshscope_drops_total{{instance="r4",region="aws:eu-west-1",reason="policy_denied"}}'
        values: '0+50x20'
      - series: 'meshscope_events_out_total{{instance="r4",region="aws:eu-west-1",destination="eu",topic="a"}}'
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 10m
        alertname: EdgeErrorRateHigh
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1, region: "aws:us-east-1"}}
            exp_annotations:
              summary: Relay in aws:us-east-1 loses 9.091% of its events
              description: >-
                Over 5 minutes, 9.091% of the events that entered the relay in aws:us-east-1 (r1) were
                lost (meshscope_drops_total by reason tells why).
          - exp_labels: {{severity: critical, instance: r3, region: "azure:westeurope"}}
            exp_annotations:
              summary: Relay in azure:westeurope loses 100% of its events
              description: >-
                Over 5 minutes, 100% of the events that entered the relay in azure:westeurope (r3) were
                lost (meshscope_drops_total by reason tells why).
  - interval: 1m
    input_series:
      - series: 'meshscope_e2e_latency_ms_bucket{{instance="r1",region="aws:us-east-1",peer="eu",topic="a",le="1000"}}'
        values: '0+1x20'
      - series: 'meshscope_e2e_latency_ms_bucket{{instance="r1",region="aws:us-east-1",peer="eu",topic="a",le="5000"}}'
        values: '0+100x20'
      - series: 'meshscope_e2e_latency_ms_bucket{{instance="r1",region="aws:us-east-1",peer="eu",topic="a",le="+Inf"}}'
        values: '0+100x20'
      - series: 'meshscope_e2e_latency_ms_bucket{{instance="r1",region="aws:us-east-1",peer="us",topic="a",le="1000"}}'
        values: '0+100x20'
      - series: 'meshscope_e2e_latency_ms_bucket{{instance="r1",region="aws:us-east-1",peer="us",topic="a",le="+Inf"}}'
        values: '0+100x20'
    alert_rule_test:
      - eval_time: 4m
        alertname: EdgeLagP99High
      - eval_time: 12m
        alertname: EdgeLagP99High
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1, region: "aws:us-east-1", peer: eu}}
            exp_annotations:
              summary: End-to-end p99 from eu to aws:us-east-1 is 4.96k ms
              description: >-
                The 99th percentile of publish-to-delivery latency for events from eu has been at
                least 2 s for 5 minutes. The OpenMetrics exemplars of meshscope_e2e_latency_ms_bucket
                link the slow events to their traces.
  - interval: 1m
    input_series:
      - series: 'meshscope_events_in_total{{instance="r1",region="aws:us-east-1",source="producer",topic="a"}}'
        values: '0+600x60 36000+100x40'
      - series: 'meshscope_events_in_total{{instance="r2",region="gcp:europe-west1",source="producer",topic="a"}}'
        values: '0+600x100'
    alert_rule_test:
      - eval_time: 60m
        alertname: EventRateDrop
      - eval_time: 90m
        alertname: EventRateDrop
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, region: "aws:us-east-1"}}
            exp_annotations:
              summary: Relay in aws:us-east-1 receives less than half the events of an hour ago
              description: >-
                Events received by the relay in aws:us-east-1 (r1; from producers and peers) fell to
                1.667/s, less than half the rate of one hour earlier.
  - interval: 1m
    input_series:
      - series: 'meshscope_link_state{{instance="r1",region="aws:us-east-1",peer="eu"}}'
        values: '2 2 0 0 0 0'
      - series: 'meshscope_link_state{{instance="r1",region="aws:us-east-1",peer="us"}}'
        values: '2 2 2 2 2 2'
      - series: 'meshscope_redis_up{{instance="r1",region="aws:us-east-1"}}'
        values: '1 1 0 0 0 0'
      - series: 'meshscope_task_restarts_total{{instance="r1",region="aws:us-east-1",task="group-reader"}}'
        values: '0 1 2 3 4 5'
    alert_rule_test:
      - eval_time: 5m
        alertname: LinkDown
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1, region: "aws:us-east-1", peer: eu}}
            exp_annotations:
              summary: Link aws:us-east-1 -> eu is not up
              description: >-
                The mesh link to eu has been in state 0 (0 down, 1 connecting, 3 draining) for a
                minute; events for that region are held or rerouted.
      - eval_time: 5m
        alertname: RelayDegraded
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r1, region: "aws:us-east-1"}}
            exp_annotations:
              summary: Relay in aws:us-east-1 cannot write to Redis
              description: >-
                Commits from the relay in aws:us-east-1 (r1) to Redis have failed for a minute; flow
                records wait in the relay's queue and are retried, and /healthz reports the relay degraded.
      - eval_time: 5m
        alertname: TaskRestarts
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, region: "aws:us-east-1", task: group-reader}}
            exp_annotations:
              summary: Relay in aws:us-east-1 restarted task group-reader 5 times
              description: >-
                Background task group-reader of r1 crashed and was restarted more than 3 times in 10
                minutes; its traceback is in the service's log.
  - interval: 1m
    input_series:
      - series: 'meshscope_drops_total{{instance="r1",region="aws:us-east-1",reason="policy_denied"}}'
        values: '0+90x30'
      - series: 'meshscope_drops_total{{instance="r1",region="aws:us-east-1",reason="schema_rejected"}}'
        values: '0+30x30'
      - series: 'meshscope_drops_total{{instance="r1",region="aws:us-east-1",reason="no_route"}}'
        values: '0+90x30'
      - series: 'meshscope_group_pending{{instance="r1",region="aws:us-east-1",group="billing"}}'
        values: '0+10x30'
      - series: 'meshscope_group_oldest_age_seconds{{instance="r1",region="aws:us-east-1",group="billing"}}'
        values: '0+60x30'
      - series: 'meshscope_group_pending{{instance="r1",region="aws:us-east-1",group="steady"}}'
        values: '50x30'
      - series: 'meshscope_group_lag{{instance="r1",region="aws:us-east-1",group="billing"}}'
        values: '0x30'
      - series: 'meshscope_group_lag{{instance="r1",region="aws:us-east-1",group="steady"}}'
        values: '0x30'
      - series: 'meshscope_group_consumers{{instance="r1",region="aws:us-east-1",group="billing"}}'
        values: '1x30'
      - series: 'meshscope_group_consumers{{instance="r1",region="aws:us-east-1",group="steady"}}'
        values: '1x30'
      - series: 'meshscope_group_pending{{instance="r1",region="aws:us-east-1",group="stopped"}}'
        values: '0x30'
      - series: 'meshscope_group_lag{{instance="r1",region="aws:us-east-1",group="stopped"}}'
        values: '0+859.8x25'
      - series: 'meshscope_group_consumers{{instance="r1",region="aws:us-east-1",group="stopped"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 16m
        alertname: PolicyOrSchemaRejections
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, region: "aws:us-east-1", reason: policy_denied}}
            exp_annotations:
              summary: 'Relay in aws:us-east-1 keeps refusing events: policy_denied'
              description: >-
                The relay in aws:us-east-1 (r1) has refused 90 events a minute as policy_denied for 10
                minutes: a producer keeps sending what the governance rules or the schema registry do not
                allow.
      - eval_time: 25m
        alertname: ConsumerLagGrowing
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r1, region: "aws:us-east-1", group: billing}}
            exp_annotations:
              summary: Consumer group billing in aws:us-east-1 is falling behind
              description: >-
                250 entries wait for group billing in aws:us-east-1 (not yet delivered, or delivered
                and not acknowledged) and the number has grown for 10 minutes; the oldest is 25m 0s.
          - exp_labels: {{severity: warning, instance: r1, region: "aws:us-east-1", group: stopped}}
            exp_annotations:
              summary: Consumer group stopped in aws:us-east-1 is falling behind
              description: >-
                21.49k entries wait for group stopped in aws:us-east-1 (not yet delivered, or
                delivered and not acknowledged) and the number has grown for 10 minutes; the oldest is
                of unknown age.
      - eval_time: 25m
        alertname: ConsumerGroupStopped
        exp_alerts:
          - exp_labels: {{severity: critical, region: "aws:us-east-1", group: stopped}}
            exp_annotations:
              summary: Consumer group stopped in aws:us-east-1 has no consumer
              description: >-
                No member of group stopped has been connected in aws:us-east-1 for 2 minutes while
                21.49k entries wait for it; the group keeps them until MESHSCOPE_GROUP_MAX_ENTRIES,
                then gives the oldest up with drop records.
  - interval: 15s
    input_series:
      - series: 'up{{job="meshscope-relays",instance="127.0.0.1:7400"}}'
        values: '1x8 0x20'
      - series: 'meshscope_anonymous{{job="meshscope-relays",instance="127.0.0.1:7400",region="aws:us-east-1"}}'
        values: '0x8 _x20'
      - series: 'up{{job="meshscope-relays",instance="127.0.0.1:7401"}}'
        values: '1x28'
      - series: 'up{{job="meshscope-dashboard",instance="127.0.0.1:8080",service="dashboard"}}'
        values: '0x28'
      - series: 'up{{job="node",instance="127.0.0.1:9100"}}'
        values: '0x28'
    alert_rule_test:
      - eval_time: 2m
        alertname: TargetDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: meshscope-dashboard, instance: "127.0.0.1:8080", service: dashboard}}
            exp_annotations:
              summary: meshscope-dashboard target 127.0.0.1:8080 is down
              description: >-
                Prometheus has not been able to scrape 127.0.0.1:8080 of job meshscope-dashboard
                for a minute: the process is down, hung or unreachable, and what it would report is
                unknown.
      - eval_time: 4m
        alertname: TargetDown
        exp_alerts:
          - exp_labels:
              {{severity: critical, job: meshscope-relays, instance: "127.0.0.1:7400", region: "aws:us-east-1"}}
            exp_annotations:
              summary: meshscope-relays target 127.0.0.1:7400 (aws:us-east-1) is down
              description: >-
                Prometheus has not been able to scrape 127.0.0.1:7400 of job meshscope-relays (the
                relay in aws:us-east-1) for a minute: the process is down, hung or unreachable, and
                what it would report is unknown.
          - exp_labels: {{severity: critical, job: meshscope-dashboard, instance: "127.0.0.1:8080", service: dashboard}}
            exp_annotations:
              summary: meshscope-dashboard target 127.0.0.1:8080 is down
              description: >-
                Prometheus has not been able to scrape 127.0.0.1:8080 of job meshscope-dashboard
                for a minute: the process is down, hung or unreachable, and what it would report is
                unknown.
  - interval: 1m
    input_series:
      - series: 'meshscope_collector_lag_seconds{{instance="c1",region="gcp:europe-west1",stream="meshscope:flows"}}'
        values: '1 1 900 960 1020 1080 1140'
      - series: 'meshscope_collector_lag_seconds{{instance="c1",region="gcp:europe-west1",stream="meshscope:links"}}'
        values: '1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 3m
        alertname: CollectorLagHigh
      - eval_time: 5m
        alertname: CollectorLagHigh
        exp_alerts:
          - exp_labels: {{severity: warning, instance: c1, region: "gcp:europe-west1", stream: "meshscope:flows"}}
            exp_annotations:
              summary: meshscope:flows of gcp:europe-west1 is 18m 0s behind in ClickHouse
              description: >-
                The oldest record of meshscope:flows not yet in ClickHouse was written 18m 0s ago (c1):
                the map, SQL and meshscope's own alerts see old data; the dashboard greys it and holds
                back the alerts that read it. meshscope_collector_clickhouse_up says whether ClickHouse
                answers.
"""


def test_promtool_checks_the_rules_and_each_alert_fires_when_it_should(tmp_path: Path) -> None:
    if shutil.which("promtool") is None:
        advice = "promtool is missing: apt-get install -y prometheus"
        if os.environ.get("CI"):
            pytest.fail(advice + "; in CI the rules file must be checked")
        pytest.skip(advice)
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    spec = tmp_path / "rules_test.yml"
    spec.write_text(PROMTOOL_TESTS.format(rules=RULES))
    run = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
