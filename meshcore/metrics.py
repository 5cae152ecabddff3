"""Counters, gauges and latency histograms, exposed through prometheus_client.

Why this shape: the relay records on its per-event path, and prometheus_client's
own metric objects cost about 1.3 µs per labelled counter increment and 3.6 µs
per histogram observation with an exemplar (``python -m bench metrics``); two
latencies per delivered event would take a tenth of the relay's per-event
budget. So series live here as plain dicts and bucket lists (0.7 µs an
observation with its exemplar) and become prometheus_client metric families
only when scraped. The exposition (Prometheus text, or OpenMetrics with
exemplars), the registry and the process collector are prometheus_client's.

A scrape of a full registry (200 topics x 6 peers, two latency histograms) takes
a few hundred milliseconds of CPU. ``render`` only copies the series it reads,
so it may run in a worker thread while the event loop goes on counting, and
should (``await asyncio.to_thread(metrics.render, openmetrics)``).

Label values that come from outside (topics) are bounded: the first
``topic_label_max`` distinct topics get a series of their own, later ones are
summed under ``_other``, so a producer cannot grow /metrics without bound.
"""

from __future__ import annotations

import os
import re
import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import cast

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import generate_latest as _text_exposition
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics import exposition as _om
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

Labels = tuple[tuple[str, str], ...]

OTHER = "_other"
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
KINDS = (COUNTER, GAUGE, HISTOGRAM)

# 0.25 ms to 60 s, steps of 15-30 % between 10 ms and 1 s, where cross-region latencies are: there a
# bucket's width bounds how far histogram_quantile can be off (linear interpolation inside it), and
# 1-2.5-5 steps put the P99 of a 120 ms link anywhere in 100-250 ms (up to 70 % off, measured by
# ``python -m bench metrics``: these keep it within a few per cent). Coarse below (loopback) and above
# (a stuck link), to keep the series count (buckets x peers x topics) down.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 40, 50, 65, 80, 100, 125, 150, 175, 200,
    250, 300, 350, 400, 500, 650, 800, 1_000, 1_500, 2_500, 5_000, 10_000, 30_000, 60_000,
)  # fmt: skip
COARSE_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500,
    1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
)  # fmt: skip
"""The buckets before, in 1-2.5-5 steps: the baseline ``python -m bench metrics`` compares against."""
HOP_LATENCY_MS = "hop_latency_ms"
"""Histogram: one hop (peer relay to this relay), labels ``peer`` (source region) and ``topic``."""
E2E_LATENCY_MS = "e2e_latency_ms"
"""Histogram: publish to delivery at this relay, labels ``peer`` (source region) and ``topic``."""

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE: str = _om.CONTENT_TYPE_LATEST
# OpenMetrics allows 128 UTF-8 characters of exemplar label names and values together
EXEMPLAR_CHARS_MAX = 128
_TRACE_ID = "trace_id"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def content_type_for(accept_header: str | None) -> tuple[bool, str]:
    """``(openmetrics, content_type)`` for a scrape's Accept header.

    OpenMetrics when the scraper lists ``application/openmetrics-text`` with a
    non-zero quality (Prometheus does when exemplar storage is on), else the
    Prometheus text format 0.0.4.
    """
    for item in (accept_header or "").split(","):
        media, *params = item.split(";")
        if media.strip().lower() != "application/openmetrics-text":
            continue
        q = next((p.split("=", 1)[1].strip() for p in params if p.strip().lower().startswith("q=")), "1")
        try:
            accepted = float(q) > 0
        except ValueError:
            accepted = False
        if accepted:
            return True, OPENMETRICS_CONTENT_TYPE
    return False, TEXT_CONTENT_TYPE


class _Series:
    """One histogram series: per-bucket counts (not cumulative), the sum, the last exemplar per bucket."""

    __slots__ = ("counts", "exemplars", "sum")

    def __init__(self, buckets: int):
        self.counts = [0] * buckets
        self.sum = 0.0
        self.exemplars: list[tuple[str, float, float] | None] = [None] * buckets


