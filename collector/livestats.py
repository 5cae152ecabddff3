"""Per-second statistics per edge (src region, dst region, topic), with no I/O.

What an edge counts, the same here and in the dashboard's SQL:

- ``count``: events entering the edge: ``forward`` records (src != dst) or
  ``publish`` records (src == dst, the region's own traffic);
- ``delivered``: ``deliver`` records; lag percentiles come from these;
- ``errors``: records whose status is not ``ok`` (drops), by status.

The message published on ``meshscope:live`` once a second::

    {"v": 1, "ts": 1764140000, "collector": "host-123", "edges": [
       {"src": "aws:us-east-1", "dst": "gcp:europe-west1", "topic": "orders.created",
        "count": 120, "delivered": 118, "errors": 2, "errors_by_status": {"backpressure": 2},
        "bytes": 48000, "e2e_p50": 41.2, "e2e_p99": 88.0, "hop_p50": 40.1, "hop_p99": 80.3}],
     "samples": [{"event_id": "...", "trace_id": "...", "span_id": "...", "topic": "...",
                  "src": "...", "dst": "...", "kind": "deliver", "status": "ok",
                  "hop_ms": 40.2, "e2e_ms": 41.0, "ts": 1764140000123456}]}

Several collectors in one group each publish their share; readers add counts
and combine percentiles weighted by count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from meshcore.flowrecord import DELIVER, FIELDS, FORWARD, OK, PUBLISH

_I = {name: i for i, name in enumerate(FIELDS)}
TS, EVENT_ID, TRACE_ID, SPAN_ID = (_I[n] for n in ("ts", "event_id", "trace_id", "span_id"))
TOPIC, KIND = _I["topic"], _I["kind"]
SRC, DST, HOP, E2E, STATUS, BYTES = (_I[n] for n in ("src_region", "dst_region", "hop_ms", "e2e_ms", "status", "bytes"))

MAX_VALUES = 2000  # latency values kept per edge per second (uniform reservoir)
SAMPLES_PER_EDGE = 3


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(q * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


@dataclass
class _Edge:
    count: int = 0
    delivered: int = 0
    errors: int = 0
    bytes: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    e2e: list[float] = field(default_factory=list)
    hop: list[float] = field(default_factory=list)
    samples: list[list[Any]] = field(default_factory=list)


class LiveWindow:
    def __init__(self, seed: int | None = None):
        self.edges: dict[tuple[str, str, str], _Edge] = {}
        self._rng = random.Random(seed)

    def add(self, columns: list[list[Any]]) -> None:
        """Count a batch of records given column by column (FIELDS order)."""
        cols = columns
        for i, (src, dst, topic, kind, status, nbytes) in enumerate(
            zip(cols[SRC], cols[DST], cols[TOPIC], cols[KIND], cols[STATUS], cols[BYTES], strict=True)
        ):
            key = (src, dst, topic)
            edge = self.edges.get(key)
            if edge is None:
                edge = self.edges[key] = _Edge()
            if kind in (FORWARD, PUBLISH):
                edge.count += 1
            edge.bytes += nbytes
            if status != OK:
                edge.errors += 1
                edge.by_status[status] = edge.by_status.get(status, 0) + 1
            elif kind == DELIVER:
                edge.delivered += 1
                self._keep(edge.e2e, cols[E2E][i], edge.delivered)
                self._keep(edge.hop, cols[HOP][i], edge.delivered)
            if (kind == DELIVER or status != OK) and len(edge.samples) < SAMPLES_PER_EDGE:
                edge.samples.append([c[i] for c in cols])

    def _keep(self, values: list[float], value: float, seen: int) -> None:
        if len(values) < MAX_VALUES:
            values.append(value)
        else:
            j = self._rng.randrange(seen)
            if j < MAX_VALUES:
                values[j] = value

    def flush(self, ts: int, collector: str) -> dict[str, Any]:
        """The message for this second; the window starts empty again."""
        edges = []
        samples = []
        for (src, dst, topic), e in sorted(self.edges.items()):
            e2e, hop = sorted(e.e2e), sorted(e.hop)
            edges.append(
                {
                    "src": src,
                    "dst": dst,
                    "topic": topic,
                    "count": e.count,
                    "delivered": e.delivered,
                    "errors": e.errors,
                    "errors_by_status": e.by_status,
                    "bytes": e.bytes,
                    "e2e_p50": percentile(e2e, 0.5),
                    "e2e_p99": percentile(e2e, 0.99),
                    "hop_p50": percentile(hop, 0.5),
                    "hop_p99": percentile(hop, 0.99),
                }
            )
            for row in e.samples:
                samples.append(
                    {
                        "event_id": row[EVENT_ID],
                        "trace_id": row[TRACE_ID],
                        "span_id": row[SPAN_ID],
                        "topic": row[TOPIC],
                        "src": row[SRC],
                        "dst": row[DST],
                        "kind": row[KIND],
                        "status": row[STATUS],
                        "hop_ms": row[HOP],
                        "e2e_ms": row[E2E],
                        "ts": row[TS],
                    }
                )
        self.edges = {}
        return {"v": 1, "ts": ts, "collector": collector, "edges": edges, "samples": samples}
