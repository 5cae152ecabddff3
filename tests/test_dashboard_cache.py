"""The answer cache with single flight, on its own: raw computations in, how often they ran out."""

from __future__ import annotations

import asyncio

import pytest

from dashboard.cache import ResponseCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Computation:
    """Counts its runs; each run waits for ``release`` so callers pile up while it is in flight."""

    def __init__(self, fail: bool = False) -> None:
        self.runs = 0
        self.fail = fail
        self.release = asyncio.Event()

    async def __call__(self) -> bytes:
        self.runs += 1
        await self.release.wait()
        if self.fail:
            raise RuntimeError("ClickHouse said no")
        return f"answer {self.runs}".encode()


async def test_fifty_concurrent_identical_requests_run_one_computation() -> None:
    cache: ResponseCache[bytes] = ResponseCache(2.0, clock=Clock())
    compute = Computation()
    waiters = [asyncio.create_task(cache.get(("topology", "1h"), compute)) for _ in range(50)]
    await asyncio.sleep(0)
    compute.release.set()
    assert await asyncio.gather(*waiters) == [b"answer 1"] * 50
    assert (compute.runs, cache.computed, cache.served) == (1, 1, 50)


async def test_an_answer_serves_until_it_expires_then_is_computed_again() -> None:
    clock = Clock()
    cache: ResponseCache[bytes] = ResponseCache(2.0, clock=clock)
    compute = Computation()
    compute.release.set()
    assert await cache.get("k", compute) == b"answer 1"
    clock.now += 1.9
    assert await cache.get("k", compute) == b"answer 1"
    clock.now += 0.2
    assert await cache.get("k", compute) == b"answer 2"
    assert await cache.get("other", compute) == b"answer 3"  # another question is another computation


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    cache: ResponseCache[bytes] = ResponseCache(60.0, clock=Clock())
    compute = Computation(fail=True)
    waiters = [asyncio.create_task(cache.get("k", compute)) for _ in range(3)]
    await asyncio.sleep(0)
    compute.release.set()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert [type(r) for r in results] == [RuntimeError] * 3 and compute.runs == 1
    compute.fail = False
    assert await cache.get("k", compute) == b"answer 2"  # tried again at once


async def test_a_waiter_that_leaves_does_not_cancel_the_work_others_wait_for() -> None:
    cache: ResponseCache[bytes] = ResponseCache(2.0, clock=Clock())
    compute = Computation()
    first = asyncio.create_task(cache.get("k", compute))
    second = asyncio.create_task(cache.get("k", compute))
    await asyncio.sleep(0)
    first.cancel()  # the viewer who started it closed the tab
    with pytest.raises(asyncio.CancelledError):
        await first
    compute.release.set()
    assert await second == b"answer 1" and compute.runs == 1


async def test_zero_ttl_keeps_nothing_but_still_joins_requests_in_flight() -> None:
    cache: ResponseCache[bytes] = ResponseCache(0.0, clock=Clock())
    compute = Computation()
    waiters = [asyncio.create_task(cache.get("k", compute)) for _ in range(5)]
    await asyncio.sleep(0)
    compute.release.set()
    assert set(await asyncio.gather(*waiters)) == {b"answer 1"}
    assert await cache.get("k", compute) == b"answer 2"


async def test_entries_are_bounded() -> None:
    clock = Clock()
    cache: ResponseCache[bytes] = ResponseCache(5.0, max_entries=10, clock=clock)
    compute = Computation()
    compute.release.set()
    for i in range(25):
        await cache.get(("edge", i), compute)
    assert len(cache) <= 11


async def test_close_cancels_what_still_runs() -> None:
    cache: ResponseCache[bytes] = ResponseCache(2.0, clock=Clock())
    compute = Computation()
    waiter = asyncio.create_task(cache.get("k", compute))
    await asyncio.sleep(0)
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(cache) == 0