class _Histogram:
    __slots__ = ("bounds", "by_call", "les", "series")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.les = [*(floatToGoString(b) for b in bounds), "+Inf"]  # type: ignore[no-untyped-call]
        self.series: dict[Labels, _Series] = {}
        # the same series by labels as passed (unsorted, topic not yet bounded): saves the sort per
        # observation; holds only series whose topic has a label of its own, so it stays bounded
        self.by_call: dict[Labels, _Series] = {}


class Registry:
    """The metrics of one service instance, with a prometheus_client ``CollectorRegistry`` of its own.

    ``process=True`` adds prometheus_client's process collector (resident
    memory, CPU seconds, open file descriptors) and ``<prefix>open_sockets``.
    """

    def __init__(
        self,
        prefix: str = "meshscope_",
        topic_label_max: int = 200,
        process: bool = False,
        const_labels: Mapping[str, str] | None = None,
    ):
        self.prefix = prefix
        self.topic_label_max = topic_label_max
        self.const_labels = dict(const_labels or {})
        """Labels every series of this registry carries (a relay's ``region``), its process metrics included."""
        for name in self.const_labels:
            if not _LABEL_NAME.fullmatch(name):
                raise ValueError(f"label name {name!r} is not [a-zA-Z_][a-zA-Z0-9_]*")
        self._topics: set[str] = set()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, defaultdict[Labels, float]] = {}
        self._histograms: dict[str, _Histogram] = {}
        # label order and the topic label's place, by the label names inc_many was given
        self._plans: dict[tuple[str, ...], tuple[tuple[int, ...], tuple[str, ...], int]] = {}
        self._extra: list[Collector] = []
        self._included: list[Registry] = []
        self.collector_registry = CollectorRegistry(auto_describe=False)
        """For prometheus_client's own servers and encoders (OpenMetrics-safe names)."""
        self.collector_registry.register(_Families(self, openmetrics=True))
        if process:
            extras: list[Collector] = [ProcessCollector(registry=None), _SocketCollector(prefix + "open_sockets")]
            for extra in extras:
                labelled = _Labelled(extra, self.const_labels) if self.const_labels else extra
                self.collector_registry.register(labelled)
                self._extra.append(labelled)

    def include(self, other: Registry) -> None:
        """Expose ``other``'s series in this registry's scrape too (a collector inside the dashboard's process)."""
        self._included.append(other)
        self.collector_registry.register(_Families(other, openmetrics=True))

    def topic(self, value: str) -> str:
        """The label value for a topic: itself while there is room, else ``_other``."""
        if value in self._topics:
            return value
        if len(self._topics) < self.topic_label_max:
            self._topics.add(value)
            return value
        return OTHER

    def _labels(self, labels: dict[str, str]) -> Labels:
        if "topic" in labels:
            labels["topic"] = self.topic(labels["topic"])
        return tuple(sorted(labels.items()))

    def describe(self, name: str, kind: str, help_text: str, buckets: Sequence[float] | None = None) -> None:
        """Declare a metric once: ``kind`` is ``counter`` (name ending ``_total``), ``gauge`` or ``histogram``.

        A histogram takes its upper bounds from ``buckets`` (default
        ``LATENCY_BUCKETS_MS``); ``+Inf`` is implied. Declaring again keeps the values.
        """
        if not _METRIC_NAME.fullmatch(self.prefix + name):
            raise ValueError(f"metric name {self.prefix + name!r} is not [a-zA-Z_:][a-zA-Z0-9_:]*")
        if kind not in KINDS:
            raise ValueError(f"metric {name}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        if kind == COUNTER and not name.endswith("_total"):
            raise ValueError(f"counter {name} must be named *_total")
        if kind != HISTOGRAM and buckets is not None:
            raise ValueError(f"metric {name}: only a histogram has buckets")
        known = self._help.get(name)
        if known and known[0] != kind:
            raise ValueError(f"metric {name} is already a {known[0]}")
        self._help[name] = (kind, help_text)
        if kind != HISTOGRAM:
            self._values.setdefault(name, defaultdict(float))
            return
        bounds = tuple(sorted(float(b) for b in (LATENCY_BUCKETS_MS if buckets is None else buckets)))
        if not bounds or len(set(bounds)) != len(bounds) or any(b != b or b == float("inf") for b in bounds):
            raise ValueError(f"histogram {name}: buckets must be distinct finite numbers")
        family = self._histograms.get(name)
        if family is None or family.bounds != bounds:
            self._histograms[name] = _Histogram(bounds)

    def zero(self, name: str, **labels: str) -> None:
        """Declare a counter's series at 0, so that it has a sample before its first increment.

        ``rate()`` and ``increase()`` see the first increment only from a series that existed before it.
        """
        self._values[name].setdefault(self._labels(labels), 0.0)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._values[name][self._labels(labels)] += amount

    def inc_many(
        self,
        name: str,
        label_names: tuple[str, ...],
        counts: Mapping[tuple[str, str], int] | Mapping[tuple[str, ...], int],
    ) -> None:
        """Add many counts at once: ``counts`` maps label values (in ``label_names`` order) to amounts.

        The relay counts per batch and calls this once, instead of once per event.
        """
        series = self._values[name]
        plan = self._plans.get(label_names)
        if plan is None:
            order = tuple(sorted(range(len(label_names)), key=label_names.__getitem__))
            names = tuple(label_names[i] for i in order)
            plan = self._plans[label_names] = (order, names, names.index("topic") if "topic" in names else -1)
        order, names, at = plan
        topic = self.topic
        for values, amount in counts.items():
            if len(values) != len(order):
                raise ValueError(f"{name}: {values!r} does not match {label_names!r}")
            ordered = [values[i] for i in order]
            if at >= 0:
                ordered[at] = topic(ordered[at])
            series[tuple(zip(names, ordered, strict=True))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][self._labels(labels)] = value

    def observe(self, name: str, value: float, exemplar_trace_id: str | None = None, **labels: str) -> None:
        """Count ``value`` into histogram ``name``; keep ``exemplar_trace_id`` as its bucket's exemplar.

        A negative or NaN value (clock skew between regions) counts as 0: the
        buckets and the sum are counters, and OpenMetrics forbids a falling sum.
        """
        family = self._histograms[name]
        as_called = tuple(labels.items())
        series = family.by_call.get(as_called)
        if series is None:
            series = self._series(family, as_called)
        if not value >= 0:
            value = 0.0
        i = bisect_left(family.bounds, value)
        series.counts[i] += 1
        series.sum += value
        if exemplar_trace_id:
            series.exemplars[i] = (exemplar_trace_id, value, time.time())

    def _series(self, family: _Histogram, as_called: Labels) -> _Series:
        labels = dict(as_called)
        key = self._labels(labels)
        series = family.series.get(key)
        if series is None:
            series = family.series[key] = _Series(len(family.bounds) + 1)
        if labels.get("topic") != OTHER:
            family.by_call[as_called] = series
        return series

    def remove(self, name: str, **labels: str) -> None:
        """Drop one series (a gauge that no longer has a current value)."""
        key = tuple(sorted(labels.items()))
        if name in self._histograms:
            family = self._histograms[name]
            family.series.pop(key, None)
            family.by_call.clear()
        else:
            self._values[name].pop(key, None)

    def get(self, name: str, **labels: str) -> float:
        """The value of one series; for a histogram, its number of observations."""
        key = tuple(sorted(labels.items()))
        if name in self._histograms:
            series = self._histograms[name].series.get(key)
            return float(sum(series.counts)) if series else 0.0
        return self._values[name].get(key, 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of every series of ``name`` whose labels include ``labels`` (observations, for a histogram)."""
        want = set(labels.items())
        if name in self._histograms:
            return float(sum(sum(s.counts) for k, s in self._histograms[name].series.items() if want <= set(k)))
        return sum(v for k, v in self._values[name].items() if want <= set(k))

    def render(self, openmetrics: bool = False) -> str:
        """Every series in the Prometheus text format, or in OpenMetrics (with exemplars) when asked.

        Safe to call from a worker thread while the event loop updates the series.
        """
        if openmetrics:
            # describe() checks the names, so allow-utf-8 escaping writes the same bytes as the default
            # and skips the encoder's per-character loop over every sample name (half its time);
            # prometheus_client leaves this encoder unannotated
            encoded = _om.generate_latest(self.collector_registry, escaping=_om.ALLOWUTF8)  # type: ignore[no-untyped-call]
            return cast(bytes, encoded).decode()
        included = [_Families(other, openmetrics=False) for other in self._included]
        return _text_exposition(_View([_Families(self, openmetrics=False), *included, *self._extra])).decode()

    def families(self, openmetrics: bool) -> Iterator[Metric]:
        """prometheus_client metric families of this registry's own series, sorted by name.

        Series of a counter whose name less ``_total`` is another metric's name
        (``x_seconds_total`` beside ``x_seconds``) would make two OpenMetrics
        families of one name; in OpenMetrics such a counter goes out as
        ``unknown`` under its full name.
        """
        full_names = {self.prefix + n for n in self._help}
        const = self.const_labels
        for name, (kind, help_text) in sorted(self._help.items()):
            full = self.prefix + name
            if kind == HISTOGRAM:
                yield _histogram_family(full, help_text, self._histograms[name], const)
                continue
            if kind == COUNTER:
                base = full.removesuffix("_total")
                family = (
                    Metric(full, help_text, "unknown")
                    if openmetrics and base in full_names
                    else Metric(base, help_text, COUNTER)
                )
            else:
                family = Metric(full, help_text, GAUGE)
            for labels, value in sorted(list(self._values[name].items())):
                family.add_sample(full, {**const, **dict(labels)}, value)
            yield family


def _histogram_family(full: str, help_text: str, histogram: _Histogram, const: Mapping[str, str]) -> Metric:
    family = Metric(full, help_text, HISTOGRAM)
    bucket, count, total = full + "_bucket", full + "_count", full + "_sum"
    for labels, series in sorted(list(histogram.series.items()), key=lambda item: item[0]):
        common = {**const, **dict(labels)}
        cumulative = 0
        for le, n, kept in zip(histogram.les, list(series.counts), list(series.exemplars), strict=True):
            cumulative += n
            exemplar = None
            if kept is not None and len(_TRACE_ID) + len(kept[0]) <= EXEMPLAR_CHARS_MAX:
                exemplar = Exemplar({_TRACE_ID: kept[0]}, kept[1], kept[2])
            family.add_sample(bucket, {**common, "le": le}, cumulative, None, exemplar)
        family.add_sample(count, common, cumulative)
        family.add_sample(total, common, series.sum)
    return family


class _Families:
    """The registry's own series, as a prometheus_client collector."""

    def __init__(self, registry: Registry, openmetrics: bool):
        self.registry = registry
        self.openmetrics = openmetrics

    def collect(self) -> Iterable[Metric]:
        return list(self.registry.families(self.openmetrics))


class _Labelled:
    """Another collector's families with the registry's constant labels on every sample."""

    def __init__(self, collector: Collector, labels: Mapping[str, str]):
        self.collector = collector
        self.labels = dict(labels)

    def collect(self) -> Iterable[Metric]:
        for family in self.collector.collect():
            family.samples = [s._replace(labels={**self.labels, **s.labels}) for s in family.samples]
            yield family


class _View:
    def __init__(self, collectors: list[Collector]):
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _SocketCollector:
    """Open sockets of this process, counted from /proc/self/fd on each scrape (nothing where there is no /proc)."""

    def __init__(self, name: str, fd_dir: str = "/proc/self/fd"):
        self.name = name
        self.fd_dir = fd_dir

    def collect(self) -> Iterable[Metric]:
        count = open_sockets(self.fd_dir)
        if count is None:
            return []
        return [GaugeMetricFamily(self.name, "Open sockets of the process", value=count)]


def open_sockets(fd_dir: str = "/proc/self/fd") -> int | None:
    """How many of the process's file descriptors are sockets, or None without /proc."""
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return None
    count = 0
    for fd in fds:
        try:
            if os.readlink(os.path.join(fd_dir, fd)).startswith("socket:"):
                count += 1
        except OSError:  # closed since the listing
            continue
    return count
