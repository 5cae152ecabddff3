"""Metrics on the relay's hot path: the registry before and after prometheus_client.

The relay adds its counters once per batch (``inc_many``) and records two
latencies per delivered event (``observe``, with the trace id as exemplar), so
those are measured per operation, in-process, with no I/O. Baselines:

- ``inc_many`` and the counter-only render: ``HandWrittenRegistry`` below, a
  copy of meshcore/metrics.py as it was before prometheus_client;
- ``observe`` and the render with histograms: prometheus_client's own
  ``Histogram.labels(...).observe(...)``, the alternative that was measured and
  not taken (meshcore.metrics keeps plain bucket lists and builds
  prometheus_client families on scrape).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import generate_latest as text_exposition
from prometheus_client.openmetrics.exposition import generate_latest as om_exposition

from bench.common import Figure, repeat
from meshcore.metrics import (
    COARSE_LATENCY_BUCKETS_MS,
    E2E_LATENCY_MS,
    HOP_LATENCY_MS,
    LATENCY_BUCKETS_MS,
    Registry,
)
from router.regions import DEFAULT_REGIONS, resolve, rtt_ms

PEERS = ("aws:us-east-1", "aws:eu-west-1", "gcp:europe-west1", "gcp:asia-east1", "azure:westeurope", "onprem:dc1")
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"

Labels = tuple[tuple[str, str], ...]


class HandWrittenRegistry:
    """meshcore.metrics.Registry before prometheus_client (counters and gauges only), kept as the baseline."""

    def __init__(self, prefix: str = "meshscope_", topic_label_max: int = 200):
        self.prefix = prefix
        self.topic_label_max = topic_label_max
        self._topics: set[str] = set()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, defaultdict[Labels, float]] = {}

    def topic(self, value: str) -> str:
        if value in self._topics:
            return value
        if len(self._topics) < self.topic_label_max:
            self._topics.add(value)
            return value
        return "_other"

    def _labels(self, labels: dict[str, str]) -> Labels:
        if "topic" in labels:
            labels["topic"] = self.topic(labels["topic"])
        return tuple(sorted(labels.items()))

    def describe(self, name: str, kind: str, help_text: str) -> None:
        self._help[name] = (kind, help_text)
        self._values.setdefault(name, defaultdict(float))

    def inc_many(
        self,
        name: str,
        label_names: tuple[str, ...],
        counts: Mapping[tuple[str, str], int] | Mapping[tuple[str, ...], int],
    ) -> None:
        series = self._values[name]
        for values, amount in counts.items():
            series[self._labels(dict(zip(label_names, values, strict=True)))] += amount

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            full = self.prefix + name
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} {kind}")
            for labels, value in sorted(self._values[name].items()):
                if labels:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{full}{{{text}}} {_number(value)}")
                else:
                    lines.append(f"{full} {_number(value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def _ns_per_op(fn: Callable[[], None], ops: int) -> Callable[[], float]:
    def once() -> float:
        started = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - started) / ops

    return once


def _ms(fn: Callable[[], object]) -> Callable[[], float]:
    def once() -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000

    return once


def _batch() -> Counter[tuple[str, str]]:
    """100 distinct (source, topic) label sets, as the relay's per-batch Counter holds them."""
    return Counter({(PEERS[i % len(PEERS)], f"orders.t{i}"): 1 + i % 7 for i in range(100)})


def _observations(n: int) -> list[tuple[str, str, float]]:
    return [(PEERS[i % len(PEERS)], f"orders.t{i % 50}", 0.05 * (1 + i % 997)) for i in range(n)]


