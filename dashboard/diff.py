"""What changed between two snapshots of the map, edge by edge, with no I/O.

Each edge of either snapshot gets one change, the first that applies::

    new          carries traffic now, carried none before
    gone         carried traffic before, carries none now
    errors_up    error % rose by more than the threshold (relative), or crossed a health threshold upwards
    errors_down  the same, downwards
    lag_up       p99 end-to-end lag rose likewise (relative, or across a lag threshold)
    lag_down
    same         none of these

A relative change needs an absolute one as well (``MIN_ERROR_PP`` percentage points,
``MIN_LAG_MS``), so 0.01 % becoming 0.02 % is not "errors doubled".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meshcore.viewstate import Thresholds

NEW, GONE, ERRORS_UP, ERRORS_DOWN, LAG_UP, LAG_DOWN, SAME = (
    "new",
    "gone",
    "errors_up",
    "errors_down",
    "lag_up",
    "lag_down",
    "same",
)
CHANGES = (NEW, GONE, ERRORS_UP, ERRORS_DOWN, LAG_UP, LAG_DOWN, SAME)
MIN_ERROR_PP = 0.1
MIN_LAG_MS = 1.0
_KEEP = ("events", "events_per_s", "errors", "error_pct", "e2e_p99", "lost", "state")


def _level(value: float, amber: float, red: float) -> int:
    return 2 if value >= red else 1 if value >= amber else 0


def _direction(before: float, now: float, threshold_pct: float, min_abs: float, amber: float, red: float) -> int:
    """+1 up, -1 down, 0 unchanged: a relative change beyond the threshold, or a health level crossed."""
    crossed = _level(now, amber, red) - _level(before, amber, red)
    if crossed:
        return 1 if crossed > 0 else -1
    delta = now - before
    if abs(delta) < min_abs:
        return 0
    if before <= 0 or abs(delta) / before * 100 > threshold_pct:
        return 1 if delta > 0 else -1
    return 0


def _active(edge: Mapping[str, Any] | None) -> bool:
    return edge is not None and (int(edge.get("events", 0)) > 0 or int(edge.get("errors", 0)) > 0)


def classify(
    before: Mapping[str, Any] | None, now: Mapping[str, Any] | None, threshold_pct: float, t: Thresholds
) -> str:
    """The change of one edge between its two snapshots (None: not in that snapshot)."""
    if before is None or not _active(before):
        return NEW if _active(now) else SAME
    if now is None or not _active(now):
        return GONE
    errors = _direction(
        float(before["error_pct"]), float(now["error_pct"]), threshold_pct, MIN_ERROR_PP,
        t.loss_degraded_pct, t.loss_failing_pct,
    )  # fmt: skip
    if errors:
        return ERRORS_UP if errors > 0 else ERRORS_DOWN
    lag_before, lag_now = before.get("e2e_p99"), now.get("e2e_p99")
    if lag_before is not None and lag_now is not None:
        lag = _direction(
            float(lag_before), float(lag_now), threshold_pct, MIN_LAG_MS, t.lag_degraded_ms, t.lag_failing_ms
        )
        if lag:
            return LAG_UP if lag > 0 else LAG_DOWN
    return SAME


def _brief(edge: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if edge is None else {k: edge.get(k) for k in _KEEP}


def changes(
    before_edges: Sequence[Mapping[str, Any]],
    now_edges: Sequence[Mapping[str, Any]],
    threshold_pct: float,
    t: Thresholds,
) -> list[dict[str, Any]]:
    """Every edge of either snapshot with its change, the changed ones first."""
    before = {(e["src"], e["dst"]): e for e in before_edges}
    now = {(e["src"], e["dst"]): e for e in now_edges}
    out = []
    for key in sorted(before.keys() | now.keys()):
        b, n = before.get(key), now.get(key)
        out.append(
            {"src": key[0], "dst": key[1], "change": classify(b, n, threshold_pct, t), "before": _brief(b),
             "now": _brief(n)}
        )  # fmt: skip
    out.sort(key=lambda c: (c["change"] == SAME, CHANGES.index(c["change"])))
    return out
