"""Per-second statistics per edge (src region, dst region, topic), with no I/O.

What an edge counts, the same here and in the dashboard's SQL:

- ``count``: events entering the edge: ``forward`` records (src != dst) or
  ``publish`` records (src == dst, the region's own traffic);
- ``delivered``: ``deliver`` records; lag percentiles come from these;
- ``errors``: records whose status is not ``ok`` (drops), by status.

Only records of the last ``LIVE_S`` seconds count: a collector that is behind
reads old records, and old records are history (ClickHouse shows them), not
live figures. The message says how many records it left out (``late``), the
newest record it counted (``as_of``, Unix seconds, null when none) and the
collector's position in each stream it reads (``lag``: ``meshcore.freshness.LagReport``),
so a reader knows how old the figures are and why.

The message published on ``meshscope:live`` once a second, whether or not anything was counted::

    {"v": 2, "ts": 1764140000, "collector": "host-123", "as_of": 1764139999.8, "late": 0,
     "lag": [{"stream": "meshscope:flows", "regions": ["*"], "ts": 1764140000.1, "lag_s": 0.6, ...}],
     "edges": [
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

LIVE_S = 5.0
"""Records older than this when read are history, not live figures."""
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
        self.newest_us = 0
        self.late = 0

    def add(self, columns: list[list[Any]], since_us: int = 0) -> None:
        """Count a batch of records given column by column (FIELDS order); those before ``since_us`` are late."""
        cols = columns
        for i, (ts, src, dst, topic, kind, status, nbytes) in enumerate(
            zip(cols[TS], cols[SRC], cols[DST], cols[TOPIC], cols[KIND], cols[STATUS], cols[BYTES], strict=True)
        ):
            if ts < since_us:
                self.late += 1
                continue
            if ts > self.newest_us:
                self.newest_us = ts
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

    def flush(self, ts: int, collector: str, lag: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The message for this second (``lag``: the collector's position reports); the window starts empty again."""
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
        as_of = self.newest_us / 1e6 if self.newest_us else None
        late, self.edges, self.newest_us, self.late = self.late, {}, 0, 0
        return {
            "v": 2,
            "ts": ts,
            "collector": collector,
            "as_of": as_of,
            "late": late,
            "lag": lag or [],
            "edges": edges,
            "samples": samples,
        }
