"""What one principal may hold open at a relay at once, as data with no I/O.

A principal that opens sessions without end (subscriptions, group members,
publish streams) would otherwise take whatever each one costs (a buffer, a
task, Redis round trips) from every other principal of the relay. So each
principal gets at most ``max_per_principal`` open sessions; the next one is
refused (429, with ``Retry-After``) until one closes. The count is per relay
process, where the cost is.
"""

from __future__ import annotations

from collections import Counter


class SessionQuota:
    """Open sessions per principal, each at most ``max_per_principal``."""

    def __init__(self, max_per_principal: int):
        if max_per_principal < 1:
            raise ValueError(f"max_per_principal={max_per_principal}: a principal needs at least one session")
        self.max_per_principal = max_per_principal
        self.open: Counter[str] = Counter()

    def acquire(self, principal: str) -> bool:
        """Count one more session of ``principal``; False (and nothing counted) when it has its most."""
        if self.open[principal] >= self.max_per_principal:
            return False
        self.open[principal] += 1
        return True

    def release(self, principal: str) -> None:
        """One session of ``principal`` ended."""
        if self.open[principal] <= 1:
            self.open.pop(principal, None)
        else:
            self.open[principal] -= 1

    @property
    def total(self) -> int:
        return sum(self.open.values())
