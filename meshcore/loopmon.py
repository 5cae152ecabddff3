"""Event-loop lag: how late a sleeping task wakes up.

A relay is one asyncio loop; a callback that holds it (a slow render, a
synchronous client call, a big JSON document) delays every other event, the way
a saturated thread pool would in a threaded server. ``monitor_loop`` sleeps a
fixed interval again and again and records how much later than asked it woke,
as a histogram (``<prefix>event_loop_lag_seconds``) and as the last value
(``<prefix>event_loop_lag_last_seconds``). Run it under the service's
``Supervisor``::

    supervisor.spawn("loop-monitor", lambda: monitor_loop(metrics))
"""

from __future__ import annotations

import asyncio

from meshcore.metrics import Registry

LAG_SECONDS = "event_loop_lag_seconds"
LAG_LAST_SECONDS = "event_loop_lag_last_seconds"
LAG_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def lag_s(slept_from: float, woke_at: float, interval_s: float) -> float:
    """How much later than ``interval_s`` after ``slept_from`` the task woke (asyncio may wake a tick early: 0)."""
    return max(0.0, woke_at - slept_from - interval_s)


def describe(registry: Registry) -> None:
    registry.describe(LAG_SECONDS, "histogram", "How late the event loop ran a timer, in seconds", LAG_BUCKETS_S)
    registry.describe(LAG_LAST_SECONDS, "gauge", "How late the event loop ran the last timer, in seconds")


async def monitor_loop(registry: Registry, interval_s: float = 0.25) -> None:
    """Measure the running loop's lag every ``interval_s`` into ``registry``, until cancelled."""
    if interval_s <= 0:
        raise ValueError("interval_s must be positive")
    describe(registry)
    loop = asyncio.get_running_loop()
    while True:
        slept_from = loop.time()
        await asyncio.sleep(interval_s)
        lag = lag_s(slept_from, loop.time(), interval_s)
        registry.observe(LAG_SECONDS, lag)
        registry.set(LAG_LAST_SECONDS, lag)
