"""Group commit across callers: work that is ready within a few loop turns joins one commit."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from meshcore.breaker import CircuitBreaker
from router.committer import Committer, Ops


async def _committer(redis_url: str) -> tuple[aioredis.Redis, Committer, asyncio.Task[None], str]:
    client = aioredis.Redis.from_url(redis_url)
    writer = f"gather-{uuid.uuid4().hex[:8]}"
    committer = Committer(client, writer, CircuitBreaker("test"))
    return client, committer, asyncio.create_task(committer.run()), f"meshscope:test:{writer}"


async def test_work_that_reaches_the_committer_within_a_few_turns_lands_in_one_commit(redis_url: str) -> None:
    client, committer, runner, key = await _committer(redis_url)
    try:

        async def caller(i: int) -> None:
            for _ in range(i % 3):  # a frame's publish takes a turn or two to reach its commit
                await asyncio.sleep(0)
            ops = Ops()
            ops.hset(key, str(i), b"v")
            await committer.submit(ops)

        await asyncio.gather(*(caller(i) for i in range(30)))
        # without waiting for them the first commit took the ten callers of the first turn and the
        # rest waited for its round trip
        assert committer.commits == 1
        assert await client.hlen(key) == 30  # every one landed, and each was answered only then
    finally:
        runner.cancel()
        await client.delete(key)
        await client.aclose()


async def test_a_lone_submit_is_not_held_back_for_company(redis_url: str) -> None:
    client, committer, runner, key = await _committer(redis_url)
    try:
        for i in range(3):
            ops = Ops()
            ops.hset(key, str(i), b"v")
            await asyncio.wait_for(committer.submit(ops), 2)
        assert committer.commits == 3
        assert await client.hlen(key) == 3
    finally:
        runner.cancel()
        await client.delete(key)
        await client.aclose()