def hot_path(quick: bool) -> list[Figure]:
    runs, warmup = (3, 1) if quick else (15, 3)
    calls = 20 if quick else 500
    batch = _batch()

    old = HandWrittenRegistry()
    old.describe("events_in_total", "counter", "Events received")
    new = Registry()
    new.describe("events_in_total", "counter", "Events received")
    prom_registry = CollectorRegistry(auto_describe=False)
    prom_counter = PromCounter("meshscope_events_in", "Events received", ("source", "topic"), registry=prom_registry)

    def old_inc_many() -> None:
        for _ in range(calls):
            old.inc_many("events_in_total", ("source", "topic"), batch)

    def new_inc_many() -> None:
        for _ in range(calls):
            new.inc_many("events_in_total", ("source", "topic"), batch)

    def prom_inc_many() -> None:
        for _ in range(calls):
            for (source, topic), amount in batch.items():
                prom_counter.labels(source, topic).inc(amount)

    ops = calls * len(batch)
    base = repeat(runs, warmup, _ns_per_op(old_inc_many, ops))
    figures = [
        Figure(
            "inc_many, 100 label sets",
            "ns/label set",
            repeat(runs, warmup, _ns_per_op(new_inc_many, ops)),
            base,
            higher_is_better=False,
            note="baseline: the hand-written registry",
        ),
        Figure(
            "inc_many as prometheus_client Counter.labels().inc()",
            "ns/label set",
            repeat(runs, warmup, _ns_per_op(prom_inc_many, ops)),
            base,
            higher_is_better=False,
            note="not taken; baseline: the hand-written registry",
        ),
    ]

    observations = _observations(200 if quick else 5000)
    new.describe(HOP_LATENCY_MS, "histogram", "Hop latency")
    prom_hist = PromHistogram(
        "meshscope_hop_latency_ms", "Hop latency", ("peer", "topic"), registry=prom_registry, buckets=LATENCY_BUCKETS_MS
    )

    def new_observe() -> None:
        for peer, topic, ms in observations:
            new.observe(HOP_LATENCY_MS, ms, peer=peer, topic=topic)

    def new_observe_exemplar() -> None:
        for peer, topic, ms in observations:
            new.observe(HOP_LATENCY_MS, ms, TRACE_ID, peer=peer, topic=topic)

    def prom_observe() -> None:
        for peer, topic, ms in observations:
            prom_hist.labels(peer=peer, topic=topic).observe(ms)

    def prom_observe_exemplar() -> None:
        for peer, topic, ms in observations:
            prom_hist.labels(peer=peer, topic=topic).observe(ms, {"trace_id": TRACE_ID})

    n = len(observations)
    figures += [
        Figure(
            "observe",
            "ns/call",
            repeat(runs, warmup, _ns_per_op(new_observe, n)),
            repeat(runs, warmup, _ns_per_op(prom_observe, n)),
            higher_is_better=False,
            note="baseline: prometheus_client Histogram.labels(peer=, topic=).observe()",
        ),
        Figure(
            "observe with exemplar",
            "ns/call",
            repeat(runs, warmup, _ns_per_op(new_observe_exemplar, n)),
            repeat(runs, warmup, _ns_per_op(prom_observe_exemplar, n)),
            target="<= 2,000",
            higher_is_better=False,
            note="baseline: the same through prometheus_client, with {trace_id} as exemplar",
        ),
    ]
    return figures


def scrape(quick: bool) -> list[Figure]:
    """Rendering /metrics with 200 topics x 6 peers: counters alone, then with the two latency histograms."""
    runs, warmup = (2, 0) if quick else (7, 1)
    topics = [f"orders.t{i}" for i in range(20 if quick else 200)]
    pairs = [(peer, topic) for topic in topics for peer in PEERS]

    old = HandWrittenRegistry()
    new = Registry()
    prom_registry = CollectorRegistry(auto_describe=False)
    for r in (old, new):
        r.describe("events_in_total", "counter", "Events received")
        r.inc_many("events_in_total", ("source", "topic"), Counter(dict.fromkeys(pairs, 3)))
    figures = [
        Figure(
            f"render text, {len(pairs)} counter series",
            "ms",
            repeat(runs, warmup, _ms(new.render)),
            repeat(runs, warmup, _ms(old.render)),
            higher_is_better=False,
            note="baseline: the hand-written registry",
        )
    ]

    prom_counter = PromCounter("meshscope_events_in", "Events received", ("source", "topic"), registry=prom_registry)
    prom_hists = [
        PromHistogram(f"meshscope_{n}", n, ("peer", "topic"), registry=prom_registry, buckets=LATENCY_BUCKETS_MS)
        for n in (HOP_LATENCY_MS, E2E_LATENCY_MS)
    ]
    new.describe(E2E_LATENCY_MS, "histogram", "End-to-end latency")
    new.describe(HOP_LATENCY_MS, "histogram", "Hop latency")
    for i, (peer, topic) in enumerate(pairs):
        prom_counter.labels(peer, topic).inc(3)
        for ms in (0.3, 4.0, 120.0 + i):
            for name, hist in zip((HOP_LATENCY_MS, E2E_LATENCY_MS), prom_hists, strict=True):
                new.observe(name, ms, TRACE_ID, peer=peer, topic=topic)
                hist.labels(peer, topic).observe(ms, {"trace_id": TRACE_ID})
    series = f"{len(pairs)} counter + {2 * len(pairs)} histogram series"
    figures += [
        Figure(
            f"render text, {series}",
            "ms",
            repeat(runs, warmup, _ms(new.render)),
            repeat(runs, warmup, _ms(lambda: text_exposition(prom_registry))),
            higher_is_better=False,
            note="baseline: prometheus_client's own metrics, same series",
        ),
        Figure(
            f"render OpenMetrics, {series}",
            "ms",
            repeat(runs, warmup, _ms(lambda: new.render(openmetrics=True))),
            repeat(runs, warmup, _ms(lambda: om_exposition(prom_registry))),  # type: ignore[no-untyped-call]
            higher_is_better=False,
            note="every bucket with a trace_id exemplar; baseline: prometheus_client's own metrics",
        ),
    ]
    return figures


