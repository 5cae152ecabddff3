"""Counters and gauges rendered in the Prometheus text format.

A registry is a plain dict of series; incrementing one is a dict update, cheap
enough for the relay's per-event path. Rendering happens only on scrape.

Label values that come from outside (topics) are bounded: the first
``topic_label_max`` distinct topics get a series of their own, later ones are
summed under ``_other``, so a producer cannot grow /metrics without bound.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

Labels = tuple[tuple[str, str], ...]


OTHER = "_other"


class Registry:
    def __init__(self, prefix: str = "meshscope_", topic_label_max: int = 200):
        self.prefix = prefix
        self.topic_label_max = topic_label_max
        self._topics: set[str] = set()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, defaultdict[Labels, float]] = {}

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

    def describe(self, name: str, kind: str, help_text: str) -> None:
        """Declare a metric once: ``kind`` is ``counter`` or ``gauge``."""
        self._help[name] = (kind, help_text)
        self._values.setdefault(name, defaultdict(float))

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
        for values, amount in counts.items():
            series[self._labels(dict(zip(label_names, values, strict=True)))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][self._labels(labels)] = value

    def remove(self, name: str, **labels: str) -> None:
        """Drop one series (a gauge that no longer has a current value)."""
        self._values[name].pop(tuple(sorted(labels.items())), None)

    def get(self, name: str, **labels: str) -> float:
        return self._values[name].get(tuple(sorted(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum of every series of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for k, v in self._values[name].items() if want <= set(k))

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
