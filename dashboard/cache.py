"""One computation per question per refresh interval, whoever asks: a cache with single flight.

Fifty viewers polling the same map ask the same question (their parameters normalized
by :mod:`dashboard.params`, a live window's end rounded to the interval). The first
request starts the computation; requests that arrive while it runs await the same
task instead of starting their own; its answer then serves everyone for ``ttl_s``.
A failed computation is not kept, so the next request tries again.

The computation runs as a task the cache owns: a viewer that disconnects stops
waiting, but not the work the others wait for. A failure reaches every waiter (the
API's error handlers log it); the cache retrieves it as well, so a computation whose
every waiter left fails quietly instead of as an unretrieved task.

The key is everything the answer depends on. No answer of the map API depends on who
asks (every viewer sees the whole map), so the principal is not in the key; an
endpoint whose answer did would have to put it there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ResponseCache(Generic[V]):
    """Answers by key, each computed once per ``ttl_s`` (0: single flight only, nothing kept)."""

    def __init__(self, ttl_s: float, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.computed = 0
        """Computations started (each a miss)."""
        self.served = 0
        """Answers given: computed, joined in flight, or from the cache."""
        self._entries: dict[Hashable, tuple[asyncio.Task[V], float]] = {}

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        entry = self._entries.get(key)
        if entry is not None:
            task, expires = entry
            if not task.done() or self.clock() < expires:
                self.served += 1
                return await asyncio.shield(task)
            del self._entries[key]
        task = asyncio.get_running_loop().create_task(self._run(compute), name=f"cache:{key!r}"[:120])
        self.computed += 1
        self._entries[key] = (task, float("inf"))
        task.add_done_callback(lambda t: self._settle(key, t))
        self._trim()
        self.served += 1
        return await asyncio.shield(task)

    async def _run(self, compute: Callable[[], Awaitable[V]]) -> V:
        return await compute()

    def _settle(self, key: Hashable, task: asyncio.Task[V]) -> None:
        failed = task.cancelled() or task.exception() is not None  # retrieved here, whoever else waits
        entry = self._entries.get(key)
        if entry is None or entry[0] is not task:
            return
        if failed:
            del self._entries[key]  # never keep a failure: the next request tries again
            return
        self._entries[key] = (task, self.clock() + self.ttl_s)

    def _trim(self) -> None:
        if len(self._entries) <= self.max_entries:
            return
        now = self.clock()
        for key, (task, expires) in list(self._entries.items()):
            if task.done() and now >= expires:
                del self._entries[key]
        for key, (task, _) in list(self._entries.items()):
            if len(self._entries) <= self.max_entries:
                break
            if task.done():
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        """Cancel computations still running (at shutdown) and forget everything."""
        tasks = [task for task, _ in self._entries.values() if not task.done()]
        self._entries.clear()
        while tasks:
            for task in tasks:
                task.cancel()  # again, if a client library swallowed the first cancellation
            await asyncio.wait(tasks, timeout=1.0)
            tasks = [task for task in tasks if not task.done()]