def _full_registry(topics: int) -> Registry:
    reg = Registry()
    pairs = [(peer, f"orders.t{i}") for i in range(topics) for peer in PEERS]
    reg.describe("events_in_total", "counter", "Events received")
    reg.inc_many("events_in_total", ("source", "topic"), Counter(dict.fromkeys(pairs, 3)))
    for name in (HOP_LATENCY_MS, E2E_LATENCY_MS):
        reg.describe(name, "histogram", name)
        for i, (peer, topic) in enumerate(pairs):
            for ms in (0.3, 4.0, 120.0 + i):
                reg.observe(name, ms, TRACE_ID, peer=peer, topic=topic)
    return reg


def scrape_stall(quick: bool) -> list[Figure]:
    """How long a scrape holds the relay's event loop: render on the loop (baseline) or in a worker thread."""
    runs = 2 if quick else 7
    reg = _full_registry(20 if quick else 200)

    async def worst_lag_ms(in_thread: bool) -> float:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        async def probe() -> float:
            worst = 0.0
            while not stop.is_set():
                slept_from = loop.time()
                await asyncio.sleep(0.001)
                worst = max(worst, loop.time() - slept_from - 0.001)
            return worst

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.02)
        if in_thread:
            await asyncio.to_thread(reg.render, True)
        else:
            reg.render(True)
        await asyncio.sleep(0.02)
        stop.set()
        return await task * 1000

    return [
        Figure(
            "event-loop stall per OpenMetrics scrape, render in a thread",
            "ms",
            [asyncio.run(worst_lag_ms(True)) for _ in range(runs)],
            [asyncio.run(worst_lag_ms(False)) for _ in range(runs)],
            higher_is_better=False,
            note="worst lag of a 1 ms timer during one scrape; baseline: render() called on the loop",
        )
    ]


def histogram_quantile(q: float, bounds: tuple[float, ...], values: list[float]) -> float:
    """Prometheus's histogram_quantile over ``values`` counted into ``bounds``: linear inside the bucket."""
    counts = [0] * (len(bounds) + 1)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    rank, below = q * len(values), 0
    for i, n in enumerate(counts):
        if below + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - below) / n
        below += n
    return bounds[-1]


def quantile_error(quick: bool) -> list[Figure]:
    """How far histogram_quantile's P99 is from the exact P99 the dashboard shows, over the demo's region pairs.

    Latencies: half the pair's RTT (the demo's one-way delay) plus a log-normal processing time (median 3 ms)
    and, for 3 % of events, an exponential resend delay (mean 40 ms). Baseline: the 1-2.5-5 buckets.
    """
    rnd = random.Random(7)
    regions = [resolve(r) for r in DEFAULT_REGIONS]
    n = 1_000 if quick else 5_000
    pairs = []
    for a in regions:
        for b in regions:
            if a != b:
                base = rtt_ms(a, b) / 2
                values = [
                    base
                    + rnd.lognormvariate(math.log(3), 0.7)
                    + (rnd.expovariate(1 / 40) if rnd.random() < 0.03 else 0.0)
                    for _ in range(n)
                ]
                pairs.append((f"{a.id}>{b.id}", values, sorted(values)[int(0.99 * n)]))
    worst = Figure("histogram_quantile P99 error, worst pair", "%", target="<= 10", higher_is_better=False)
    same = Figure("slowest pair by histogram_quantile is the exact slowest", "yes=1", target="1")
    for bounds, errors, picks in ((LATENCY_BUCKETS_MS, worst.values, same.values),
                                  (COARSE_LATENCY_BUCKETS_MS, worst.baseline, same.baseline)):  # fmt: skip
        estimates = [(histogram_quantile(0.99, bounds, values), name) for name, values, _ in pairs]
        exacts = [exact for _, _, exact in pairs]
        errors.append(max(abs(est - exact) / exact * 100 for (est, _), exact in zip(estimates, exacts, strict=True)))
        picks.append(1.0 if max(estimates)[1] == max((exact, name) for name, _, exact in pairs)[1] else 0.0)
    worst.note = (
        f"{len(pairs)} region pairs of the demo, {n:,} latencies each; {len(LATENCY_BUCKETS_MS)} buckets against the "
        f"{len(COARSE_LATENCY_BUCKETS_MS)} of the 1-2.5-5 series (baseline)"
    )
    return [worst, same]


def run(quick: bool) -> list[Figure]:
    return hot_path(quick) + scrape(quick) + scrape_stall(quick) + quantile_error(quick)
