"""Exponential backoff with jitter, with no I/O."""

from __future__ import annotations


def backoff_s(attempt: int, base_s: float, max_s: float, jitter: float) -> float:
    """Exponential backoff with full-range jitter: ``jitter`` in [0, 1) scales the delay."""
    delay = min(max_s, base_s * float(2 ** min(attempt, 30)))
    return delay * (0.5 + jitter / 2)
