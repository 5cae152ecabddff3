"""Consumer lag status of a durable group, Burrow style, with no I/O.

Relays sample every durable group every few seconds (``group_lag`` rows): how
many entries were acknowledged so far (``acked``, a counter that only grows
while members acknowledge), how many are not acknowledged yet (``backlog``:
not yet delivered plus delivered and pending), the age of the oldest pending
entry and the members connected. Over a window of the latest samples:

    OK     nothing waits, or the backlog is not growing
    WARN   members acknowledge, but the backlog grew in every step of the window: falling behind
    STALL  members are connected, the backlog is not empty, and nothing was acknowledged in the window
    STOP   no member is connected and entries wait

As in Burrow, a trend needs a window: with fewer than ``min_samples`` samples
a group is OK unless it is stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

OK, WARN, STALL, STOP = "OK", "WARN", "STALL", "STOP"
STATUSES = (OK, WARN, STALL, STOP)


@dataclass(frozen=True, slots=True)
class LagSample:
    ts: float  # seconds
    acked: int
    backlog: int
    oldest_age_s: float
    consumers: int


def status(samples: Sequence[LagSample], min_samples: int = 3) -> str:
    """The status of one group from its samples, oldest first."""
    if not samples:
        return OK
    last = samples[-1]
    if last.backlog == 0:
        return OK
    if last.consumers == 0:
        return STOP
    if len(samples) < min_samples:
        return OK
    if samples[-1].acked <= samples[0].acked:
        return STALL
    growing = all(b.backlog > a.backlog for a, b in itertools.pairwise(samples))
    return WARN if growing else OK


def rates(samples: Sequence[LagSample]) -> tuple[float, float]:
    """(arrival, acknowledgement) rates per second over the samples: arrivals are acks plus backlog growth."""
    if len(samples) < 2:
        return 0.0, 0.0
    first, last = samples[0], samples[-1]
    span = max(1e-6, last.ts - first.ts)
    acked = max(0, last.acked - first.acked)
    arrived = max(0, acked + last.backlog - first.backlog)
    return arrived / span, acked / span
