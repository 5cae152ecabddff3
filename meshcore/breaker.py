"""A circuit breaker in front of a dependency, with no I/O.

closed     calls go through; ``failure_threshold`` failures in a row open it
open       calls are refused at once (callers answer 503 with Retry-After) until
           ``cooldown_s`` has passed
half_open  calls go through again; one success closes it, one failure opens it
           for a cooldown that doubles up to ``max_cooldown_s``

The clock is passed in, so the state machine is tested without sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class CircuitBreaker:
    name: str
    failure_threshold: int = 3
    cooldown_s: float = 0.5
    max_cooldown_s: float = 10.0
    state: str = CLOSED
    failures: int = 0
    opened_at: float = 0.0
    current_cooldown_s: float = 0.0
    last_error: str = ""

    def allow(self, now: float) -> bool:
        """May a call go through now?"""
        if self.state == OPEN and now - self.opened_at >= self.current_cooldown_s:
            self.state = HALF_OPEN
        return self.state != OPEN

    def retry_after_s(self, now: float) -> float:
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.current_cooldown_s - (now - self.opened_at))

    def success(self) -> None:
        self.state = CLOSED
        self.failures = 0
        self.current_cooldown_s = 0.0
        self.last_error = ""

    def failure(self, now: float, error: str = "") -> None:
        self.failures += 1
        self.last_error = error[:300]
        if self.state == HALF_OPEN:
            self._open(now, min(self.max_cooldown_s, max(self.cooldown_s, self.current_cooldown_s * 2)))
        elif self.state == CLOSED and self.failures >= self.failure_threshold:
            self._open(now, self.cooldown_s)

    def _open(self, now: float, cooldown_s: float) -> None:
        self.state = OPEN
        self.opened_at = now
        self.current_cooldown_s = cooldown_s

    @property
    def healthy(self) -> bool:
        return self.state == CLOSED
