"""Counters and gauges rendered in the Prometheus text format.

A registry is a plain dict of series; incrementing one is a dict update, cheap
enough for the relay's per-event path. Rendering happens only on scrape.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

Labels = tuple[tuple[str, str], ...]


class Registry:
    def __init__(self, prefix: str = "meshscope_"):
        self.prefix = prefix
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, defaultdict[Labels, float]] = {}

    def describe(self, name: str, kind: str, help_text: str) -> None:
        """Declare a metric once: ``kind`` is ``counter`` or ``gauge``."""
        self._help[name] = (kind, help_text)
        self._values.setdefault(name, defaultdict(float))

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._values[name][tuple(sorted(labels.items()))] += amount

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
            series[tuple(sorted(zip(label_names, values, strict=True)))] += amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self._values[name][tuple(sorted(labels.items()))] = value

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
