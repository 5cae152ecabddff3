"""Edge health from error rate and end-to-end lag, with no I/O.

In the spirit of Kiali's health: an edge is amber ("degraded") once either
signal crosses its first threshold and red ("failure") past the second. The
defaults below are configurable (see ``DashboardConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass

GREEN, AMBER, RED, IDLE = "green", "amber", "red", "idle"


@dataclass(frozen=True)
class Thresholds:
    error_amber_pct: float = 1.0
    error_red_pct: float = 5.0
    lag_amber_ms: float = 500.0
    lag_red_ms: float = 2000.0


def health(events: int, errors: int, e2e_p99_ms: float | None, t: Thresholds) -> str:
    if events + errors == 0:
        return IDLE
    pct = error_pct(events, errors)
    lag = e2e_p99_ms or 0.0
    if pct >= t.error_red_pct or lag >= t.lag_red_ms:
        return RED
    if pct >= t.error_amber_pct or lag >= t.lag_amber_ms:
        return AMBER
    return GREEN


def error_pct(events: int, errors: int) -> float:
    """Errors as a share of what entered the edge (errors with no events count as 100 %)."""
    if events <= 0:
        return 100.0 if errors else 0.0
    return min(100.0, 100.0 * errors / events)
